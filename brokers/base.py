"""The one interface every broker adapter implements, the normalized types it returns, and
the typed error it raises.

Money and quantities are `Decimal` end to end, never float. Account ids in this interface
are the broker's own account keys; Tradeplane's stable account ids are mapped onto them by
the control plane.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.models import BrokerConnection

SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}$")
MAX_QUOTE_SYMBOLS = 25


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    SELL_SHORT = "SELL_SHORT"
    BUY_TO_COVER = "BUY_TO_COVER"

    @property
    def is_buy(self) -> bool:
        return self in (Side.BUY, Side.BUY_TO_COVER)


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        return self in (
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
            OrderStatus.EXPIRED,
        )


class TransactionType(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    BUY = "BUY"
    SELL = "SELL"
    SELL_SHORT = "SELL_SHORT"
    BUY_TO_COVER = "BUY_TO_COVER"
    DIVIDEND = "DIVIDEND"
    FEE = "FEE"
    OTHER = "OTHER"


class BrokerErrorCode(StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    MARKET_CLOSED = "market_closed"
    INVALID_SYMBOL = "invalid_symbol"
    INVALID_ORDER = "invalid_order"
    ORDER_NOT_FOUND = "order_not_found"
    ORDER_NOT_CANCELLABLE = "order_not_cancellable"
    ACCOUNT_NOT_FOUND = "account_not_found"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    AUTH_EXPIRED = "auth_expired"
    UNAVAILABLE = "unavailable"
    UNSUPPORTED = "unsupported"
    # The request may have reached the broker but no answer came (timeout, lost response):
    # never retried under a new id; reconciliation finds out what happened.
    OUTCOME_UNKNOWN = "outcome_unknown"


# Codes that may succeed if the same call is made again later.
TRANSIENT_CODES = frozenset({BrokerErrorCode.RATE_LIMITED, BrokerErrorCode.UNAVAILABLE})


class BrokerError(Exception):
    """A broker refused or failed a call.

    `code` is stable and ours; `broker_message` keeps the broker's own words for the person;
    `transient` says whether retrying the same call later could succeed.
    """

    def __init__(
        self, code: BrokerErrorCode, broker_message: str, *, transient: bool | None = None
    ) -> None:
        super().__init__(f"{code}: {broker_message}")
        self.code = code
        self.broker_message = broker_message
        self.transient = code in TRANSIENT_CODES if transient is None else transient


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    account_type: str
    currency: str = "USD"
    number_masked: str = ""


@dataclass(frozen=True)
class Balance:
    account_id: str
    cash: Decimal
    buying_power: Decimal
    account_value: Decimal
    as_of: datetime
    currency: str = "USD"


@dataclass(frozen=True)
class Position:
    symbol: str
    quantity: Decimal  # negative for a short position
    average_cost: Decimal
    cost_basis: Decimal
    market_price: Decimal
    market_value: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal = Decimal(0)


@dataclass(frozen=True)
class Quote:
    symbol: str
    last: Decimal
    bid: Decimal
    ask: Decimal
    change: Decimal
    change_pct: Decimal
    volume: int
    time: datetime
    name: str = ""


@dataclass(frozen=True)
class Fill:
    fill_id: str
    quantity: Decimal
    price: Decimal
    time: datetime


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    extended_hours: bool = False

    def problems(self) -> list[str]:
        """What is wrong with this request on its face (empty when it is well formed)."""
        found = []
        if not SYMBOL_PATTERN.match(self.symbol):
            found.append("symbol must be 1-10 characters: A-Z, digits, '.' or '-'")
        if not self.quantity.is_finite() or self.quantity <= 0:
            found.append("quantity must be a positive number")
        elif self.quantity != self.quantity.to_integral_value():
            found.append("quantity must be a whole number of shares")
        needs_limit = self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        needs_stop = self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        for name, price, needed in (
            ("limit_price", self.limit_price, needs_limit),
            ("stop_price", self.stop_price, needs_stop),
        ):
            if needed and price is None:
                found.append(f"{name} is required for {self.order_type} orders")
            elif not needed and price is not None:
                found.append(f"{name} is not allowed for {self.order_type} orders")
            elif price is not None and (not price.is_finite() or price <= 0):
                found.append(f"{name} must be a positive number")
        if self.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and (
            self.order_type != OrderType.LIMIT
        ):
            found.append("IOC and FOK are for limit orders only")
        return found


@dataclass(frozen=True)
class Order:
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType
    status: OrderStatus
    time_in_force: TimeInForce
    created_at: datetime
    updated_at: datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    extended_hours: bool = False
    filled_quantity: Decimal = Decimal(0)
    average_fill_price: Decimal | None = None
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    reason: str = ""


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    transaction_type: TransactionType
    time: datetime
    amount: Decimal  # signed cash effect on the account
    description: str
    symbol: str = ""
    quantity: Decimal | None = None
    price: Decimal | None = None
    order_id: str = ""


@dataclass(frozen=True)
class Preview:
    estimated_total: Decimal  # cash out for buys, cash in for sells, commission included
    commission: Decimal
    estimated_price: Decimal
    preview_id: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    order_id: str
    status: OrderStatus


@dataclass(frozen=True)
class Authorization:
    """Where to send the person to approve access, for OAuth brokers."""

    authorize_url: str
    expires_at: datetime


class BrokerAdapter(ABC):
    """One broker, for one connection. Every method either returns normalized data or
    raises BrokerError; none returns a broker's raw payload or a float."""

    key: str = ""
    label: str = ""

    def __init__(self, connection: BrokerConnection) -> None:
        self.connection = connection

    @abstractmethod
    def list_accounts(self) -> list[Account]:
        """Every account the connection can reach."""

    @abstractmethod
    def get_balance(self, account_id: str) -> Balance:
        """Cash, buying power and total value. ACCOUNT_NOT_FOUND for a foreign account."""

    @abstractmethod
    def get_positions(self, account_id: str) -> list[Position]:
        """Open positions valued at current prices."""

    @abstractmethod
    def get_quotes(self, symbols: list[str]) -> list[Quote]:
        """1 to 25 symbols, in the order asked. INVALID_SYMBOL names unknown ones."""

    @abstractmethod
    def list_orders(
        self, account_id: str, *, status: OrderStatus | None = None, limit: int = 50
    ) -> list[Order]:
        """Most recent first, at most `limit`."""

    @abstractmethod
    def get_order(self, account_id: str, order_id: str) -> Order:
        """One order with its fills; ORDER_NOT_FOUND if it is not this account's."""

    @abstractmethod
    def list_transactions(
        self,
        account_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 50,
    ) -> list[Transaction]:
        """Cash and trade activity in [start, end), most recent first."""

    @abstractmethod
    def preview_order(self, account_id: str, request: OrderRequest) -> Preview:
        """What the order would cost. Places nothing."""

    @abstractmethod
    def place_order(
        self, account_id: str, request: OrderRequest, client_order_id: str, preview: Preview
    ) -> Placement:
        """Place the previewed order. A `client_order_id` already used on the account returns
        the existing order instead of placing a second one."""

    @abstractmethod
    def cancel_order(self, account_id: str, order_id: str) -> Order:
        """ORDER_NOT_CANCELLABLE once the order is final."""

    def find_order_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        """For reconciliation after a lost response. UNSUPPORTED where the broker cannot."""
        raise BrokerError(
            BrokerErrorCode.UNSUPPORTED,
            f"{self.label or self.key} cannot look orders up by client order id",
        )

    # OAuth connection lifecycle; brokers without OAuth (the paper broker) keep the defaults.

    def start_authorization(self) -> Authorization | None:
        """Begin connecting. OAuth brokers return where to send the person; brokers that need
        no approval set up what they need (the paper broker opens its accounts) and return
        None, meaning the connection is active at once."""
        return None

    def complete_authorization(self, verifier: str) -> None:
        """Exchange the person's verifier for credentials stored on the connection."""
        return None

    def renew(self) -> None:
        """Keep credentials alive (renew or refresh); AUTH_EXPIRED when only a new login can."""
        return None

    def revoke(self) -> None:
        """Invalidate the stored credentials at the broker."""
        return None
