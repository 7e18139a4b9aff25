"""E*TRADE behind the common adapter interface, over its v1 REST API with OAuth 1.0a.

Account ids here are E*TRADE's `accountIdKey`. The OAuth lifecycle methods change the
connection in memory only (credentials and token timestamps); the control-plane service
that calls them saves and audits.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, time, timedelta
from itertools import batched, islice
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from django.utils import timezone

from brokers.base import (
    MAX_QUOTE_SYMBOLS,
    SYMBOL_PATTERN,
    Account,
    Authorization,
    Balance,
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Order,
    OrderRequest,
    OrderStatus,
    Placement,
    Position,
    Preview,
    Quote,
    Transaction,
)
from brokers.etrade import wire
from brokers.etrade.client import Call, ETradeClient
from brokers.etrade.config import ETradeConfig
from brokers.etrade.errors import Operation

if TYPE_CHECKING:
    from controlplane.models import BrokerConnection

logger = logging.getLogger(__name__)

EASTERN = ZoneInfo("America/New_York")
REQUEST_TOKEN_LIFETIME = timedelta(minutes=5)
CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9]{1,20}$")
MAX_LIST_LIMIT = 500
ORDERS_PAGE_MAX = 100  # List Orders' documented maximum `count`
TRANSACTIONS_PAGE_MAX = 50  # larger counts answer 500
PORTFOLIO_PAGE_SIZE = 50  # the portfolio's maximum `count` is UNCONFIRMED
MAX_PAGES = 100  # a bound on any paging loop, whatever E*TRADE's markers say
# How far back find_order_by_client_order_id looks: a lost placement is recent.
RECENT_ORDERS_SCANNED = 300
TRANSACTION_HISTORY = timedelta(days=730)
# Reading an answer fails this way when its shape is not what the sources describe.
UNREADABLE = (KeyError, TypeError, ValueError, AttributeError)


class ETradeBroker(BrokerAdapter):
    key = "etrade"
    label = "E*TRADE"

    def __init__(self, connection: BrokerConnection) -> None:
        super().__init__(connection)
        self._cached_client: tuple[tuple[ETradeConfig, str], ETradeClient] | None = None

    # ---- Connection lifecycle ----------------------------------------------------------

    def start_authorization(self) -> Authorization:
        client = self._consumer_client()
        answer = client.fetch_request_token()
        self.connection.set_credentials(
            {
                "request_token": answer["oauth_token"],
                "request_token_secret": answer["oauth_token_secret"],
            }
        )
        # Not requests-oauthlib's authorization_url(): E*TRADE wants key= and token=.
        query = urlencode({"key": client.config.consumer_key, "token": answer["oauth_token"]})
        return Authorization(
            authorize_url=f"{client.config.authorize_url}?{query}",
            expires_at=timezone.now() + REQUEST_TOKEN_LIFETIME,
        )

    def complete_authorization(self, verifier: str) -> None:
        pending = self.connection.get_credentials()
        request_token = pending.get("request_token")
        if not request_token:
            raise BrokerError(
                BrokerErrorCode.AUTH_EXPIRED, "no E*TRADE authorization is in progress; start again"
            )
        code = verifier.strip()
        if not code:
            raise BrokerError(BrokerErrorCode.REJECTED, "the E*TRADE verification code is empty")
        try:
            answer = self._consumer_client().fetch_access_token(
                request_token, pending.get("request_token_secret", ""), code
            )
        except BrokerError as exc:
            if exc.code != BrokerErrorCode.AUTH_EXPIRED:
                raise
            raise BrokerError(
                BrokerErrorCode.AUTH_EXPIRED,
                "E*TRADE refused the verification code, or the request (valid 5 minutes) "
                f"expired; start again ({exc.broker_message})",
            ) from exc
        now = timezone.now()
        self.connection.set_credentials(
            {
                "access_token": answer["oauth_token"],
                "access_token_secret": answer["oauth_token_secret"],
            }
        )
        self.connection.token_issued_at = now
        self.connection.token_renewed_at = now
        self.connection.token_last_used_at = now
        self.connection.token_expires_at = next_eastern_midnight(now)

    def renew(self) -> None:
        """Reactivates a token idle for 2 hours; nothing revives one past midnight ET."""
        try:
            self._client().renew_access_token()
        except BrokerError as exc:
            if exc.code != BrokerErrorCode.AUTH_EXPIRED:
                raise
            raise BrokerError(
                BrokerErrorCode.AUTH_EXPIRED,
                f"E*TRADE would not renew the access token; log in again ({exc.broker_message})",
            ) from exc
        now = timezone.now()
        self.connection.token_renewed_at = now
        self.connection.token_last_used_at = now

    def revoke(self) -> None:
        if self.connection.get_credentials().get("access_token"):
            try:
                self._client().revoke_access_token()
            except BrokerError as exc:
                # A token E*TRADE no longer accepts is already as good as revoked.
                if exc.code != BrokerErrorCode.AUTH_EXPIRED:
                    raise
        self.connection.clear_credentials()

    # ---- Accounts ----------------------------------------------------------------------

    def list_accounts(self) -> list[Account]:
        body = self._client().get("/v1/accounts/list.json", Operation.ACCOUNTS)
        if body is None:  # 204: no accounts
            return []
        with _reading("the account list"):
            listed = wire.items(body["AccountListResponse"]["Accounts"].get("Account"))
            # A closed account can neither be read nor traded.
            return [wire.account(each) for each in listed if wire.is_open_account(each)]

    def get_balance(self, account_id: str) -> Balance:
        body = self._client().get(
            f"{_account_path(account_id)}/balance.json",
            Operation.ACCOUNTS,
            {"instType": "BROKERAGE", "realTimeNAV": "true"},
        )
        with _reading("the balance"):
            return wire.balance(account_id, body["BalanceResponse"], timezone.now())

    def get_positions(self, account_id: str) -> list[Position]:
        path = f"{_account_path(account_id)}/portfolio.json"
        positions: list[Position] = []
        page = 1
        for _ in range(MAX_PAGES):
            body = self._client().get(
                path,
                Operation.ACCOUNTS,
                {"count": PORTFOLIO_PAGE_SIZE, "pageNumber": page, "view": "QUICK"},
            )
            if body is None:  # 204: no positions
                break
            with _reading("the portfolio"):
                portfolios = wire.items(body["PortfolioResponse"].get("AccountPortfolio"))
                listed = [p for each in portfolios for p in wire.items(each.get("Position"))]
                positions += [wire.position(each) for each in listed]
                following = _next_page(portfolios, page)
            if following is None or not listed:
                break
            page = following
        return positions

    # ---- Quotes ------------------------------------------------------------------------

    def get_quotes(self, symbols: list[str]) -> list[Quote]:
        wanted = _distinct_symbols(symbols)
        if not 1 <= len(wanted) <= MAX_QUOTE_SYMBOLS:
            raise BrokerError(
                BrokerErrorCode.INVALID_ORDER,
                f"ask for 1 to {MAX_QUOTE_SYMBOLS} symbols at a time, not {len(wanted)}",
            )
        return self.quote_symbols(wanted)

    def quote_symbols(self, symbols: Sequence[str]) -> list[Quote]:
        """Quotes for any number of symbols, in the order asked, 25 to a call: E*TRADE's
        limit without overrideSymbolCount. INVALID_SYMBOL names every unknown one."""
        wanted = _distinct_symbols(symbols)
        malformed = [symbol for symbol in wanted if not SYMBOL_PATTERN.match(symbol)]
        if malformed:
            raise BrokerError(
                BrokerErrorCode.INVALID_SYMBOL, f"not a valid symbol: {', '.join(malformed)}"
            )
        found: dict[str, Quote] = {}
        notes: list[str] = []
        now = timezone.now()
        for batch in batched(wanted, MAX_QUOTE_SYMBOLS):
            body = self._client().get(
                f"/v1/market/quote/{quote(','.join(batch), safe=',')}.json",
                Operation.MARKET,
                {"detailFlag": "ALL"},
            )
            with _reading("the quotes"):
                answer = (body or {}).get("QuoteResponse") or {}
                for each in wire.items(answer.get("QuoteData")):
                    quoted = wire.quote(each, now)
                    found[quoted.symbol] = quoted
                # Unknown symbols come back as messages beside the valid quotes, not as
                # an HTTP error; their code and text are UNCONFIRMED, so the symbols
                # missing from the answer are what count.
                notes += wire.message_texts(answer)
        missing = [symbol for symbol in wanted if symbol not in found]
        if missing:
            said = f" (E*TRADE: {'; '.join(notes)})" if notes else ""
            raise BrokerError(
                BrokerErrorCode.INVALID_SYMBOL,
                f"unknown symbol{'s' if len(missing) > 1 else ''}: {', '.join(missing)}{said}",
            )
        return [found[symbol] for symbol in wanted]

    # ---- Orders ------------------------------------------------------------------------

    def list_orders(
        self, account_id: str, *, status: OrderStatus | None = None, limit: int = 50
    ) -> list[Order]:
        limit = _clamp(limit)
        params: dict[str, str | int] = {"count": min(limit, ORDERS_PAGE_MAX)}
        if status is not None:
            params["status"] = wire.STATUS_FILTERS[status]
        found: list[Order] = []
        for raw in self._order_pages(account_id, params):
            try:
                each = wire.order(raw)
            except UNREADABLE as exc:
                # E.g. a mutual fund exchange: not an order this interface can describe, and
                # no reason to hide every other order.
                logger.warning("skipping an E*TRADE order that cannot be read: %r", exc)
                continue
            if status is None or each.status == status:
                found.append(each)
                if len(found) >= limit:
                    break
        return found

    def get_order(self, account_id: str, order_id: str) -> Order:
        number = _order_number(order_id)
        body = self._client().get(
            f"{_account_path(account_id)}/orders/{number}.json", Operation.ORDER_LOOKUP
        )
        # The detail answer's wrapper is UNCONFIRMED: take the orders of whatever wraps them.
        with _reading("the order"):
            wrappers = [each for each in (body or {}).values() if isinstance(each, Mapping)]
            for raw in (raw for each in wrappers for raw in wire.items(each.get("Order"))):
                if wire.digits(raw.get("orderId")) == number:
                    return wire.order(raw)
        raise BrokerError(BrokerErrorCode.ORDER_NOT_FOUND, f"no order {order_id} in this account")

    def find_order_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        """Scans the most recent orders. UNSUPPORTED when E*TRADE's order list does not carry
        client order ids (UNCONFIRMED whether it does), as then absence proves nothing."""
        unlabelled = False
        recent = islice(
            self._order_pages(account_id, {"count": ORDERS_PAGE_MAX}), RECENT_ORDERS_SCANNED
        )
        for raw in recent:
            labelled = wire.client_order_id_of(raw)
            if labelled is None:
                unlabelled = True
            elif labelled == client_order_id:
                with _reading("the order list"):
                    return wire.order(raw)
        if unlabelled:
            raise BrokerError(
                BrokerErrorCode.UNSUPPORTED,
                "E*TRADE's order list does not show client order ids; find the order by its "
                "details instead",
            )
        return None

    def preview_order(self, account_id: str, request: OrderRequest) -> Preview:
        _check(request)
        # The interface names the client order id only at placement, so a preview gets a
        # throwaway one; place_order previews again under the real one.
        return self._preview(account_id, request, secrets.token_hex(10))

    def place_order(
        self, account_id: str, request: OrderRequest, client_order_id: str, preview: Preview
    ) -> Placement:
        """Previews again, under `client_order_id`, and places with that preview's id.

        E*TRADE binds a previewId to the clientOrderId it was previewed with and wants the
        same one on place; `preview` was made before the client order id was known. The
        fresh preview also spares us guessing how long a previewId lives (UNCONFIRMED)."""
        _check(request)
        if not CLIENT_ORDER_ID.match(client_order_id):
            raise BrokerError(
                BrokerErrorCode.INVALID_ORDER, "client_order_id must be 1 to 20 letters or digits"
            )
        try:
            fresh = self._preview(account_id, request, client_order_id)
            answer = self._client().send(
                "POST",
                f"{_account_path(account_id)}/orders/place.json",
                wire.order_request_body(
                    "PlaceOrderRequest", request, client_order_id, fresh.preview_id
                ),
                Operation.ORDER_ENTRY,
                Call.WRITE,
            )
        except BrokerError as exc:
            # E*TRADE refuses a reused clientOrderId (in words no source shows): if the id
            # is already on an order, that order is the answer.
            if exc.code in (BrokerErrorCode.REJECTED, BrokerErrorCode.INVALID_ORDER):
                existing = self._placed_already(account_id, client_order_id)
                if existing is not None:
                    return Placement(order_id=existing.order_id, status=existing.status)
            raise
        try:
            order_id = wire.placed_order_id(answer)
        except UNREADABLE:
            existing = self._placed_already(account_id, client_order_id)
            if existing is not None:
                return Placement(order_id=existing.order_id, status=existing.status)
            raise BrokerError(
                BrokerErrorCode.OUTCOME_UNKNOWN,
                "E*TRADE accepted the order but its answer carried no order id",
            ) from None
        return Placement(order_id=order_id, status=self._status_after_placing(account_id, order_id))

    def cancel_order(self, account_id: str, order_id: str) -> Order:
        current = self.get_order(account_id, order_id)
        if current.status.is_final:
            raise BrokerError(
                BrokerErrorCode.ORDER_NOT_CANCELLABLE,
                f"order {order_id} is already {current.status.value.lower()}",
            )
        self._client().send(
            "PUT",
            f"{_account_path(account_id)}/orders/cancel.json",
            {"CancelOrderRequest": {"orderId": int(current.order_id)}},
            Operation.ORDER_LOOKUP,
            Call.WRITE,
        )
        try:
            return self.get_order(account_id, current.order_id)
        except BrokerError:
            # The cancel was accepted; only the follow-up read failed.
            return current

    # ---- Activity ----------------------------------------------------------------------

    def list_transactions(
        self,
        account_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 50,
    ) -> list[Transaction]:
        limit = _clamp(limit)
        now = timezone.now()
        params: dict[str, str | int] = {"sortOrder": "DESC", "count": TRANSACTIONS_PAGE_MAX}
        if start is not None or end is not None:
            if start is not None and end is not None and start >= end:
                return []
            # Whole days in US Eastern, both or neither; the exact bounds are applied here.
            params["startDate"] = _day(start or min(end or now, now) - TRANSACTION_HISTORY)
            params["endDate"] = _day(min(end or now, now))
        path = f"{_account_path(account_id)}/transactions.json"
        found: list[Transaction] = []
        for _ in range(MAX_PAGES):
            body = self._client().get(path, Operation.ACCOUNTS, params)
            if body is None:  # 204: no transactions
                break
            with _reading("the transactions"):
                answer = body["TransactionListResponse"]
                for raw in wire.items(answer.get("Transaction")):
                    entry = wire.transaction(raw)
                    if (start is None or entry.time >= start) and (end is None or entry.time < end):
                        found.append(entry)
                marker = wire.text(answer.get("marker"))
                more = str(answer.get("moreTransactions", "")).lower() == "true"
            if len(found) >= limit or not more or not marker:
                break
            params = {**params, "marker": marker}
        return wire.newest_first(found)[:limit]

    # ---- Helpers -----------------------------------------------------------------------

    def _consumer_client(self) -> ETradeClient:
        return ETradeClient(ETradeConfig.for_connection(self.connection))

    def _client(self) -> ETradeClient:
        """The client signing with the connection's access token; one per token, so its
        connections are kept alive between calls."""
        credentials = self.connection.get_credentials()
        token = credentials.get("access_token")
        if not token:
            raise BrokerError(
                BrokerErrorCode.AUTH_EXPIRED,
                "this E*TRADE connection has no access token; authorize it first",
            )
        config = ETradeConfig.for_connection(self.connection)
        cache_key = (config, token)
        if self._cached_client is None or self._cached_client[0] != cache_key:
            client = ETradeClient(
                config,
                token=token,
                token_secret=credentials.get("access_token_secret", ""),
                on_token_used=self._note_token_used,
            )
            self._cached_client = (cache_key, client)
        return self._cached_client[1]

    def _note_token_used(self) -> None:
        # E*TRADE idles a token out after 2 hours without requests: the service can renew
        # in time by watching this (kept in memory like every other credential change).
        self.connection.token_last_used_at = timezone.now()

    def _preview(self, account_id: str, request: OrderRequest, client_order_id: str) -> Preview:
        answer = self._client().send(
            "POST",
            f"{_account_path(account_id)}/orders/preview.json",
            wire.order_request_body("PreviewOrderRequest", request, client_order_id),
            Operation.ORDER_ENTRY,
            Call.ONCE,
        )
        with _reading("the preview"):
            return wire.preview(answer, request)

    def _order_pages(
        self, account_id: str, params: Mapping[str, str | int]
    ) -> Iterator[Mapping[str, Any]]:
        """Raw orders, newest first, following E*TRADE's markers page by page."""
        path = f"{_account_path(account_id)}/orders.json"
        query = dict(params)
        for _ in range(MAX_PAGES):
            body = self._client().get(path, Operation.ACCOUNTS, query)
            if body is None:  # 204: no (more) orders
                return
            with _reading("the order list"):
                answer = body["OrdersResponse"]
                page = wire.items(answer.get("Order"))
                marker = wire.text(answer.get("marker"))
            yield from page
            if not marker or not page:
                return
            query["marker"] = marker

    def _placed_already(self, account_id: str, client_order_id: str) -> Order | None:
        """The order already carrying this client order id, if one can be found."""
        try:
            return self.find_order_by_client_order_id(account_id, client_order_id)
        except BrokerError:
            return None

    def _status_after_placing(self, account_id: str, order_id: str) -> OrderStatus:
        # The place answer has no status; a market order may already have filled.
        try:
            return self.get_order(account_id, order_id).status
        except BrokerError:
            return OrderStatus.OPEN  # placed, and not known to be anything else


def next_eastern_midnight(moment: datetime) -> datetime:
    """When an access token issued at `moment` dies: the end of that day in US Eastern."""
    day = moment.astimezone(EASTERN).date() + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=EASTERN)


@contextmanager
def _reading(what: str) -> Iterator[None]:
    try:
        yield
    except UNREADABLE as exc:
        raise BrokerError(
            BrokerErrorCode.UNAVAILABLE,
            f"E*TRADE's answer for {what} was not in the expected shape ({exc!r})",
            transient=False,
        ) from exc


def _account_path(account_id: str) -> str:
    if not account_id or len(account_id) > 64:
        raise BrokerError(BrokerErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    return f"/v1/accounts/{quote(account_id, safe='')}"


def _order_number(order_id: str) -> str:
    """E*TRADE order ids are integers; anything else cannot be an order here."""
    if not order_id.isdigit() or len(order_id) > 18:
        raise BrokerError(BrokerErrorCode.ORDER_NOT_FOUND, f"no order {order_id!r}")
    return str(int(order_id))


def _check(request: OrderRequest) -> None:
    problems = request.problems()
    if problems:
        raise BrokerError(BrokerErrorCode.INVALID_ORDER, "; ".join(problems))


def _distinct_symbols(symbols: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(symbol.strip().upper() for symbol in symbols))


def _clamp(limit: int) -> int:
    return max(1, min(limit, MAX_LIST_LIMIT))


def _day(moment: datetime) -> str:
    return moment.astimezone(EASTERN).strftime("%m%d%Y")


def _next_page(portfolios: list[Mapping[str, Any]], page: int) -> int | None:
    """The next portfolio page, if any. The real capture says `totalPages`; the v1 model says
    `totalNoOfPages` and `nextPageNo` (UNCONFIRMED), so any of them is followed."""
    for each in portfolios:
        following = each.get("nextPageNo")
        if following not in (None, "", 0) and int(following) > page:
            return int(following)
        total = each.get("totalPages", each.get("totalNoOfPages"))
        if total not in (None, "") and int(total) > page:
            return page + 1
    return None
