"""Server-generated secrets: high-entropy, prefixed so a leaked one is recognisable, stored
only as an HMAC-SHA256 digest under a server-side key, and compared in constant time.

A keyed fast hash is right here: the secrets carry 256 bits of entropy, so a slow password
hasher would only cap token minting at a few per second without adding any protection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings

CLIENT_ID_PREFIX = "tp_ci_"
CLIENT_SECRET_PREFIX = "tp_cs_"
USER_SECRET_PREFIX = "tp_us_"


def generate_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def generate_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(12)


def digest_secret(secret: str) -> str:
    return hmac.new(settings.TRADEPLANE_HASH_KEY, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(secret: str, digest: str) -> bool:
    return hmac.compare_digest(digest_secret(secret), digest)


# Compared against when the account does not exist, so a miss costs the same as a mismatch.
UNKNOWN_ACCOUNT_DIGEST = "0" * 64
