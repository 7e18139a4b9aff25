"""Start-up configuration: a bad value stops the process, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.config import format_keyring

ROOT = Path(__file__).resolve().parent.parent
KEY = format_keyring([("k1", b"\x01" * 32)])
PRODUCTION_ENV = {
    "TRADEPLANE_ENV": "production",
    "SECRET_KEY": "s" * 50,
    "TRADEPLANE_JWT_KEYS": KEY,
    "TRADEPLANE_ENCRYPTION_KEYS": KEY,
    "TRADEPLANE_HASH_KEY": "A" * 43,
    "TRADEPLANE_PUBLIC_URL": "https://trade.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/tradeplane",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
}


def load_settings(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRADEPLANE_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"))
    }
    clean.update({"TRADEPLANE_VAR_DIR": str(tmp_path), **env})
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='controlplane.settings';"
        "django.setup(); from django.conf import settings; print(settings.TRADEPLANE_MCP_URL)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_complete_production_environment_starts(tmp_path: Path) -> None:
    result = load_settings(PRODUCTION_ENV, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "https://trade.example.com/mcp"
    assert not (tmp_path / "secrets.json").exists()  # nothing generated in production


def test_embedded_mode_generates_keys_once(tmp_path: Path) -> None:
    first = load_settings({}, tmp_path)
    assert first.returncode == 0, first.stderr
    content = (tmp_path / "secrets.json").read_text()
    assert load_settings({}, tmp_path).returncode == 0
    assert (tmp_path / "secrets.json").read_text() == content


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SECRET_KEY", "", "SECRET_KEY must be set"),
        ("TRADEPLANE_JWT_KEYS", "", "TRADEPLANE_JWT_KEYS must be set"),
        ("TRADEPLANE_JWT_KEYS", "nokid", "TRADEPLANE_JWT_KEYS: each entry"),
        ("TRADEPLANE_JWT_KEYS", "k1:AAAA", "TRADEPLANE_JWT_KEYS: key 'k1' must be 32 bytes"),
        ("TRADEPLANE_ENCRYPTION_KEYS", "", "TRADEPLANE_ENCRYPTION_KEYS must be set"),
        ("TRADEPLANE_HASH_KEY", "", "TRADEPLANE_HASH_KEY must be set"),
        ("TRADEPLANE_HASH_KEY", "AAAA", "TRADEPLANE_HASH_KEY must decode to at least 32"),
        ("TRADEPLANE_PUBLIC_URL", "http://trade.example.com", "must use https"),
        ("TRADEPLANE_PUBLIC_URL", "trade.example.com", "TRADEPLANE_PUBLIC_URL must be an"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL must be a postgres"),
        ("REDIS_URL", "http://x", "REDIS_URL must be a redis"),
        ("TRADEPLANE_TOKEN_TTL_SECONDS", "soon", "TRADEPLANE_TOKEN_TTL_SECONDS must be an"),
        ("TRADEPLANE_TOKEN_TTL_SECONDS", "5", "TRADEPLANE_TOKEN_TTL_SECONDS must be between"),
        ("TRADEPLANE_DEBUG", "maybe", "TRADEPLANE_DEBUG must be a boolean"),
        ("TRADEPLANE_ENV", "staging", "TRADEPLANE_ENV must be one of"),
    ],
)
def test_a_bad_value_stops_start_up_naming_it(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    result = load_settings({**PRODUCTION_ENV, name: value}, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret_key"
    secret_file.write_text("f" * 40 + "\n")
    env = {**PRODUCTION_ENV, "SECRET_KEY": "", "SECRET_KEY_FILE": str(secret_file)}
    assert load_settings(env, tmp_path).returncode == 0
