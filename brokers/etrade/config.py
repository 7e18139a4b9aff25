"""Where an E*TRADE connection talks to and with which consumer key, read from settings at
call time so a running process (and a test) sees the current values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from brokers.base import BrokerError, BrokerErrorCode

if TYPE_CHECKING:
    from controlplane.models import BrokerConnection

API_BASE_URLS = {
    "sandbox": "https://apisb.etrade.com",
    "production": "https://api.etrade.com",
}
# E*TRADE's sample client signs sandbox OAuth calls against the production host too.
DEFAULT_OAUTH_BASE_URL = "https://api.etrade.com/oauth"
# Connects should be quick even when E*TRADE is slow to answer.
MAX_CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ETradeConfig:
    consumer_key: str
    consumer_secret: str = field(repr=False)  # never in logs or tracebacks
    api_base_url: str
    oauth_base_url: str
    authorize_url: str
    timeout_seconds: float

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) for requests."""
        return (min(self.timeout_seconds, MAX_CONNECT_TIMEOUT_SECONDS), self.timeout_seconds)

    @classmethod
    def for_connection(cls, connection: BrokerConnection) -> ETradeConfig:
        sandbox = connection.environment == "sandbox"
        key_name, secret_name = "ETRADE_CONSUMER_KEY", "ETRADE_CONSUMER_SECRET"
        if sandbox and settings.ETRADE_SANDBOX_CONSUMER_KEY:
            key_name, secret_name = "ETRADE_SANDBOX_CONSUMER_KEY", "ETRADE_SANDBOX_CONSUMER_SECRET"
        consumer_key = getattr(settings, key_name)
        consumer_secret = getattr(settings, secret_name)
        if not consumer_key:
            wanted = "ETRADE_SANDBOX_CONSUMER_KEY (or ETRADE_CONSUMER_KEY)" if sandbox else key_name
            raise _not_configured(wanted)
        if not consumer_secret:
            raise _not_configured(secret_name)
        explicit_api = settings.ETRADE_API_BASE_URL
        api_base_url = explicit_api or API_BASE_URLS.get(
            connection.environment, API_BASE_URLS["sandbox"]
        )
        oauth_base_url = settings.ETRADE_OAUTH_BASE_URL or (
            f"{explicit_api}/oauth" if explicit_api else DEFAULT_OAUTH_BASE_URL
        )
        return cls(
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            api_base_url=api_base_url.rstrip("/"),
            oauth_base_url=oauth_base_url.rstrip("/"),
            authorize_url=settings.ETRADE_AUTHORIZE_URL,
            timeout_seconds=float(settings.ETRADE_TIMEOUT_SECONDS),
        )


def _not_configured(variable: str) -> BrokerError:
    return BrokerError(
        BrokerErrorCode.UNAVAILABLE,
        f"E*TRADE is not configured: set {variable} in the environment",
        transient=False,
    )
