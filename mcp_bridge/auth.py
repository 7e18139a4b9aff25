"""Who is calling: the SDK asks our verifier on every request, and tools read the result.

The verifier is the controlplane's one verification function; nothing here re-implements
token checks. ORM work runs in worker threads that hand their database connection back
when done, because MCP requests never pass Django's request signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier

from controlplane.accesstokens import Principal, TokenRejected, verify_access_token

logger = logging.getLogger(__name__)


async def run_in_db_thread[**P, T](fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    def run() -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()  # back to the pool; this thread may never run Django again

    return await sync_to_async(run, thread_sensitive=False)()


class PrincipalVerifier(TokenVerifier):
    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            principal = await run_in_db_thread(verify_access_token, token)
        except TokenRejected as exc:
            logger.info("bearer token refused: %s", exc.reason)
            return None
        return AccessToken(
            token=token,
            client_id=principal.client_id,
            scopes=sorted(principal.scopes),
            expires_at=int(principal.expires_at.timestamp()),
            resource=settings.TRADEPLANE_MCP_URL,
            subject=principal.user_id,
            claims={"principal": asdict(principal)},
        )


def current_principal() -> Principal:
    """The verified caller of the current MCP request."""
    access = get_access_token()
    if access is None or not access.claims or "principal" not in access.claims:
        raise RuntimeError("no authenticated principal on this MCP request")
    fields = dict(access.claims["principal"])
    fields["scopes"] = frozenset(fields["scopes"])
    if isinstance(fields["expires_at"], str):
        fields["expires_at"] = datetime.fromisoformat(fields["expires_at"])
    return Principal(**fields)
