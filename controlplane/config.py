"""Typed readers for environment configuration, and the embedded-mode key file.

Every reader raises ImproperlyConfigured naming the variable when its value is bad, so a
misconfigured process stops at start-up instead of failing on the first request.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def env_str(name: str, default: str = "") -> str:
    """A string from the environment; `NAME_FILE` may name a file holding it (for secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_path!r}: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_base_url(name: str, raw: str, *, require_https: bool) -> str:
    """A scheme://host[:port][/path] base URL without a trailing slash."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(
            f"{name} must be an http(s) URL such as https://trade.example.com"
        )
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name} must not have a query or fragment")
    if require_https and parts.scheme != "https":
        raise ImproperlyConfigured(f"{name} must use https when TRADEPLANE_ENV=production")
    return raw.rstrip("/")


def b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64encode(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def parse_keyring(name: str, raw: str, *, key_length: int) -> list[tuple[str, bytes]]:
    """Parse `kid:base64url,kid:base64url,...`: the first key is the active one.

    Later keys stay valid for verification or decryption only, which is how rotation works:
    put the new key first, keep the old one until nothing needs it.
    """
    keys: list[tuple[str, bytes]] = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        kid, sep, encoded = entry.partition(":")
        if not sep or not KID_PATTERN.match(kid):
            raise ImproperlyConfigured(f"{name}: each entry must be 'kid:base64url-key'")
        try:
            material = b64decode(encoded)
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"{name}: key {kid!r} is not valid base64url") from None
        if len(material) != key_length:
            raise ImproperlyConfigured(f"{name}: key {kid!r} must be {key_length} bytes")
        if any(kid == existing for existing, _ in keys):
            raise ImproperlyConfigured(f"{name}: key id {kid!r} appears twice")
        keys.append((kid, material))
    if not keys:
        raise ImproperlyConfigured(f"{name} must hold at least one key")
    return keys


def format_keyring(keys: list[tuple[str, bytes]]) -> str:
    return ",".join(f"{kid}:{b64encode(material)}" for kid, material in keys)


def new_key_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


class EmbeddedSecrets:
    """Secrets generated once into var/ when the process is not in production.

    Written atomically (a hard link refuses to replace an existing file), so two processes
    starting together agree on one set of keys.
    """

    FIELDS = (
        "SECRET_KEY",
        "TRADEPLANE_JWT_KEYS",
        "TRADEPLANE_ENCRYPTION_KEYS",
        "TRADEPLANE_HASH_KEY",
    )

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            self._create()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ImproperlyConfigured(f"cannot read embedded secrets {self.path}: {exc}") from exc
        if not isinstance(data, dict) or any(not isinstance(data.get(f), str) for f in self.FIELDS):
            raise ImproperlyConfigured(f"embedded secrets file {self.path} is incomplete")
        return {field: data[field] for field in self.FIELDS}

    def save(self, values: dict[str, str]) -> None:
        self._write(values, replace=True)

    def _create(self) -> None:
        values = {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "TRADEPLANE_JWT_KEYS": format_keyring([(new_key_id("jwt-"), secrets.token_bytes(32))]),
            "TRADEPLANE_ENCRYPTION_KEYS": format_keyring(
                [(new_key_id("enc-"), secrets.token_bytes(32))]
            ),
            "TRADEPLANE_HASH_KEY": b64encode(secrets.token_bytes(32)),
        }
        self._write(values, replace=False)

    def _write(self, values: dict[str, str], *, replace: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle, indent=2)
        try:
            if replace:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)
        except FileExistsError:
            pass  # another process won the race; its keys are the keys
        finally:
            tmp.unlink(missing_ok=True)
