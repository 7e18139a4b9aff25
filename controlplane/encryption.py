"""Authenticated encryption of values that must be read back (broker OAuth credentials).

AES-256-GCM with the row's identity as associated data: a ciphertext copied into another
row, or another field, fails authentication instead of decrypting. The key id travels with
the ciphertext, so keys rotate by adding a new first key and re-encrypting.
"""

from __future__ import annotations

import secrets
from functools import cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from controlplane.config import b64decode, b64encode

VERSION = "v1"


class DecryptionError(Exception):
    """The ciphertext is malformed, was made for another row, or its key is gone."""


@cache
def _ciphers() -> dict[str, AESGCM]:
    return {kid: AESGCM(key) for kid, key in settings.TRADEPLANE_ENCRYPTION_KEYS}


def active_key_id() -> str:
    return settings.TRADEPLANE_ENCRYPTION_KEYS[0][0]


def encrypt(plaintext: bytes, *, context: str) -> str:
    kid = active_key_id()
    nonce = secrets.token_bytes(12)
    sealed = _ciphers()[kid].encrypt(nonce, plaintext, _associated_data(context, kid))
    return f"{VERSION}.{kid}.{b64encode(nonce + sealed)}"


def decrypt(token: str, *, context: str) -> bytes:
    version, _, rest = token.partition(".")
    kid, _, payload = rest.partition(".")
    if version != VERSION or not kid or not payload:
        raise DecryptionError("malformed ciphertext")
    cipher = _ciphers().get(kid)
    if cipher is None:
        raise DecryptionError(f"encryption key {kid!r} is not configured")
    try:
        raw = b64decode(payload)
        return cipher.decrypt(raw[:12], raw[12:], _associated_data(context, kid))
    except (InvalidTag, ValueError):
        raise DecryptionError("ciphertext does not belong to this record") from None


def key_id_of(token: str) -> str:
    return token.split(".", 2)[1] if token.count(".") >= 2 else ""


def _associated_data(context: str, kid: str) -> bytes:
    return f"tradeplane:{context}:{kid}".encode()


def reset_cache() -> None:
    """Forget the built ciphers (after the key list changes, e.g. in rotation or tests)."""
    _ciphers.cache_clear()
