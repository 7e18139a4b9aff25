"""A local E*TRADE over real HTTP: OAuth 1.0a, the v1 resources the adapter uses, a clock
tests can move, faults tests can switch on per endpoint, and a count of calls.

    with FakeETrade() as fake:
        fake.base_url, fake.consumer_key, fake.consumer_secret
        fake.approve(request_token, user="alice")  # -> verifier, as the browser page would
        fake.advance(hours=2)                       # tokens idle out; nobody sleeps
        fake.fail("orders.place", Fault.DROP)       # place it, then hang up
        fake.calls["orders.place"]
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from oauthlib.oauth1 import AccessTokenEndpoint, RequestTokenEndpoint, ResourceEndpoint
from oauthlib.oauth1.rfc5849.utils import parse_authorization_header

from tests.fake_etrade.brokerage import Brokerage, ETradeError, FakeAccount
from tests.fake_etrade.oauth import (
    TIMESTAMP_WINDOW_SECONDS,
    ETradeValidator,
    TokenBook,
    new_token,
    new_verifier,
)

AUTHORIZE_PATH = "/e/t/etws/authorize"
# Where the authorize page shows the verification code.
VERIFIER_IN_PAGE = re.compile(r'id="verifier">([A-Z0-9]+)<')
RATE_LIMIT_PAGE = (
    "<html><body><h1>Error</h1><p>Number of requests exceeded the rate limit set</p></body></html>"
)
# No source gives the code in a 401 JSON body; this number is a placeholder.
AUTH_ERROR_CODE = 9400


class Fault(Enum):
    SERVER_ERROR = "server_error"  # 500 before the request is processed
    RATE_LIMIT = "rate_limit"  # the documented 400 + HTML page, before processing
    SLOW = "slow"  # processed, then the answer waits `delay` seconds
    DROP = "drop"  # processed, then the connection closes without an answer


@dataclass
class _Switch:
    fault: Fault
    remaining: int | None  # None: until cleared
    delay: float


@dataclass
class Incoming:
    method: str
    url: str  # as the client signed it: scheme, host, path and query
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Outgoing:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> Outgoing:
        return cls(status, json.dumps(payload, default=_json_number).encode())

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain") -> Outgoing:
        return cls(status, text.encode(), content_type)


Route = Callable[[Incoming], Outgoing]


class FakeETrade:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        consumer_key: str | None = None,
        consumer_secret: str | None = None,
    ) -> None:
        self.consumer_key = consumer_key or secrets.token_hex(16)
        self.consumer_secret = consumer_secret or secrets.token_hex(20)
        self.lock = threading.RLock()
        self.clock_offset = timedelta(0)
        self.tokens = TokenBook({self.consumer_key: self.consumer_secret})
        self.brokerage = Brokerage(self.now, lambda: self.base_url)
        self.calls: Counter[str] = Counter()
        self.oauth_problems: list[str] = []  # every oauth_problem answered, in order
        self._switches: dict[str, list[_Switch]] = defaultdict(list)
        self._stopping = threading.Event()
        self._host = host
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # ---- Running -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}{AUTHORIZE_PATH}"

    def start(self) -> FakeETrade:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits for the loop
            name="fake-etrade",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases slow answers at once
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeETrade:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- Test controls -----------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def advance(self, seconds: float = 0, *, hours: float = 0) -> None:
        """Move the fake's clock (token lifetimes, order times) forward."""
        with self.lock:
            self.clock_offset += timedelta(seconds=seconds, hours=hours)

    def approve(self, request_token: str, user: str = "trader") -> str:
        """What the person does on the authorize page: approve, and get the verifier."""
        with self.lock:
            pending = self.tokens.request_tokens.get(request_token)
            if pending is None or pending.used:
                raise LookupError(f"no pending request token {request_token!r}")
            pending.user = user
            pending.verifier = new_verifier()
            self.brokerage.accounts_of(user)
            return pending.verifier

    def fail(
        self, endpoint: str, fault: Fault, *, times: int | None = 1, delay: float = 2.0
    ) -> None:
        """The next `times` calls to `endpoint` (None: every call until cleared) meet
        `fault`. Endpoint names are those counted in `calls`."""
        with self.lock:
            self._switches[endpoint].append(_Switch(fault, times, delay))

    def clear_faults(self) -> None:
        with self.lock:
            self._switches.clear()

    @contextmanager
    def closed_market(self) -> Iterator[None]:
        """The market closes: previews and placements are refused as E*TRADE refuses them
        (placeholder wording; no source gives it)."""
        with self.lock:
            self.brokerage.market_open = False
        try:
            yield
        finally:
            with self.lock:
                self.brokerage.market_open = True

    def accounts(self, user: str) -> list[FakeAccount]:
        with self.lock:
            return self.brokerage.accounts_of(user)

    def set_price(self, symbol: str, last: Decimal) -> None:
        with self.lock:
            self.brokerage.prices[symbol] = last

    # ---- Serving -----------------------------------------------------------------------

    def answer(self, incoming: Incoming) -> tuple[Outgoing, _Switch | None]:
        """The answer to one request, and the fault to apply to delivering it."""
        endpoint, route = self._route(incoming)
        with self.lock:
            self.calls[endpoint] += 1
            switch = self._take_switch(endpoint)
            if switch is not None and switch.fault is Fault.SERVER_ERROR:
                error = {"Error": {"code": 100, "message": "Request could not be completed"}}
                return Outgoing.json(500, error), None
            if switch is not None and switch.fault is Fault.RATE_LIMIT:
                return Outgoing.text(400, RATE_LIMIT_PAGE, "text/html"), None
            try:
                return route(incoming), switch
            except ETradeError as error:
                return Outgoing.json(error.status, error.body()), switch

    def _take_switch(self, endpoint: str) -> _Switch | None:
        queue = self._switches.get(endpoint)
        if not queue:
            return None
        switch = queue[0]
        if switch.remaining is not None:
            switch.remaining -= 1
            if switch.remaining <= 0:
                queue.pop(0)
        return switch

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _route(self, incoming: Incoming) -> tuple[str, Route]:
        path, method = incoming.path, incoming.method
        if path == AUTHORIZE_PATH:
            return "oauth.authorize", self._authorize_page
        if path.startswith("/oauth/"):
            name = path.removeprefix("/oauth/")
            oauth_routes: dict[str, Route] = {
                "request_token": self._request_token,
                "access_token": self._access_token,
                "renew_access_token": self._renew,
                "revoke_access_token": self._revoke,
            }
            if name in oauth_routes and method in ("GET", "POST"):
                return f"oauth.{name}", oauth_routes[name]
            return "unknown", _not_found
        if not path.startswith("/v1/"):
            return "unknown", _not_found
        segments = [unquote(each) for each in path.removeprefix("/v1/").split("/")]
        wants_json = segments[-1].endswith(".json")
        segments[-1] = segments[-1].removesuffix(".json")
        if not wants_json and "application/json" not in incoming.headers.get("accept", ""):
            return "unknown", _xml_unsupported
        resource = _match_resource(method, segments)
        if resource is None:
            return "unknown", _not_found
        endpoint, handler = resource
        return endpoint, lambda request: self._resource(request, handler)

    # ---- OAuth -------------------------------------------------------------------------

    def _request_token(self, incoming: Incoming) -> Outgoing:
        validator = ETradeValidator(self.tokens, self.now())
        endpoint = RequestTokenEndpoint(validator, token_generator=new_token)
        _, body, status = endpoint.create_request_token_response(
            incoming.url, incoming.method, incoming.body.decode(), incoming.headers
        )
        if status != 200:
            return self._oauth_refusal(validator, incoming)
        return Outgoing.text(200, body, "application/x-www-form-urlencoded")

    def _access_token(self, incoming: Incoming) -> Outgoing:
        validator = ETradeValidator(self.tokens, self.now())
        endpoint = AccessTokenEndpoint(validator, token_generator=new_token)
        _, body, status = endpoint.create_access_token_response(
            incoming.url, incoming.method, incoming.body.decode(), incoming.headers
        )
        if status != 200:
            return self._oauth_refusal(validator, incoming)
        # Only the token and its secret, as E*TRADE answers (oauthlib adds realms).
        granted = dict(parse_qsl(body))
        return Outgoing.text(
            200,
            urlencode(
                {
                    "oauth_token": granted["oauth_token"],
                    "oauth_token_secret": granted["oauth_token_secret"],
                }
            ),
            "application/x-www-form-urlencoded",
        )

    def _renew(self, incoming: Incoming) -> Outgoing:
        token = self._verify_access(incoming, allow_inactive=True, html=True)
        if isinstance(token, Outgoing):
            return token
        self.tokens.access_tokens[token].last_used = self.now()
        return Outgoing.text(200, "Access Token has been renewed")

    def _revoke(self, incoming: Incoming) -> Outgoing:
        token = self._verify_access(incoming, allow_inactive=True, html=True)
        if isinstance(token, Outgoing):
            return token
        self.tokens.access_tokens[token].revoked = True
        return Outgoing.text(200, "Revoked Access Token")

    def _authorize_page(self, incoming: Incoming) -> Outgoing:
        """The page the person lands on; logging in and accepting are taken as done
        (`user=` picks whose accounts are granted)."""
        key, token = incoming.query.get("key", ""), incoming.query.get("token", "")
        pending = self.tokens.request_tokens.get(token)
        if key != self.consumer_key or pending is None or pending.used:
            return Outgoing.text(
                400, _page("This authorization request is not valid."), "text/html"
            )
        if self.now() - pending.created > timedelta(minutes=5):
            return Outgoing.text(400, _page("This authorization request has expired."), "text/html")
        verifier = self.approve(token, incoming.query.get("user", "trader"))
        return Outgoing.text(
            200,
            _page(
                "You have accepted. Copy this code into the application: "
                f'<b id="verifier">{escape(verifier)}</b>'
            ),
            "text/html",
        )

    def _verify_access(
        self, incoming: Incoming, *, allow_inactive: bool, html: bool
    ) -> str | Outgoing:
        """The access token of a correctly signed request, or the 401 to answer."""
        validator = ETradeValidator(self.tokens, self.now(), allow_inactive=allow_inactive)
        valid, request = ResourceEndpoint(validator).validate_protected_resource_request(
            incoming.url, incoming.method, incoming.body.decode(), incoming.headers
        )
        if not valid:
            if html:
                return self._oauth_refusal(validator, incoming)
            problem = self._problem(validator, incoming)
            message = f"oauth_problem={problem}"
            return Outgoing.json(401, {"Error": {"code": AUTH_ERROR_CODE, "message": message}})
        token: str = request.resource_owner_key
        self.tokens.access_tokens[token].last_used = self.now()
        return token

    def _oauth_refusal(self, validator: ETradeValidator, incoming: Incoming) -> Outgoing:
        """E*TRADE's OAuth endpoints refuse with 401 and an HTML page naming the problem."""
        problem = self._problem(validator, incoming)
        return Outgoing.text(401, _page(f"oauth_problem={escape(problem)}"), "text/html")

    def _problem(self, validator: ETradeValidator, incoming: Incoming) -> str:
        problem = validator.problem or _signature_problem(incoming)
        self.oauth_problems.append(problem)
        return problem

    # ---- Resources ---------------------------------------------------------------------

    def _resource(self, incoming: Incoming, handler: ResourceHandler) -> Outgoing:
        token = self._verify_access(incoming, allow_inactive=False, html=False)
        if isinstance(token, Outgoing):
            return token
        user = self.tokens.access_tokens[token].user
        body: Any = {}
        if incoming.body:
            try:
                body = json.loads(incoming.body)
            except ValueError:
                return Outgoing.json(400, {"Error": {"code": 9905, "message": "Malformed body"}})
        payload = handler(self.brokerage, user, incoming.query, body)
        return Outgoing(204) if payload is None else Outgoing.json(200, payload)


# ---- Resource table ------------------------------------------------------------------------

ResourceHandler = Callable[[Brokerage, str, dict[str, str], Any], dict[str, Any] | None]


def _match_resource(method: str, segments: list[str]) -> tuple[str, ResourceHandler] | None:
    """The endpoint name and handler for a /v1 path split into segments (no .json)."""
    match (method, segments):
        case ("GET", ["accounts", "list"]):
            return "accounts.list", lambda broker, user, _q, _b: _account_list(broker, user)
        case ("GET", ["accounts", key, "balance"]):
            return "accounts.balance", lambda b, u, q, _: b.balance(b.account(u, key), q)
        case ("GET", ["accounts", key, "portfolio"]):
            return "accounts.portfolio", lambda b, u, q, _: b.portfolio(b.account(u, key), q)
        case ("GET", ["accounts", key, "transactions"]):
            return "accounts.transactions", lambda b, u, q, _: b.transactions(b.account(u, key), q)
        case ("GET", ["accounts", key, "orders"]):
            return "orders.list", lambda b, u, q, _: b.list_orders(b.account(u, key), q)
        case ("POST", ["accounts", key, "orders", "preview"]):
            return "orders.preview", lambda b, u, _q, body: b.preview(b.account(u, key), body)
        case ("POST", ["accounts", key, "orders", "place"]):
            return "orders.place", lambda b, u, _q, body: b.place(b.account(u, key), body)
        case ("PUT", ["accounts", key, "orders", "cancel"]):
            return "orders.cancel", lambda b, u, _q, body: b.cancel(b.account(u, key), body)
        case ("GET", ["accounts", key, "orders", order_id]) if order_id not in ("preview", "place"):
            return "orders.detail", lambda b, u, _q, _b: b.order_detail(b.account(u, key), order_id)
        case ("GET", ["market", "quote", symbols]):
            wanted = [each.strip().upper() for each in symbols.split(",") if each.strip()]
            return "market.quote", lambda b, _u, q, _b: b.quotes(wanted, q)
    return None


def _account_list(brokerage: Brokerage, user: str) -> dict[str, Any] | None:
    accounts = brokerage.accounts_of(user)
    return {
        "AccountListResponse": {
            "Accounts": {
                "Account": [
                    {
                        "accountId": each.account_id,
                        "accountIdKey": each.key,
                        "accountMode": each.mode,
                        "accountDesc": "INDIVIDUAL",
                        "accountName": each.name,
                        "accountType": "INDIVIDUAL",
                        "institutionType": "BROKERAGE",
                        "accountStatus": "ACTIVE",
                        "closedDate": 0,
                    }
                    for each in accounts
                ]
            }
        }
    }


# ---- HTTP ----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeETrade
    ) -> None:
        self.fake = fake
        self.open_connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Kept-alive connections outlive server_close(); a stopped fake answers nothing."""
        with self._connections_lock:
            for each in self.open_connections:
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left is part of the tests, not a server bug.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle, the body would wait for the
    # client's delayed ACK of the headers (about 40 ms a call).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        split = urlsplit(self.path)
        incoming = Incoming(
            method=self.command,
            url=f"http://{self.headers.get('Host', '')}{self.path}",
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        outgoing, switch = fake.answer(incoming)
        if switch is not None and switch.fault is Fault.DROP:
            # Processed and stored; the answer is lost on the way back.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if switch is not None and switch.fault is Fault.SLOW:
            fake.wait(switch.delay)
        try:
            self.send_response(outgoing.status)
            self.send_header("Content-Type", outgoing.content_type)
            self.send_header("Content-Length", str(len(outgoing.body)))
            self.end_headers()
            self.wfile.write(outgoing.body)
        except OSError:
            self.close_connection = True  # the client gave up waiting


def _not_found(incoming: Incoming) -> Outgoing:
    return Outgoing.json(404, {"Error": {"code": 404, "message": "Resource not found"}})


def _xml_unsupported(incoming: Incoming) -> Outgoing:
    return Outgoing.text(406, "This fake answers JSON only: add .json or Accept: application/json")


def _signature_problem(incoming: Incoming) -> str:
    """Why oauthlib refused a request when no validator check did: the timestamp window,
    missing parameters or, most often, the signature."""
    header = incoming.headers.get("authorization", "")
    if not header.startswith("OAuth "):
        return "parameter_absent"
    params = dict(parse_authorization_header(header))
    stamp = params.get("oauth_timestamp", "")
    if not stamp.isdigit() or "oauth_signature" not in params:
        return "parameter_absent"
    now = int(time.time())
    if abs(now - int(stamp)) > TIMESTAMP_WINDOW_SECONDS:
        window = f"{now - TIMESTAMP_WINDOW_SECONDS}-{now + TIMESTAMP_WINDOW_SECONDS}"
        return f"timestamp_refused,oauth_acceptable_timestamps={window}"
    if params.get("oauth_signature_method") != "HMAC-SHA1":
        return "signature_method_rejected"
    return "signature_invalid"


def _page(message: str) -> str:
    return f"<html><head><title>E*TRADE</title></head><body><p>{message}</p></body></html>"


def _json_number(value: object) -> float:
    # E*TRADE sends plain JSON numbers; the adapter reads them back as Decimals.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
