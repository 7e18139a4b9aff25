"""The fake's brokerage: users, accounts, positions, orders, transactions and a market with
deterministic prices, answering in E*TRADE's JSON shapes.

Unlike E*TRADE's sandbox (canned answers) this keeps state: placed orders show up in List
Orders, fills move cash and positions, cancels change status. The server serializes calls,
so nothing here locks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")
ZERO = Decimal(0)
STARTING_CASH = Decimal("100000.00")
PREVIEW_LIFETIME = timedelta(minutes=10)  # how long E*TRADE keeps one is UNCONFIRMED
CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9]{1,20}$")

# ---- Errors --------------------------------------------------------------------------------
# Codes and texts from sources (reference §6.3), then placeholders: no source gave E*TRADE's
# code or wording for these (reference §6.4), so they are invented, numbered 99xx so no one
# mistakes them for real ones. The adapter must not key on any 99xx number.
ACCOUNT_NOT_OWNED = (100, "Account key does not belong to user.")
PREVIEW_LINK_LOST = (
    101,
    "For your protection, we have timed out your original order request. If you would like "
    "to place this order, please resubmit it now.",
)
INVALID_ACCOUNT_KEY = (102, "Please enter valid account key.")
INVALID_INSTITUTION = (7002, "Invalid institution type")
NOT_CANCELLABLE = (
    5001,
    "This order is currently being executed or rejected. It cannot be cancelled.",
)
SHARES_UNAVAILABLE = (
    1037,
    "We did not find enough available shares of this security in your account.",
)
PLACEHOLDER_INSUFFICIENT_FUNDS = (
    9901,
    "Your order exceeds your available buying power of ${buying_power}.",
)
PLACEHOLDER_MARKET_CLOSED = (9902, "The market is currently closed for this order.")
PLACEHOLDER_INVALID_SYMBOL = (9903, "Invalid symbol: {symbol}")
PLACEHOLDER_DUPLICATE_CLIENT_ORDER_ID = (
    9904,
    "The clientOrderId {client_order_id} has already been used on this account.",
)
PLACEHOLDER_INVALID_ORDER = (9905, "Invalid order request: {reason}")
PLACEHOLDER_ORDER_NOT_FOUND = (9906, "Invalid order number {order_id}.")
PLACEHOLDER_TOO_MANY_SYMBOLS = (9907, "Too many symbols: at most {limit} per request.")
PLACEHOLDER_BAD_PARAMETER = (9908, "Invalid value for parameter {name}.")
QUOTE_INVALID_SYMBOL_CODE = 10033  # placeholder, as in the reference's example


class ETradeError(Exception):
    """An answer with E*TRADE's `{"Error": {"code", "message"}}` body."""

    def __init__(self, status: int, error: tuple[int, str], **details: object) -> None:
        self.status = status
        self.code = error[0]
        self.message = error[1].format(**details)
        super().__init__(f"{status} {self.code} {self.message}")

    def body(self) -> dict[str, Any]:
        return {"Error": {"code": self.code, "message": self.message}}


# ---- The market ----------------------------------------------------------------------------

SECURITIES = {
    "AAPL": "APPLE INC COM",
    "ABBV": "ABBVIE INC COM",
    "ADBE": "ADOBE INC COM",
    "AMD": "ADVANCED MICRO DEVICES INC COM",
    "AMZN": "AMAZON COM INC COM",
    "BA": "BOEING CO COM",
    "BRK.B": "BERKSHIRE HATHAWAY INC DEL CL B NEW",
    "CAT": "CATERPILLAR INC COM",
    "COST": "COSTCO WHSL CORP NEW COM",
    "CRM": "SALESFORCE INC COM",
    "CSCO": "CISCO SYS INC COM",
    "CVX": "CHEVRON CORP NEW COM",
    "DIS": "DISNEY WALT CO COM",
    "F": "FORD MTR CO DEL COM",
    "GE": "GE AEROSPACE COM NEW",
    "GLD": "SPDR GOLD TR GOLD SHS",
    "GM": "GENERAL MTRS CO COM",
    "GOOG": "ALPHABET INC CAP STK CL C",
    "GOOGL": "ALPHABET INC CAP STK CL A",
    "HD": "HOME DEPOT INC COM",
    "IBM": "INTERNATIONAL BUSINESS MACHS COM",
    "INTC": "INTEL CORP COM",
    "JNJ": "JOHNSON & JOHNSON COM",
    "JPM": "JPMORGAN CHASE & CO COM",
    "KO": "COCA COLA CO COM",
    "MA": "MASTERCARD INCORPORATED CL A",
    "MCD": "MCDONALDS CORP COM",
    "META": "META PLATFORMS INC CL A",
    "MRK": "MERCK & CO INC COM",
    "MSFT": "MICROSOFT CORP COM",
    "NFLX": "NETFLIX INC COM",
    "NKE": "NIKE INC CL B",
    "NVDA": "NVIDIA CORPORATION COM",
    "ORCL": "ORACLE CORP COM",
    "PEP": "PEPSICO INC COM",
    "PFE": "PFIZER INC COM",
    "PG": "PROCTER AND GAMBLE CO COM",
    "QCOM": "QUALCOMM INC COM",
    "QQQ": "INVESCO QQQ TR UNIT SER 1",
    "SBUX": "STARBUCKS CORP COM",
    "SPY": "SPDR S&P 500 ETF TR TR UNIT",
    "T": "AT&T INC COM",
    "TSLA": "TESLA INC COM",
    "TXN": "TEXAS INSTRS INC COM",
    "V": "VISA INC COM CL A",
    "VZ": "VERIZON COMMUNICATIONS INC COM",
    "WMT": "WALMART INC COM",
    "XOM": "EXXON MOBIL CORP COM",
}
MAX_QUOTE_SYMBOLS = 25
MAX_QUOTE_SYMBOLS_OVERRIDDEN = 50


@dataclass(frozen=True)
class Price:
    last: Decimal
    bid: Decimal
    ask: Decimal
    change: Decimal
    volume: int

    @property
    def previous_close(self) -> Decimal:
        return self.last - self.change


def _digest(symbol: str) -> int:
    return int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big")


def deterministic_price(symbol: str, last: Decimal | None = None) -> Price:
    """The same quote for a symbol every time: $20.00 to $399.99, a spread of 1-4 cents."""
    digest = _digest(symbol)
    if last is None:
        last = Decimal(2000 + digest % 38000) * CENT
    spread = CENT * (1 + digest % 4)
    change = Decimal((digest >> 12) % 400 - 200) * CENT
    return Price(
        last=last,
        bid=last - spread,
        ask=last + spread,
        change=change,
        volume=1_000_000 + (digest >> 24) % 50_000_000,
    )


# ---- State ---------------------------------------------------------------------------------


@dataclass
class Holding:
    symbol: str
    quantity: int  # negative when short
    average_cost: Decimal
    position_id: int
    acquired: datetime


@dataclass
class FakeOrder:
    order_id: int
    client_order_id: str
    entry: OrderEntry
    placed: datetime
    reserve_price: Decimal  # what an open buy holds back from buying power, per share
    status: str = "OPEN"
    executed: datetime | None = None
    filled: int = 0
    average_price: Decimal | None = None


@dataclass
class FakeTransaction:
    transaction_id: str
    at: datetime
    kind: str
    amount: Decimal
    description: str
    symbol: str = ""
    quantity: int = 0
    price: Decimal = ZERO
    order_id: int = 0


@dataclass
class FakeAccount:
    owner: str
    account_id: str
    key: str
    name: str
    mode: str  # CASH or MARGIN
    cash: Decimal
    opened: datetime
    holdings: dict[str, Holding] = field(default_factory=dict)
    orders: dict[int, FakeOrder] = field(default_factory=dict)
    transactions: list[FakeTransaction] = field(default_factory=list)
    next_order_id: int = 1


@dataclass(frozen=True)
class OrderEntry:
    """One equity order as preview and place describe it, normalized for comparison."""

    client_order_id: str
    symbol: str
    action: str
    quantity: int
    price_type: str
    term: str
    session: str
    limit_price: Decimal | None
    stop_price: Decimal | None

    @property
    def is_buy(self) -> bool:
        return self.action in ("BUY", "BUY_TO_COVER")

    def fingerprint(self) -> tuple[object, ...]:
        return (
            self.symbol,
            self.action,
            self.quantity,
            self.price_type,
            self.term,
            self.session,
            self.limit_price,
            self.stop_price,
        )


@dataclass
class PreviewRecord:
    account_key: str
    client_order_id: str
    fingerprint: tuple[object, ...]
    created: datetime
    used: bool = False


class Brokerage:
    def __init__(self, clock: Callable[[], datetime], base_url: Callable[[], str]) -> None:
        self.now = clock
        self._base_url = base_url
        self.market_open = True
        self.prices: dict[str, Decimal] = {}
        self.accounts: dict[str, FakeAccount] = {}  # by accountIdKey
        self.previews: dict[int, PreviewRecord] = {}
        # Server-side page limits tests can lower to make paging happen with few records.
        self.orders_page_cap = 100
        self.portfolio_page_cap = 50
        self.transactions_page_cap = 50
        # Off: List Orders carries no clientOrderId, as in the one real capture.
        self.echo_client_order_id = True
        self._numbers = itertools.count(1)

    # ---- Users and accounts ------------------------------------------------------------

    def accounts_of(self, user: str) -> list[FakeAccount]:
        """The user's accounts, opened (two, funded) the first time the user is seen."""
        owned = [each for each in self.accounts.values() if each.owner == user]
        if not owned:
            owned = [
                self._open_account(user, "Individual Brokerage", "CASH"),
                self._open_account(user, "Margin Trading", "MARGIN"),
            ]
        return owned

    def _open_account(self, user: str, name: str, mode: str) -> FakeAccount:
        now = self.now()
        number = next(self._numbers)
        account = FakeAccount(
            owner=user,
            account_id=str(84120000 + number),
            key=secrets.token_urlsafe(16)[:22],
            name=name,
            mode=mode,
            cash=STARTING_CASH,
            opened=now,
        )
        account.transactions.append(
            FakeTransaction(
                transaction_id=self._transaction_id(now),
                at=now,
                kind="Deposit",
                amount=STARTING_CASH,
                description="ONLINE TRANSFER",
            )
        )
        self.accounts[account.key] = account
        return account

    def account(self, user: str, key: str) -> FakeAccount:
        account = self.accounts.get(key)
        if account is None:
            raise ETradeError(400, INVALID_ACCOUNT_KEY)
        if account.owner != user:
            raise ETradeError(400, ACCOUNT_NOT_OWNED)
        self._settle_cancels(account)
        return account

    def give_position(self, key: str, symbol: str, quantity: int, average_cost: Decimal) -> None:
        """Test seeding: a holding as if bought long ago (no cash moves)."""
        account = self.accounts[key]
        account.holdings[symbol] = Holding(
            symbol, quantity, average_cost, self._position_id(), self.now()
        )

    # ---- Market ------------------------------------------------------------------------

    def price(self, symbol: str) -> Price:
        return deterministic_price(symbol, self.prices.get(symbol))

    def quotes(self, symbols: list[str], params: Mapping[str, str]) -> dict[str, Any]:
        override = params.get("overrideSymbolCount", "").lower() == "true"
        limit = MAX_QUOTE_SYMBOLS_OVERRIDDEN if override else MAX_QUOTE_SYMBOLS
        if len(symbols) > limit:
            # The real answer to too many symbols is UNCONFIRMED.
            raise ETradeError(400, PLACEHOLDER_TOO_MANY_SYMBOLS, limit=limit)
        now = self.now()
        found = [symbol for symbol in symbols if symbol in SECURITIES]
        unknown = [symbol for symbol in symbols if symbol not in SECURITIES]
        answer: dict[str, Any] = {}
        if found:
            answer["QuoteData"] = [self._quote_data(symbol, now) for symbol in found]
        if unknown:
            answer["Messages"] = {
                "Message": [
                    {
                        "description": f"Invalid symbol: {symbol}",
                        "code": QUOTE_INVALID_SYMBOL_CODE,
                        "type": "WARNING",
                    }
                    for symbol in unknown
                ]
            }
        return {"QuoteResponse": answer}

    def _quote_data(self, symbol: str, now: datetime) -> dict[str, Any]:
        price = self.price(symbol)
        seconds = int(now.timestamp())
        name = SECURITIES[symbol]
        return {
            "dateTime": now.astimezone(EASTERN).strftime("%H:%M:%S %Z %m-%d-%Y"),
            "dateTimeUTC": seconds,
            "quoteStatus": "REALTIME" if self.market_open else "CLOSING",
            "ahFlag": "false",
            "hasMiniOptions": False,
            "All": {
                "adjustedFlag": False,
                "ask": price.ask,
                "askSize": 300,
                "bid": price.bid,
                "bidSize": 200,
                "changeClose": price.change,
                "changeClosePercentage": (price.change / price.previous_close * 100).quantize(CENT),
                "companyName": name,
                "high": price.last + price.ask - price.bid,
                "low": price.last - (price.ask - price.bid),
                "lastTrade": price.last,
                "open": price.previous_close,
                "previousClose": price.previous_close,
                "totalVolume": price.volume,
                "primaryExchange": "NSDQ",
                "symbolDescription": name,
                "timeOfLastTrade": seconds,
            },
            "Product": {"symbol": symbol, "securityType": "EQ"},
        }

    # ---- Balances and portfolio --------------------------------------------------------

    def balance(self, account: FakeAccount, params: Mapping[str, str]) -> dict[str, Any]:
        if params.get("instType") != "BROKERAGE":
            raise ETradeError(400, INVALID_INSTITUTION)
        long_value = sum(
            (
                h.quantity * self.price(h.symbol).last
                for h in account.holdings.values()
                if h.quantity > 0
            ),
            start=ZERO,
        )
        short_value = sum(
            (
                h.quantity * self.price(h.symbol).last
                for h in account.holdings.values()
                if h.quantity < 0
            ),
            start=ZERO,
        )
        reserved = self._reserved(account)
        computed: dict[str, Any] = {
            "cashAvailableForInvestment": account.cash - reserved,
            "cashAvailableForWithdrawal": account.cash - reserved,
            "netCash": account.cash,
            "cashBalance": account.cash,
            "settledCashForInvestment": account.cash - reserved,
            "unSettledCashForInvestment": ZERO,
            "cashBuyingPower": account.cash - reserved,
            "accountBalance": account.cash,
            "OpenCalls": {"minEquityCall": 0, "fedCall": 0, "cashCall": 0, "houseCall": 0},
            "RealTimeValues": {
                "totalAccountValue": account.cash + long_value + short_value,
                "netMv": long_value + short_value,
                "netMvLong": long_value,
                "netMvShort": short_value,
            },
        }
        if account.mode == "MARGIN":
            computed["marginBuyingPower"] = self.buying_power(account)
        return {
            "BalanceResponse": {
                "accountId": account.account_id,
                "institutionType": "BROKERAGE",
                "asOfDate": _millis(self.now()),
                "accountType": "INDIVIDUAL",
                "optionLevel": "NO_OPTIONS",
                "accountDescription": account.name.upper(),
                "quoteMode": 6,
                "dayTraderStatus": "NO_PDT",
                "accountMode": account.mode,
                "Cash": {"fundsForOpenOrdersCash": reserved, "moneyMktBalance": ZERO},
                "Computed": computed,
            }
        }

    def buying_power(self, account: FakeAccount) -> Decimal:
        available = account.cash - self._reserved(account)
        return available * 2 if account.mode == "MARGIN" else available

    def _reserved(self, account: FakeAccount) -> Decimal:
        return sum(
            (
                (order.entry.quantity - order.filled) * order.reserve_price
                for order in account.orders.values()
                if order.status in ("OPEN", "CANCEL_REQUESTED") and order.entry.is_buy
            ),
            start=ZERO,
        )

    def portfolio(self, account: FakeAccount, params: Mapping[str, str]) -> dict[str, Any] | None:
        count = _count(params, "count", default=self.portfolio_page_cap, maximum=None)
        page_size = min(count, self.portfolio_page_cap)
        page = _count(params, "pageNumber", default=1, maximum=None)
        holdings = sorted(account.holdings.values(), key=lambda h: h.symbol)
        if not holdings:
            return None
        pages = (len(holdings) + page_size - 1) // page_size
        chosen = holdings[(page - 1) * page_size : page * page_size]
        if not chosen:
            return None
        total_value = sum((abs(h.quantity) * self.price(h.symbol).last for h in holdings), ZERO)
        return {
            "PortfolioResponse": {
                "AccountPortfolio": [
                    {
                        "accountId": account.account_id,
                        # The real capture's name; the v1 model's nextPageNo is not sent.
                        "totalPages": pages,
                        "Position": [self._position(account, h, total_value) for h in chosen],
                    }
                ]
            }
        }

    def _position(self, account: FakeAccount, holding: Holding, total: Decimal) -> dict[str, Any]:
        price = self.price(holding.symbol)
        size = abs(holding.quantity)
        market_value = holding.quantity * price.last
        total_cost = size * holding.average_cost
        gain = market_value - holding.quantity * holding.average_cost
        base = f"{self._base_url()}/v1"
        return {
            "positionId": holding.position_id,
            "symbolDescription": holding.symbol,
            "dateAcquired": _millis(holding.acquired),
            "pricePaid": holding.average_cost,
            "commissions": ZERO,
            "otherFees": ZERO,
            "quantity": holding.quantity,
            "positionIndicator": "TYPE2" if holding.quantity > 0 else "TYPE5",
            "positionType": "LONG" if holding.quantity > 0 else "SHORT",
            "daysGain": holding.quantity * price.change,
            "daysGainPct": (price.change / price.previous_close * 100).quantize(CENT),
            "marketValue": market_value,
            "totalCost": total_cost,
            "totalGain": gain,
            "totalGainPct": (gain / total_cost * 100).quantize(CENT) if total_cost else ZERO,
            "pctOfPortfolio": (abs(market_value) / total * 100).quantize(CENT) if total else ZERO,
            "costPerShare": holding.average_cost,
            "todayCommissions": 0,
            "todayFees": 0,
            "todayPricePaid": 0,
            "todayQuantity": 0,
            "lotsDetails": f"{base}/accounts/{account.key}/portfolio/{holding.position_id}",
            "quoteDetails": f"{base}/market/quote/{holding.symbol}",
            "Product": {
                "symbol": holding.symbol,
                "securityType": "EQ",
                "expiryYear": 0,
                "expiryMonth": 0,
                "expiryDay": 0,
                "strikePrice": 0,
            },
            "Quick": {
                "lastTrade": price.last,
                "lastTradeTime": int(self.now().timestamp()),
                "change": price.change,
                "changePct": (price.change / price.previous_close * 100).quantize(CENT),
                "volume": price.volume,
                "quoteStatus": "REALTIME",
            },
        }

    # ---- Orders: listing ---------------------------------------------------------------

    def list_orders(self, account: FakeAccount, params: Mapping[str, str]) -> dict[str, Any] | None:
        # Bad paging counts answer 500, as observed by a client author.
        count = _count(params, "count", default=25, maximum=100, status_when_too_big=500)
        page_size = min(count, self.orders_page_cap)
        orders = sorted(account.orders.values(), key=lambda o: o.order_id, reverse=True)
        status = params.get("status")
        if status is not None:
            if status not in LIST_STATUS_FILTERS:
                raise ETradeError(400, PLACEHOLDER_BAD_PARAMETER, name="status")
            orders = [order for order in orders if order.status == status]
        if "marker" in params:
            after = _decode_marker(params["marker"])
            orders = [order for order in orders if order.order_id < after]
        chosen = orders[:page_size]
        if not chosen:
            return None
        answer: dict[str, Any] = {"Order": [self._order(account, each) for each in chosen]}
        if len(orders) > page_size:
            last = chosen[-1]
            marker = _encode_marker([_millis(last.placed), last.order_id])
            answer = {
                "marker": marker,
                "next": f"{self._orders_url(account)}?marker={marker}",
                **answer,
            }
        return {"OrdersResponse": answer}

    def order_detail(self, account: FakeAccount, order_id: str) -> dict[str, Any]:
        order = self._find_order(account, order_id)
        # The detail answer's wrapper is UNCONFIRMED; List Orders' shape is used.
        return {"OrdersResponse": {"Order": [self._order(account, order)]}}

    def _find_order(self, account: FakeAccount, order_id: object) -> FakeOrder:
        try:
            number = int(str(order_id))
        except ValueError:
            number = -1
        order = account.orders.get(number)
        if order is None:
            raise ETradeError(400, PLACEHOLDER_ORDER_NOT_FOUND, order_id=order_id)
        return order

    def _orders_url(self, account: FakeAccount) -> str:
        return f"{self._base_url()}/v1/accounts/{account.key}/orders"

    def _order(self, account: FakeAccount, order: FakeOrder) -> dict[str, Any]:
        entry = order.entry
        instrument: dict[str, Any] = {
            "symbolDescription": SECURITIES.get(entry.symbol, entry.symbol),
            "orderAction": entry.action,
            "quantityType": "QUANTITY",
            "orderedQuantity": entry.quantity,
            "filledQuantity": Decimal(order.filled),
            "estimatedCommission": ZERO,
            "estimatedFees": ZERO,
            "Product": {"symbol": entry.symbol, "securityType": "EQ"},
        }
        if order.filled and order.average_price is not None:
            instrument["averageExecutionPrice"] = order.average_price
        detail: dict[str, Any] = {
            "placedTime": _millis(order.placed),
            "orderValue": entry.quantity * order.reserve_price,
            "status": order.status,
            "orderTerm": entry.term,
            "priceType": entry.price_type,
            "limitPrice": entry.limit_price or 0,
            "stopPrice": entry.stop_price or 0,
            "marketSession": entry.session,
            "allOrNone": False,
            "netPrice": 0,
            "netBid": 0,
            "netAsk": 0,
            "gcd": 0,
            "ratio": "",
            "Instrument": [instrument],
        }
        if order.executed is not None:
            detail["executedTime"] = _millis(order.executed)
        answer: dict[str, Any] = {
            "orderId": order.order_id,
            "details": f"{self._orders_url(account)}/{order.order_id}",
            "orderType": "EQ",
            "OrderDetail": [detail],
        }
        if self.echo_client_order_id:
            # UNCONFIRMED: no real List Orders capture shows clientOrderId (the v1 model has
            # it on preview and place answers); echoing it lets reconciliation by client
            # order id be exercised.
            answer["clientOrderId"] = order.client_order_id
        return answer

    # ---- Orders: preview, place, cancel ------------------------------------------------

    def preview(self, account: FakeAccount, body: Mapping[str, Any]) -> dict[str, Any]:
        request = _wrapped(body, "PreviewOrderRequest")
        entry = parse_entry(request)
        self._check_entry(account, entry)
        now = self.now()
        preview_id = 270011220000 + next(self._numbers)
        self.previews[preview_id] = PreviewRecord(
            account.key, entry.client_order_id, entry.fingerprint(), now
        )
        return {
            "PreviewOrderResponse": {
                **self._order_answer(account, entry, now, "previewTime"),
                "PreviewIds": [{"previewId": preview_id}],
            }
        }

    def place(self, account: FakeAccount, body: Mapping[str, Any]) -> dict[str, Any]:
        request = _wrapped(body, "PlaceOrderRequest")
        entry = parse_entry(request)
        now = self.now()
        record = self._preview_for(account, entry, request)
        self._check_entry(account, entry)
        record.used = True
        order = FakeOrder(
            order_id=account.next_order_id,
            client_order_id=entry.client_order_id,
            entry=entry,
            placed=now,
            reserve_price=self._order_price(entry),
        )
        account.next_order_id += 1
        account.orders[order.order_id] = order
        self._work(account, order)
        answer = self._order_answer(account, entry, now, "placedTime")
        answer["Order"][0]["messages"] = {
            "Message": [
                {
                    "description": "200|Your order was successfully entered during market hours.",
                    "code": 1026,
                    "type": "WARNING",
                }
            ]
        }
        return {"PlaceOrderResponse": {**answer, "OrderIds": [{"orderId": order.order_id}]}}

    def cancel(self, account: FakeAccount, body: Mapping[str, Any]) -> dict[str, Any]:
        request = _wrapped(body, "CancelOrderRequest")
        order = self._find_order(account, request.get("orderId"))
        if order.status != "OPEN":
            raise ETradeError(400, NOT_CANCELLABLE)
        # Confirmed as CANCELLED on the next read of the account, as E*TRADE moves from
        # CANCEL_REQUESTED to CANCELLED shortly after.
        order.status = "CANCEL_REQUESTED"
        return {
            "CancelOrderResponse": {
                "accountId": account.account_id,
                "orderId": order.order_id,
                "cancelTime": _millis(self.now()),
                "Messages": {
                    "Message": [
                        {
                            "description": (
                                "200|Your request to cancel your order is being processed."
                            ),
                            "code": 5011,
                            "type": "WARNING",
                        }
                    ]
                },
            }
        }

    def _settle_cancels(self, account: FakeAccount) -> None:
        for order in account.orders.values():
            if order.status == "CANCEL_REQUESTED":
                order.status = "CANCELLED"
                order.executed = self.now()

    def _preview_for(
        self, account: FakeAccount, entry: OrderEntry, request: Mapping[str, Any]
    ) -> PreviewRecord:
        """The unexpired, unused preview this place names, for this account, client order id
        and order; E*TRADE answers 101 otherwise."""
        ids = _items(request.get("PreviewIds"))
        record = None
        if len(ids) == 1:
            try:
                record = self.previews.get(int(str(ids[0].get("previewId"))))
            except ValueError:
                record = None
        if (
            record is None
            or record.used
            or record.account_key != account.key
            or record.client_order_id != entry.client_order_id
            or record.fingerprint != entry.fingerprint()
            or self.now() - record.created > PREVIEW_LIFETIME
        ):
            raise ETradeError(400, PREVIEW_LINK_LOST)
        return record

    def _check_entry(self, account: FakeAccount, entry: OrderEntry) -> None:
        """What E*TRADE refuses at preview and again at place."""
        if entry.symbol not in SECURITIES:
            raise ETradeError(400, PLACEHOLDER_INVALID_SYMBOL, symbol=entry.symbol)
        if not self.market_open:
            raise ETradeError(400, PLACEHOLDER_MARKET_CLOSED)
        if any(o.client_order_id == entry.client_order_id for o in account.orders.values()):
            raise ETradeError(
                400, PLACEHOLDER_DUPLICATE_CLIENT_ORDER_ID, client_order_id=entry.client_order_id
            )
        held = account.holdings.get(entry.symbol)
        quantity_held = held.quantity if held else 0
        if entry.action == "SELL":
            committed = self._committed(account, entry.symbol, "SELL")
            if entry.quantity > quantity_held - committed:
                raise ETradeError(400, SHARES_UNAVAILABLE)
        elif entry.action == "BUY_TO_COVER":
            committed = self._committed(account, entry.symbol, "BUY_TO_COVER")
            if entry.quantity > -quantity_held - committed:
                raise ETradeError(400, SHARES_UNAVAILABLE)
        elif entry.action == "SELL_SHORT" and (account.mode != "MARGIN" or quantity_held > 0):
            raise ETradeError(
                400,
                PLACEHOLDER_INVALID_ORDER,
                reason="short sales need a margin account and no long shares",
            )
        if entry.action in ("BUY", "SELL_SHORT"):
            cost = entry.quantity * self._order_price(entry)
            available = self.buying_power(account)
            if cost > available:
                raise ETradeError(
                    400, PLACEHOLDER_INSUFFICIENT_FUNDS, buying_power=available.quantize(CENT)
                )

    def _committed(self, account: FakeAccount, symbol: str, action: str) -> int:
        return sum(
            order.entry.quantity - order.filled
            for order in account.orders.values()
            if order.status in ("OPEN", "CANCEL_REQUESTED")
            and order.entry.symbol == symbol
            and order.entry.action == action
        )

    def _order_price(self, entry: OrderEntry) -> Decimal:
        """Per share: the limit if there is one, else where a market order would fill."""
        if entry.limit_price is not None:
            return entry.limit_price
        price = self.price(entry.symbol)
        return price.ask if entry.is_buy else price.bid

    def _order_answer(
        self, account: FakeAccount, entry: OrderEntry, now: datetime, time_field: str
    ) -> dict[str, Any]:
        value = entry.quantity * self._order_price(entry)
        # A sell's value and total are negative, as in a real capture.
        signed = value if entry.is_buy else -value
        return {
            "orderType": "EQ",
            "totalOrderValue": signed,
            "totalCommission": ZERO,
            time_field: _millis(now),
            "dstFlag": _is_dst(now),
            "accountId": account.account_id,
            "optionLevelCd": 1,
            "marginLevelCd": (
                "MARGIN_TRADING_ALLOWED"
                if account.mode == "MARGIN"
                else "MARGIN_TRADING_NOT_ALLOWED"
            ),
            "clientOrderId": entry.client_order_id,
            "Order": [
                {
                    "orderTerm": entry.term,
                    "priceType": entry.price_type,
                    "limitPrice": entry.limit_price or 0,
                    "stopPrice": entry.stop_price or 0,
                    "marketSession": entry.session,
                    "allOrNone": False,
                    "estimatedCommission": ZERO,
                    "estimatedTotalAmount": signed,
                    "Instrument": [
                        {
                            "symbolDescription": SECURITIES.get(entry.symbol, entry.symbol),
                            "orderAction": entry.action,
                            "quantityType": "QUANTITY",
                            "quantity": entry.quantity,
                            "cancelQuantity": ZERO,
                            "reserveOrder": False,
                            "reserveQuantity": ZERO,
                            "Product": {"symbol": entry.symbol, "securityType": "EQ"},
                        }
                    ],
                }
            ],
        }

    # ---- Execution ---------------------------------------------------------------------

    def _work(self, account: FakeAccount, order: FakeOrder) -> None:
        """Market orders fill at once at the touch; a limit fills at once if marketable and
        otherwise rests (IOC and FOK are then cancelled); stops rest until reached, and
        prices only move when a test sets them."""
        entry = order.entry
        price = self.price(entry.symbol)
        touch = price.ask if entry.is_buy else price.bid
        if entry.stop_price is not None:
            reached = (
                price.last >= entry.stop_price if entry.is_buy else price.last <= entry.stop_price
            )
            if not reached:
                return
        if entry.limit_price is not None:
            marketable = touch <= entry.limit_price if entry.is_buy else touch >= entry.limit_price
            if not marketable:
                if entry.term in ("IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"):
                    order.status = "CANCELLED"
                    order.executed = self.now()
                return
        self._fill(account, order, touch)

    def _fill(self, account: FakeAccount, order: FakeOrder, price: Decimal) -> None:
        entry = order.entry
        now = self.now()
        signed = entry.quantity if entry.is_buy else -entry.quantity
        self._move_holding(account, entry.symbol, signed, price, now)
        amount = -(entry.quantity * price) if entry.is_buy else entry.quantity * price
        account.cash += amount
        order.status = "EXECUTED"
        order.executed = now
        order.filled = entry.quantity
        order.average_price = price
        account.transactions.append(
            FakeTransaction(
                transaction_id=self._transaction_id(now),
                at=now,
                kind=TRANSACTION_KINDS[entry.action],
                amount=amount,
                description=SECURITIES[entry.symbol],
                symbol=entry.symbol,
                quantity=signed,
                price=price,
                order_id=order.order_id,
            )
        )

    def _move_holding(
        self, account: FakeAccount, symbol: str, signed: int, price: Decimal, now: datetime
    ) -> None:
        holding = account.holdings.get(symbol)
        if holding is None:
            account.holdings[symbol] = Holding(symbol, signed, price, self._position_id(), now)
            return
        if (holding.quantity > 0) == (signed > 0):
            size = abs(holding.quantity) + abs(signed)
            holding.average_cost = (
                (abs(holding.quantity) * holding.average_cost + abs(signed) * price) / size
            ).quantize(Decimal("0.000001"))
        holding.quantity += signed
        if holding.quantity == 0:
            del account.holdings[symbol]

    def fill_resting(self, key: str, order_id: int) -> None:
        """Test hook: fill a resting order now at its limit (or the touch)."""
        account = self.accounts[key]
        order = account.orders[order_id]
        entry = order.entry
        price = self.price(entry.symbol)
        self._fill(account, order, entry.limit_price or (price.ask if entry.is_buy else price.bid))

    # ---- Transactions ------------------------------------------------------------------

    def transactions(
        self, account: FakeAccount, params: Mapping[str, str]
    ) -> dict[str, Any] | None:
        count = _count(params, "count", default=50, maximum=50, status_when_too_big=500)
        page_size = min(count, self.transactions_page_cap)
        first_day = _date_param(params, "startDate")
        last_day = _date_param(params, "endDate")
        if (first_day is None) != (last_day is None):
            raise ETradeError(400, PLACEHOLDER_BAD_PARAMETER, name="startDate/endDate")
        entries = sorted(
            account.transactions,
            key=lambda t: (t.at, t.transaction_id),
            reverse=params.get("sortOrder", "DESC").upper() != "ASC",
        )
        if first_day is not None and last_day is not None:
            entries = [
                t for t in entries if first_day <= t.at.astimezone(EASTERN).date() <= last_day
            ]
        start = 0
        if "marker" in params:
            start = _decode_marker(params["marker"])
        chosen = entries[start : start + page_size]
        if not chosen:
            return None
        more = start + page_size < len(entries)
        answer: dict[str, Any] = {
            "moreTransactions": more,
            "transactionCount": len(chosen),
            "totalCount": len(entries),
            "Transaction": [self._transaction(account, t) for t in chosen],
        }
        if more:
            answer = {"marker": _encode_marker(start + page_size), **answer}
        return {"TransactionListResponse": answer}

    def _transaction(self, account: FakeAccount, entry: FakeTransaction) -> dict[str, Any]:
        base = f"{self._base_url()}/v1/accounts/{account.key}/transactions"
        return {
            "transactionId": entry.transaction_id,
            "accountId": account.account_id,
            "transactionDate": _millis(entry.at),
            "postDate": _millis(entry.at),
            "amount": entry.amount,
            "description": entry.description,
            "transactionType": entry.kind,
            "memo": " ",
            "imageFlag": False,
            "instType": "BROKERAGE",
            "storeId": 0,
            "brokerage": {
                # Lower-case as in the real capture.
                "product": {"symbol": entry.symbol, "securityType": "EQ" if entry.symbol else ""},
                "quantity": entry.quantity,
                "price": entry.price,
                "settlementCurrency": "USD",
                "paymentCurrency": "USD",
                "fee": 0,
                "displaySymbol": entry.symbol or " ",
                "settlementDate": 0,
                # UNCONFIRMED in list answers (the v1 model has Brokerage.orderNo).
                "orderNo": str(entry.order_id) if entry.order_id else "",
            },
            "detailsURI": f"{base}/{entry.transaction_id}?storeId=0",
        }

    def _transaction_id(self, at: datetime) -> str:
        return f"{at.astimezone(EASTERN):%y%j}{next(self._numbers):09d}"

    def _position_id(self) -> int:
        return 10087600000 + next(self._numbers)


LIST_STATUS_FILTERS = frozenset(
    {
        "OPEN",
        "EXECUTED",
        "CANCELLED",
        "INDIVIDUAL_FILLS",
        "CANCEL_REQUESTED",
        "EXPIRED",
        "REJECTED",
    }
)
TRANSACTION_KINDS = {
    "BUY": "Bought",
    "SELL": "Sold",
    "SELL_SHORT": "Sold Short",
    "BUY_TO_COVER": "Bought To Cover",
}
EQUITY_ACTIONS = frozenset(TRANSACTION_KINDS)
PRICE_TYPES = frozenset({"MARKET", "LIMIT", "STOP", "STOP_LIMIT"})
ORDER_TERMS = frozenset(
    {"GOOD_FOR_DAY", "GOOD_UNTIL_CANCEL", "IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"}
)


# ---- Request parsing -----------------------------------------------------------------------


def parse_entry(request: Mapping[str, Any]) -> OrderEntry:
    """One equity order from a preview or place body. Like E*TRADE, it takes `Order` and
    `Instrument` as an object or a list, and values as JSON numbers or text."""

    def invalid(reason: str) -> ETradeError:
        return ETradeError(400, PLACEHOLDER_INVALID_ORDER, reason=reason)

    if str(request.get("orderType", "")).upper() != "EQ":
        raise invalid("only orderType EQ is supported by this fake")
    client_order_id = str(request.get("clientOrderId", ""))
    if not CLIENT_ORDER_ID.match(client_order_id):
        raise invalid("clientOrderId must be 1 to 20 letters or digits")
    orders = _items(request.get("Order"))
    if len(orders) != 1:
        raise invalid("exactly one Order is expected")
    order = orders[0]
    instruments = _items(order.get("Instrument"))
    if len(instruments) != 1:
        raise invalid("exactly one Instrument is expected")
    instrument = instruments[0]
    product = instrument.get("Product") or {}
    if str(product.get("securityType", "")).upper() != "EQ":
        raise invalid("securityType must be EQ")
    action = str(instrument.get("orderAction", "")).upper()
    if action not in EQUITY_ACTIONS:
        raise invalid("orderAction must be BUY, SELL, SELL_SHORT or BUY_TO_COVER")
    if str(instrument.get("quantityType", "QUANTITY")).upper() != "QUANTITY":
        raise invalid("quantityType must be QUANTITY")
    quantity = _number(instrument.get("quantity"))
    if quantity is None or quantity <= 0 or quantity != quantity.to_integral_value():
        raise invalid("quantity must be a positive whole number")
    price_type = str(order.get("priceType", "")).upper()
    if price_type not in PRICE_TYPES:
        raise invalid("priceType must be MARKET, LIMIT, STOP or STOP_LIMIT")
    term = str(order.get("orderTerm", "")).upper()
    if term not in ORDER_TERMS:
        raise invalid("unsupported orderTerm")
    session = str(order.get("marketSession", "REGULAR")).upper()
    if session not in ("REGULAR", "EXTENDED"):
        raise invalid("marketSession must be REGULAR or EXTENDED")
    limit_price = _price(order.get("limitPrice"))
    stop_price = _price(order.get("stopPrice"))
    # Rules from the v0 order docs.
    if price_type in ("LIMIT", "STOP_LIMIT") and limit_price is None:
        raise invalid("a limit price is required")
    if price_type in ("STOP", "STOP_LIMIT") and stop_price is None:
        raise invalid("a stop price is required")
    if price_type in ("MARKET", "STOP"):
        limit_price = None
    if price_type in ("MARKET", "LIMIT"):
        stop_price = None
    if term in ("IMMEDIATE_OR_CANCEL", "FILL_OR_KILL") and price_type != "LIMIT":
        raise invalid("IMMEDIATE_OR_CANCEL and FILL_OR_KILL are for limit orders only")
    return OrderEntry(
        client_order_id=client_order_id,
        symbol=str(product.get("symbol", "")).upper(),
        action=action,
        quantity=int(quantity),
        price_type=price_type,
        term=term,
        session=session,
        limit_price=limit_price,
        stop_price=stop_price,
    )


def _wrapped(body: Mapping[str, Any], wrapper: str) -> Mapping[str, Any]:
    inner = body.get(wrapper)
    if not isinstance(inner, Mapping):
        raise ETradeError(400, PLACEHOLDER_INVALID_ORDER, reason=f"{wrapper} is missing")
    return inner


def _items(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [each for each in value if isinstance(each, Mapping)]
    return []


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise ETradeError(
            400, PLACEHOLDER_INVALID_ORDER, reason=f"not a number: {value!r}"
        ) from None


def _price(value: Any) -> Decimal | None:
    number = _number(value)
    if number is None or number == 0:
        return None  # E*TRADE writes 0 or "" for an unused price
    if number < 0 or number != number.quantize(Decimal("0.0001")):
        raise ETradeError(400, PLACEHOLDER_INVALID_ORDER, reason=f"bad price {value!r}")
    return number


def _count(
    params: Mapping[str, str],
    name: str,
    *,
    default: int,
    maximum: int | None,
    status_when_too_big: int = 400,
) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ETradeError(400, PLACEHOLDER_BAD_PARAMETER, name=name)
    if maximum is not None and int(raw) > maximum:
        raise ETradeError(status_when_too_big, PLACEHOLDER_BAD_PARAMETER, name=name)
    return int(raw)


def _date_param(params: Mapping[str, str], name: str) -> date | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return datetime.strptime(raw, "%m%d%Y").date()  # noqa: DTZ007 - a calendar date
    except ValueError:
        raise ETradeError(400, PLACEHOLDER_BAD_PARAMETER, name=name) from None


def _encode_marker(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def _decode_marker(marker: str) -> Any:
    """The last position sent: an order id (from [placedTime, orderId]) or an offset."""
    try:
        value = json.loads(base64.urlsafe_b64decode(marker.encode()))
    except (ValueError, binascii.Error):
        raise ETradeError(400, PLACEHOLDER_BAD_PARAMETER, name="marker") from None
    return value[1] if isinstance(value, list) else int(value)


def _millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _is_dst(moment: datetime) -> bool:
    return bool(moment.astimezone(EASTERN).dst())
