"""The bare MCP server `make bench-mcp` compares Tradeplane with: the MCP SDK's own
Streamable HTTP app and one no-op async tool, behind the same bearer-token check cost.

Its verifier decodes our real EdDSA access tokens with PyJWT (algorithm pinned, `aud` and
`iss` required and checked, the key chosen by `kid` among our own), but asks no database
and no Redis. Configured by the environment variables Tradeplane reads:

- TRADEPLANE_JWT_KEYS: `kid:base64url(32-byte Ed25519 seed),...` (controlplane.config)
- TRADEPLANE_PUBLIC_URL: the issuer; the audience is this URL + "/mcp"
- TRADEPLANE_MCP_STATELESS, TRADEPLANE_MCP_JSON_RESPONSE: the transport mode

Served with `uvicorn bench.bare_server:app`; the app's Starlette lifespan runs the SDK's
session manager.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 60
REQUIRED_CLAIMS = ["iss", "aud", "sub", "scope", "jti", "iat", "nbf", "exp"]
TOOL_NAME = "noop"


def public_keys(keyring: str) -> dict[str, Ed25519PublicKey]:
    """Verification keys from a `kid:base64url-seed,...` keyring."""
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in filter(None, (part.strip() for part in keyring.split(","))):
        kid, _, encoded = entry.partition(":")
        seed = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        keys[kid] = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    if not keys:
        raise RuntimeError("TRADEPLANE_JWT_KEYS holds no key")
    return keys


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


class JwtVerifier(TokenVerifier):
    """Signature and claims only: what any JWT resource server pays, without a database."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], issuer: str, audience: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS, "strict_aud": True},
            )
        except jwt.PyJWTError:
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("platform") or claims["sub"]),
            scopes=str(claims["scope"]).split(),
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=str(claims["sub"]),
        )


def build_server() -> MCPServer:
    issuer = os.environ.get("TRADEPLANE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
    audience = f"{issuer}/mcp"
    mcp = MCPServer(
        "bare",
        version="1.0",
        token_verifier=JwtVerifier(
            public_keys(os.environ.get("TRADEPLANE_JWT_KEYS", "")), issuer, audience
        ),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(issuer),
            resource_server_url=AnyHttpUrl(audience),
            required_scopes=None,
            validate_token_resource=False,  # the verifier checks `aud` itself
        ),
        log_level="WARNING",
    )

    @mcp.tool(name=TOOL_NAME)
    async def noop(symbols: list[str]) -> dict[str, Any]:
        """Does nothing; answers how many symbols it was given."""
        return {"ok": True, "symbols": len(symbols)}

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    mcp.custom_route("/healthz", methods=["GET"])(healthz)
    return mcp


server = build_server()
app = server.streamable_http_app(
    streamable_http_path="/mcp",
    stateless_http=env_flag("TRADEPLANE_MCP_STATELESS"),
    json_response=env_flag("TRADEPLANE_MCP_JSON_RESPONSE"),
)
