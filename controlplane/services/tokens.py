"""Minting and revoking end-user access tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.events import Action, Actor, record
from controlplane.accesstokens import (
    TokenRejected,
    decode_access_token,
    encode_access_token,
    mark_revoked_in_redis,
)
from controlplane.authn import authenticate_platform_user
from controlplane.errors import ForbiddenScope, NotFound
from controlplane.models import EndUser, IssuedToken, Platform, format_scopes


@dataclass(frozen=True)
class MintedToken:
    access_token: str
    jti: str
    scopes: frozenset[str]
    expires_in: int
    expires_at: datetime


def mint_user_token(
    *, client_id: str, client_secret: str, user_id: str, user_secret: str, scopes: frozenset[str]
) -> MintedToken:
    """Authenticate the platform and its user, then mint a token for exactly `scopes`.

    Scopes granted are the request ∩ platform ∩ user; asking for one outside that is a
    ForbiddenScope naming it, never a silently narrower token.
    """
    user = authenticate_platform_user(
        client_id, client_secret, user_id, user_secret, action=Action.TOKEN_MINT_REFUSED
    )
    platform = user.platform
    allowed = platform.scopes & user.scopes
    refused = sorted(scopes - allowed)
    if refused:
        record(
            Action.TOKEN_MINT_REFUSED,
            actor=Actor.platform(platform.client_id),
            outcome="forbidden_scope",
            platform=platform.client_id,
            end_user=user.user_id,
            detail={"requested": sorted(scopes), "refused": refused},
        )
        raise ForbiddenScope(
            f"scope {', '.join(repr(s) for s in refused)} is not allowed for this user"
        )
    return issue_token(platform, user, scopes, actor=Actor.platform(platform.client_id))


def issue_token(
    platform: Platform, user: EndUser, scopes: frozenset[str], *, actor: Actor
) -> MintedToken:
    """Sign and record a token for an already authenticated user (also used by operators'
    `mint_token` command and the demo quickstart)."""
    jti = secrets.token_urlsafe(16)
    now = int(timezone.now().timestamp())
    ttl = settings.TRADEPLANE_TOKEN_TTL_SECONDS
    token, kid = encode_access_token(
        jti=jti,
        user_id=user.user_id,
        client_id=platform.client_id,
        scopes=scopes,
        issued_at=now,
        expires_at=now + ttl,
    )
    issued_at = datetime.fromtimestamp(now, tz=UTC)
    expires_at = datetime.fromtimestamp(now + ttl, tz=UTC)
    with transaction.atomic():
        IssuedToken.objects.create(
            jti=jti,
            platform=platform,
            end_user=user,
            scopes=format_scopes(scopes),
            key_id=kid,
            issued_at=issued_at,
            expires_at=expires_at,
        )
        record(
            Action.TOKEN_MINTED,
            actor=actor,
            platform=platform.client_id,
            end_user=user.user_id,
            jti=jti,
            detail={"scopes": sorted(scopes), "kid": kid, "expires_at": expires_at.isoformat()},
        )
    return MintedToken(token, jti, scopes, ttl, expires_at)


def revoke_token(
    platform: Platform, *, jti: str | None = None, token: str | None = None, actor: Actor
) -> IssuedToken:
    """Revoke one of the platform's tokens, by jti or by the token itself. Idempotent.

    Another platform's token is indistinguishable from a token that does not exist.
    """
    if token is not None:
        try:
            jti = decode_access_token(token, verify_exp=False)["jti"]
        except TokenRejected:
            raise NotFound("no such token") from None
    issued = (
        IssuedToken.objects.select_related("end_user")
        .filter(jti=jti or "", platform=platform)
        .first()
    )
    if issued is None:
        raise NotFound("no such token")
    _revoke(issued, reason="revoked by platform", actor=actor)
    issued.refresh_from_db()
    return issued


def revoke_token_by_jti(jti: str, *, reason: str, actor: Actor) -> IssuedToken:
    issued = IssuedToken.objects.select_related("end_user", "platform").filter(jti=jti).first()
    if issued is None:
        raise NotFound("no such token")
    _revoke(issued, reason=reason, actor=actor)
    issued.refresh_from_db()
    return issued


def revoke_user_tokens(user: EndUser, *, reason: str, actor: Actor) -> int:
    count = 0
    for issued in IssuedToken.objects.unexpired().filter(end_user=user, revoked_at__isnull=True):
        count += _revoke(issued, reason=reason, actor=actor)
    return count


def _revoke(issued: IssuedToken, *, reason: str, actor: Actor) -> int:
    with transaction.atomic():
        changed = IssuedToken.objects.filter(pk=issued.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_reason=reason[:200]
        )
        if changed:
            record(
                Action.TOKEN_REVOKED,
                actor=actor,
                platform=issued.platform.client_id,
                end_user=issued.end_user.user_id,
                jti=issued.jti,
                detail={"reason": reason},
            )
            expires_at = issued.expires_at
            transaction.on_commit(lambda: mark_revoked_in_redis(issued.jti, expires_at))
    return changed
