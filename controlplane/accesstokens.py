"""Access tokens: EdDSA-signed JWTs for one end user, and the one function that turns a
bearer string into a Principal.

Verification follows RFC 8725: the algorithm is pinned, the header is an allowlist (no
`jku`/`jwk`/`x5u`/`x5c` is ever honoured, nothing is fetched), `kid` only selects among our
own keys, every claim is required, `typ` is `at+jwt`, the audience is the exact canonical
MCP URL, and the database is asked whether the token was revoked or its user or platform
deactivated.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings

from controlplane.config import b64encode
from controlplane.models import ALL_SCOPES, IssuedToken, format_scopes, parse_scopes
from controlplane.redis_client import get_redis

ALGORITHM = "EdDSA"
TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "platform", "scope", "jti", "iat", "nbf", "exp")
ALLOWED_HEADER_FIELDS = frozenset({"alg", "kid", "typ"})
MAX_TOKEN_LENGTH = 4096
COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
JTI_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
REVOKED_KEY = "tp:revoked:{jti}"


class TokenRejected(Exception):
    """The bearer token is not acceptable. `reason` is for logs and audit, never for callers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    end_user_pk: int
    user_id: str
    platform_pk: int
    client_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: datetime
    # The platform's overrides of the tool-call rate limits (None: the defaults).
    rate_limit_per_minute: int | None = None
    trade_rate_limit_per_minute: int | None = None


@cache
def _private_keys() -> dict[str, Ed25519PrivateKey]:
    return {
        kid: Ed25519PrivateKey.from_private_bytes(seed)
        for kid, seed in settings.TRADEPLANE_JWT_KEYS
    }


@cache
def _public_keys() -> dict[str, Ed25519PublicKey]:
    return {kid: key.public_key() for kid, key in _private_keys().items()}


def reset_key_cache() -> None:
    _private_keys.cache_clear()
    _public_keys.cache_clear()


def signing_key_id() -> str:
    return settings.TRADEPLANE_JWT_KEYS[0][0]


def jwks() -> dict[str, list[dict[str, str]]]:
    """The public verification keys (RFC 7517/8037), the signing key first."""
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
                "kid": kid,
                "use": "sig",
                "alg": ALGORITHM,
            }
            for kid, key in _public_keys().items()
        ]
    }


def encode_access_token(
    *,
    jti: str,
    user_id: str,
    client_id: str,
    scopes: frozenset[str],
    issued_at: int,
    expires_at: int,
) -> tuple[str, str]:
    """Sign a token; returns it with the id of the key that signed it."""
    kid = signing_key_id()
    claims = {
        "iss": settings.TRADEPLANE_PUBLIC_URL,
        "aud": settings.TRADEPLANE_MCP_URL,
        "sub": user_id,
        "platform": client_id,
        "scope": format_scopes(scopes),
        "jti": jti,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
    }
    token = jwt.encode(
        claims, _private_keys()[kid], algorithm=ALGORITHM, headers={"kid": kid, "typ": TOKEN_TYPE}
    )
    return token, kid


def decode_access_token(token: str, *, verify_exp: bool = True) -> dict[str, Any]:
    """Check signature, header and claims; no database. Raises TokenRejected."""
    if len(token) > MAX_TOKEN_LENGTH or not COMPACT_JWS.fullmatch(token):
        raise TokenRejected("not a compact JWS")
    header_segment, payload_segment, _ = token.split(".")
    header = _strict_json(header_segment, "header")
    if set(header) - ALLOWED_HEADER_FIELDS:
        raise TokenRejected(
            f"unexpected header fields {sorted(set(header) - ALLOWED_HEADER_FIELDS)}"
        )
    if header.get("alg") != ALGORITHM:
        raise TokenRejected("algorithm not allowed")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenRejected("wrong token type")
    kid = header.get("kid")
    public_key = _public_keys().get(kid) if isinstance(kid, str) else None
    if public_key is None:
        raise TokenRejected("unknown key id")
    # Parsed strictly first: duplicate claim names would otherwise be a parser differential.
    _strict_json(payload_segment, "payload")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=public_key,
            algorithms=[ALGORITHM],
            audience=settings.TRADEPLANE_MCP_URL,
            issuer=settings.TRADEPLANE_PUBLIC_URL,
            leeway=settings.TRADEPLANE_TOKEN_LEEWAY_SECONDS,
            options={
                "require": list(REQUIRED_CLAIMS),
                "strict_aud": True,
                "verify_exp": verify_exp,
            },
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("expired") from None
    except jwt.PyJWTError as exc:
        raise TokenRejected(f"invalid: {exc}") from None
    _check_claim_types(claims)
    return claims


def verify_access_token(token: str) -> Principal:
    """Bearer string -> Principal, or TokenRejected. The MCP layer's only way in."""
    claims = decode_access_token(token)
    jti = claims["jti"]
    if _revoked_in_redis(jti):
        raise TokenRejected("revoked")
    issued = IssuedToken.objects.select_related("end_user", "platform").filter(jti=jti).first()
    if issued is None:
        raise TokenRejected("unknown jti")
    user, platform = issued.end_user, issued.platform
    if issued.revoked_at is not None:
        raise TokenRejected("revoked")
    if user.user_id != claims["sub"] or platform.client_id != claims["platform"]:
        raise TokenRejected("subject does not match the issued token")
    # The signed claims must be the ones recorded at minting: a token re-signed for a known
    # jti (a leaked key) cannot widen its scopes or outlive the row.
    if claims["scope"] != issued.scopes or claims["exp"] != int(issued.expires_at.timestamp()):
        raise TokenRejected("claims differ from the issued token")
    if user.platform_id != platform.pk:
        raise TokenRejected("user does not belong to the platform")
    if not platform.is_active or not user.is_active or user.deleted_at is not None:
        raise TokenRejected("user or platform inactive")
    scopes = parse_scopes(claims["scope"])
    if not scopes <= (user.scopes & platform.scopes):
        raise TokenRejected("scopes exceed what the user may now hold")
    return Principal(
        end_user_pk=user.pk,
        user_id=user.user_id,
        platform_pk=platform.pk,
        client_id=platform.client_id,
        scopes=scopes,
        jti=jti,
        expires_at=datetime.fromtimestamp(claims["exp"], tz=UTC),
        rate_limit_per_minute=platform.rate_limit_per_minute,
        trade_rate_limit_per_minute=platform.trade_rate_limit_per_minute,
    )


def mark_revoked_in_redis(jti: str, expires_at: datetime) -> None:
    """The fast path of revocation; the IssuedToken row stays the source of truth."""
    client = get_redis()
    if client is None:
        return
    remaining_ms = int((expires_at - datetime.now(tz=UTC)).total_seconds() * 1000)
    if remaining_ms > 0:
        client.set(REVOKED_KEY.format(jti=jti), "1", px=remaining_ms + 60_000)


def _revoked_in_redis(jti: str) -> bool:
    client = get_redis()
    if client is None:
        return False
    try:
        return bool(client.exists(REVOKED_KEY.format(jti=jti)))
    except redis.RedisError:
        return False  # the database check below still decides


def _strict_json(segment: str, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(keys) != len(set(keys)):
            raise TokenRejected(f"duplicate names in {what}")
        return dict(pairs)

    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected(f"{what} is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"{what} is not a JSON object")
    return value


def _check_claim_types(claims: dict[str, Any]) -> None:
    for name in ("sub", "platform", "scope", "jti"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise TokenRejected(f"claim {name} must be a non-empty string")
    if not JTI_PATTERN.match(claims["jti"]):
        raise TokenRejected("malformed jti")
    scopes = parse_scopes(claims["scope"])
    if not scopes or not scopes <= ALL_SCOPES:
        raise TokenRejected("unknown scope")
    now = datetime.now(tz=UTC).timestamp()
    for name in ("iat", "nbf", "exp"):
        if not isinstance(claims[name], int) or isinstance(claims[name], bool):
            raise TokenRejected(f"claim {name} must be an integer")
    if claims["iat"] > now + settings.TRADEPLANE_TOKEN_LEEWAY_SECONDS:
        raise TokenRejected("issued in the future")
    if claims["exp"] - claims["iat"] > settings.TRADEPLANE_TOKEN_TTL_SECONDS + 1:
        raise TokenRejected("lifetime longer than this server issues")
