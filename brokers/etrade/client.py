"""The one way out to E*TRADE: OAuth 1.0a-signed requests with a timeout on every call,
retries for calls that are safe to repeat and for nothing else, and every failure as a
BrokerError."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests_oauthlib import OAuth1
from urllib3.exceptions import NewConnectionError

from brokers.base import BrokerError, BrokerErrorCode
from brokers.etrade.config import ETradeConfig
from brokers.etrade.errors import Operation, is_rate_limited, parse_json, refusal

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 3
BACKOFF_SECONDS = (0.2, 0.5)
MAX_RETRY_AFTER_SECONDS = 2.0


class Call(Enum):
    """How a call may be repeated, and what a missing answer means."""

    # Safe to repeat: retried on 5xx, the rate-limit page and connection failures.
    READ = "read"
    # Changes nothing at E*TRADE that matters (preview, the token exchange), yet is not
    # repeated behind the caller's back: a failure is simply UNAVAILABLE.
    ONCE = "once"
    # May change state (place, cancel): never repeated. A request that may have arrived
    # but got no answer is OUTCOME_UNKNOWN, for reconciliation to settle.
    WRITE = "write"


class ETradeClient:
    """Signed calls for one consumer key and, once authorized, one access token."""

    def __init__(
        self,
        config: ETradeConfig,
        *,
        token: str = "",
        token_secret: str = "",
        on_token_used: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._token = token
        self._token_secret = token_secret
        self._on_token_used = on_token_used
        self._session = requests.Session()
        # Retries are decided here, per call; urllib3 must never repeat a request itself.
        no_retries = HTTPAdapter(max_retries=0)
        self._session.mount("https://", no_retries)
        self._session.mount("http://", no_retries)

    # ---- OAuth -------------------------------------------------------------------------

    def fetch_request_token(self) -> dict[str, str]:
        # A repeat only leaves an unused request token behind, so this may retry.
        return self._oauth_form("request_token", self._signer(callback_uri="oob"), Call.READ)

    def fetch_access_token(
        self, request_token: str, request_token_secret: str, verifier: str
    ) -> dict[str, str]:
        # The request token is spent by the first exchange that arrives: never repeat it.
        signer = self._signer(request_token, request_token_secret, verifier=verifier)
        return self._oauth_form("access_token", signer, Call.ONCE)

    def renew_access_token(self) -> None:
        self._send("GET", self._oauth_url("renew_access_token"), Call.READ, Operation.OAUTH)

    def revoke_access_token(self) -> None:
        self._send("GET", self._oauth_url("revoke_access_token"), Call.READ, Operation.OAUTH)

    # ---- Resources ---------------------------------------------------------------------

    def get(
        self, path: str, operation: Operation, params: Mapping[str, str | int] | None = None
    ) -> Any:
        """The parsed JSON body of a GET under /v1, or None for 204 (no records)."""
        response = self._send("GET", self._api_url(path), Call.READ, operation, params=params)
        return self._json(response, Call.READ)

    def send(
        self, method: str, path: str, body: Mapping[str, Any], operation: Operation, call: Call
    ) -> Any:
        """The parsed JSON answer to a POST or PUT under /v1."""
        response = self._send(method, self._api_url(path), call, operation, body=body)
        return self._json(response, call)

    # ---- Transport ---------------------------------------------------------------------

    def _signer(self, token: str = "", secret: str = "", **extra: str) -> OAuth1:
        return OAuth1(
            self.config.consumer_key,
            client_secret=self.config.consumer_secret,
            resource_owner_key=token or None,
            resource_owner_secret=secret or None,
            signature_method="HMAC-SHA1",
            signature_type="AUTH_HEADER",
            **extra,
        )

    def _oauth_url(self, name: str) -> str:
        return f"{self.config.oauth_base_url}/{name}"

    def _api_url(self, path: str) -> str:
        return f"{self.config.api_base_url}{path}"

    def _oauth_form(self, name: str, signer: OAuth1, call: Call) -> dict[str, str]:
        response = self._send("GET", self._oauth_url(name), call, Operation.OAUTH, signer=signer)
        # Percent-decoded here: E*TRADE's tokens carry '/', '+' and '='.
        answer = dict(parse_qsl(response.text))
        if not answer.get("oauth_token") or not answer.get("oauth_token_secret"):
            raise BrokerError(
                BrokerErrorCode.UNAVAILABLE, f"E*TRADE's {name} answer had no token in it"
            )
        return answer

    def _send(
        self,
        method: str,
        url: str,
        call: Call,
        operation: Operation,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        signer: OAuth1 | None = None,
    ) -> requests.Response:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            # Sent as JSON, so not part of the signature (oauthlib signs only form bodies).
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, default=_json_value).encode()
        token_signed = signer is None
        signer = signer or self._signer(self._token, self._token_secret)
        attempts = READ_ATTEMPTS if call is Call.READ else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    auth=signer,
                    timeout=self.config.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                if attempt < attempts and _worth_repeating(exc):
                    _pause(attempt, None, f"{method} {url}: {type(exc).__name__}")
                    continue
                raise _lost(exc, call, method, url) from exc
            if response.status_code in (200, 201, 204):
                if token_signed and self._on_token_used is not None:
                    self._on_token_used()
                return response
            if attempt < attempts and _transient(response):
                _pause(attempt, response, f"{method} {url}: HTTP {response.status_code}")
                continue
            raise _failure(response, call, operation, method, url)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _json(response: requests.Response, call: Call) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return parse_json(response.text)
        except ValueError:
            code = (
                BrokerErrorCode.OUTCOME_UNKNOWN
                if call is Call.WRITE
                else BrokerErrorCode.UNAVAILABLE
            )
            raise BrokerError(code, "E*TRADE answered with a body that is not JSON") from None


def _json_value(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot send {type(value).__name__} to E*TRADE")


def _transient(response: requests.Response) -> bool:
    return response.status_code >= 500 or is_rate_limited(response)


def _worth_repeating(exc: requests.RequestException) -> bool:
    # A read timeout is not repeated: the caller has already waited the whole timeout.
    return isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout)


def _never_sent(exc: requests.RequestException) -> bool:
    """True only when the request certainly did not leave: no connection was made."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _pause(attempt: int, response: requests.Response | None, why: str) -> None:
    delay = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS)) - 1]
    retry_after = response.headers.get("Retry-After", "") if response is not None else ""
    if retry_after.isdigit():
        delay = min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
    logger.warning("E*TRADE call failed, repeating in %.1fs: %s", delay, why)
    time.sleep(delay)


def _lost(exc: requests.RequestException, call: Call, method: str, url: str) -> BrokerError:
    if call is Call.WRITE and not _never_sent(exc):
        return BrokerError(
            BrokerErrorCode.OUTCOME_UNKNOWN,
            f"no answer from E*TRADE to {method} {_path(url)} after sending it "
            f"({type(exc).__name__}); it may or may not have taken effect",
        )
    if isinstance(exc, requests.Timeout):
        what = f"E*TRADE did not answer {method} {_path(url)} in time"
    elif isinstance(exc, requests.ConnectionError):
        what = f"could not reach E*TRADE for {method} {_path(url)} ({type(exc).__name__})"
    else:
        return BrokerError(
            BrokerErrorCode.UNAVAILABLE, f"cannot call E*TRADE: {exc}", transient=False
        )
    return BrokerError(BrokerErrorCode.UNAVAILABLE, what)


def _failure(
    response: requests.Response, call: Call, operation: Operation, method: str, url: str
) -> BrokerError:
    if response.status_code >= 500:
        if call is Call.WRITE:
            # A server error can come after the order was taken: only a lookup can tell.
            return BrokerError(
                BrokerErrorCode.OUTCOME_UNKNOWN,
                f"E*TRADE answered HTTP {response.status_code} to {method} {_path(url)}; "
                "it may or may not have taken effect",
            )
        return BrokerError(
            BrokerErrorCode.UNAVAILABLE,
            f"E*TRADE answered HTTP {response.status_code} to {method} {_path(url)}",
        )
    return refusal(response, operation)


def _path(url: str) -> str:
    return urlsplit(url).path
