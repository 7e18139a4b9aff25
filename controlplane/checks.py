"""System checks for configuration invariants Django cannot see by itself."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning, register


@register()
def check_embedded_mode(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if settings.PRODUCTION and not settings.REDIS_URL:
        messages.append(
            Warning(
                "REDIS_URL is not set in production: rate limits and revocation are per process.",
                hint="Set REDIS_URL so every server process shares limits and revocations.",
                id="tradeplane.W001",
            )
        )
    if settings.PRODUCTION and str(settings.DATABASES["default"]["ENGINE"]).endswith("sqlite3"):
        messages.append(
            Warning(
                "SQLite in production serialises every write and cannot scale out.",
                hint="Set DATABASE_URL to a PostgreSQL database.",
                id="tradeplane.W002",
            )
        )
    return messages
