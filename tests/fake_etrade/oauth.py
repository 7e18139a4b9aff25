"""OAuth 1.0a as E*TRADE runs it, checked by oauthlib's server side.

oauthlib's endpoints verify the HMAC-SHA1 signature, the timestamp window and the
mandatory parameters; the validator here holds the tokens and E*TRADE's lifetime rules
(request tokens live 5 minutes; access tokens die at midnight US Eastern and go inactive
after 2 hours without a request, until renewed). A validator is made per request, so it can
remember why a request failed and the answer can name E*TRADE's `oauth_problem`.

Token lifetimes follow the fake's clock (which tests move); the timestamp window follows
the wall clock, which the client signs with.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from oauthlib.oauth1 import RequestValidator

EASTERN = ZoneInfo("America/New_York")
REQUEST_TOKEN_LIFETIME = timedelta(minutes=5)
IDLE_LIMIT = timedelta(hours=2)
TIMESTAMP_WINDOW_SECONDS = 300
NONCE_MEMORY_SECONDS = 2 * TIMESTAMP_WINDOW_SECONDS
# E*TRADE's tokens are base64 text, with '/', '+' and '=' (reference §2.2).
TOKEN_FORMAT = re.compile(r"^[A-Za-z0-9+/=]{16,64}$")
VERIFIER_ALPHABET = string.ascii_uppercase + string.digits


def new_token() -> str:
    return base64.b64encode(secrets.token_bytes(24)).decode()


def new_verifier() -> str:
    return "".join(secrets.choice(VERIFIER_ALPHABET) for _ in range(5))


def next_eastern_midnight(moment: datetime) -> datetime:
    day = moment.astimezone(EASTERN).date() + timedelta(days=1)
    return datetime.combine(day, datetime.min.time(), tzinfo=EASTERN)


@dataclass
class RequestToken:
    secret: str
    consumer_key: str
    created: datetime
    user: str | None = None
    verifier: str | None = None
    used: bool = False


@dataclass
class AccessToken:
    secret: str
    consumer_key: str
    user: str
    issued: datetime
    expires: datetime
    last_used: datetime
    revoked: bool = False


class TokenBook:
    """Every consumer, token and recent nonce the fake knows."""

    def __init__(self, consumers: dict[str, str]) -> None:
        self.consumers = consumers
        self.request_tokens: dict[str, RequestToken] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self._nonces: dict[tuple[str, str, str], float] = {}

    def remember_nonce(self, client_key: str, timestamp: str, nonce: str) -> bool:
        """False when this nonce was already used with this timestamp and key."""
        cutoff = time.time() - NONCE_MEMORY_SECONDS
        for seen, at in list(self._nonces.items()):
            if at < cutoff:
                del self._nonces[seen]
        key = (client_key, timestamp, nonce)
        if key in self._nonces:
            return False
        self._nonces[key] = time.time()
        return True


class ETradeValidator(RequestValidator):  # type: ignore[misc]
    def __init__(self, book: TokenBook, now: datetime, *, allow_inactive: bool = False) -> None:
        super().__init__()
        self.book = book
        self.now = now
        self.allow_inactive = allow_inactive
        self.problem: str | None = None
        self.user: str | None = None

    def _refuse(self, problem: str) -> bool:
        self.problem = self.problem or problem
        return False

    # ---- Policy ------------------------------------------------------------------------

    @property
    def enforce_ssl(self) -> bool:
        return False  # the fake serves plain HTTP on the loopback interface

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return ("HMAC-SHA1",)

    @property
    def timestamp_lifetime(self) -> int:
        return TIMESTAMP_WINDOW_SECONDS

    @property
    def dummy_client(self) -> str:
        return "dummy-consumer"

    @property
    def dummy_request_token(self) -> str:
        return "dummyRequestToken0000"

    @property
    def dummy_access_token(self) -> str:
        return "dummyAccessToken00000"

    def check_client_key(self, client_key: str) -> bool:
        return 0 < len(client_key) <= 128 and client_key.isprintable()

    def check_request_token(self, request_token: str) -> bool:
        return bool(TOKEN_FORMAT.match(request_token))

    def check_access_token(self, request_token: str) -> bool:
        return bool(TOKEN_FORMAT.match(request_token))

    def check_nonce(self, nonce: str) -> bool:
        return 0 < len(nonce) <= 64 and nonce.isalnum()

    def check_verifier(self, verifier: str) -> bool:
        return 0 < len(verifier) <= 16 and verifier.isalnum()

    def check_realms(self, realms: Any) -> bool:
        return True

    # ---- Consumers and nonces ----------------------------------------------------------

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return client_key in self.book.consumers or self._refuse("consumer_key_rejected")

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return self.book.consumers.get(client_key, "dummy-secret")

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        return self.book.remember_nonce(client_key, timestamp, nonce) or self._refuse("nonce_used")

    # ---- Request tokens ----------------------------------------------------------------

    def validate_redirect_uri(self, client_key: str, redirect_uri: str, request: Any) -> bool:
        # E*TRADE takes only "oob", even when a callback is registered.
        return redirect_uri == "oob" or self._refuse(
            "callback_rejected,oauth_acceptable_callback=oob"
        )

    def get_default_realms(self, client_key: str, request: Any) -> list[str]:
        return []

    def validate_requested_realms(self, client_key: str, realms: Any, request: Any) -> bool:
        return True

    def save_request_token(self, token: dict[str, str], request: Any) -> None:
        self.book.request_tokens[token["oauth_token"]] = RequestToken(
            secret=token["oauth_token_secret"], consumer_key=request.client_key, created=self.now
        )

    # ---- Access tokens -----------------------------------------------------------------

    def validate_request_token(self, client_key: str, token: str, request: Any) -> bool:
        pending = self.book.request_tokens.get(token)
        if pending is None or pending.used or pending.consumer_key != client_key:
            return self._refuse("token_rejected")
        if self.now - pending.created > REQUEST_TOKEN_LIFETIME:
            return self._refuse("token_expired")
        return True

    def get_request_token_secret(self, client_key: str, token: str, request: Any) -> str:
        pending = self.book.request_tokens.get(token)
        return pending.secret if pending else "dummy-secret"

    def validate_verifier(self, client_key: str, token: str, verifier: str, request: Any) -> bool:
        pending = self.book.request_tokens.get(token)
        if pending is None or pending.verifier is None:
            return self._refuse("permission_denied")  # not approved (yet)
        # Which problem E*TRADE names for a wrong verifier is UNCONFIRMED.
        return hmac.compare_digest(verifier, pending.verifier) or self._refuse("token_rejected")

    def invalidate_request_token(self, client_key: str, request_token: str, request: Any) -> None:
        self.book.request_tokens[request_token].used = True

    def get_realms(self, token: str, request: Any) -> list[str]:
        return []

    def save_access_token(self, token: dict[str, str], request: Any) -> None:
        pending = self.book.request_tokens[request.resource_owner_key]
        assert pending.user is not None
        self.book.access_tokens[token["oauth_token"]] = AccessToken(
            secret=token["oauth_token_secret"],
            consumer_key=request.client_key,
            user=pending.user,
            issued=self.now,
            expires=next_eastern_midnight(self.now),
            last_used=self.now,
        )

    def validate_access_token(self, client_key: str, token: str, request: Any) -> bool:
        access = self.book.access_tokens.get(token)
        if access is None or access.consumer_key != client_key:
            return self._refuse("token_rejected")
        if access.revoked or self.now >= access.expires:
            return self._refuse("token_expired")
        if not self.allow_inactive and self.now - access.last_used > IDLE_LIMIT:
            # The wording for an inactive (rather than expired) token is UNCONFIRMED.
            return self._refuse("token_rejected")
        self.user = access.user
        return True

    def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
        access = self.book.access_tokens.get(token)
        return access.secret if access else "dummy-secret"

    def validate_realms(
        self,
        client_key: str,
        token: str,
        request: Any,
        uri: str | None = None,
        realms: Any = None,
    ) -> bool:
        return True
