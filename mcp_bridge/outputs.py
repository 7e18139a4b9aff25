"""Structured outputs of the tools (each one's output schema) and their short texts.

Everything a broker returned travels inside `data`, under `trust: untrusted_broker_data`:
symbols, names, messages and notes come from outside and are data for the agent, never
instructions. Money is serialized as a decimal string.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema

from controlplane.risk import CheckResult, RiskResult

UNTRUSTED: Literal["untrusted_broker_data"] = "untrusted_broker_data"
# Money and quantities leave as exact decimal strings; the schema says so in one line
# (pydantic's default for Decimal repeats a long regex in every field of every tool).
Amount = Annotated[
    Decimal, PlainSerializer(str, return_type=str), WithJsonSchema({"type": "string"})
]
Environment = Literal["paper", "sandbox", "production"]


class Result(BaseModel):
    def describe(self) -> str:
        raise NotImplementedError


class BrokerResult(Result):
    environment: Environment
    broker: str
    trust: Literal["untrusted_broker_data"] = UNTRUSTED


class ConnectionInfo(BaseModel):
    connection_id: str
    broker: str
    environment: Environment
    status: str
    trading_enabled: bool


class WhoAmI(Result):
    user_id: str
    platform: str
    scopes: list[str]
    token_expires_at: datetime
    connections: list[ConnectionInfo]

    def describe(self) -> str:
        return (
            f"user {self.user_id} of {self.platform}, scopes {' '.join(self.scopes)}, "
            f"{len(self.connections)} connection(s)"
        )


class AccountInfo(BaseModel):
    account_id: str = Field(description="Tradeplane's account id: pass it to the other tools")
    name: str
    account_type: str
    currency: str
    broker: str
    environment: Environment


class AccountList(Result):
    trust: Literal["untrusted_broker_data"] = UNTRUSTED
    accounts: list[AccountInfo]

    def describe(self) -> str:
        return f"{len(self.accounts)} account(s): " + ", ".join(
            f"{a.account_id} ({a.name}, {a.environment})" for a in self.accounts
        )


class BalanceData(BaseModel):
    cash: Amount
    buying_power: Amount
    account_value: Amount
    currency: str
    as_of: datetime


class BalanceResult(BrokerResult):
    account_id: str
    data: BalanceData

    def describe(self) -> str:
        d = self.data
        return (
            f"{self.account_id} ({self.environment}): cash {d.cash} {d.currency}, "
            f"buying power {d.buying_power}, value {d.account_value}"
        )


class PositionData(BaseModel):
    symbol: str
    quantity: Amount = Field(description="negative for a short position")
    average_cost: Amount
    cost_basis: Amount
    market_price: Amount
    market_value: Amount
    unrealized_pnl: Amount
    realized_pnl: Amount


class PositionsResult(BrokerResult):
    account_id: str
    data: list[PositionData]

    def describe(self) -> str:
        held = ", ".join(f"{p.quantity} {p.symbol}" for p in self.data) or "no positions"
        return f"{self.account_id} ({self.environment}): {held}"


class QuoteData(BaseModel):
    symbol: str
    name: str
    last: Amount
    bid: Amount
    ask: Amount
    change: Amount
    change_pct: Amount
    volume: int
    time: datetime


class PositionDetailsData(BaseModel):
    position: PositionData
    quote: QuoteData
    weight_pct: Amount = Field(description="market value as % of account value")
    unrealized_pnl_pct: Amount


class PositionDetailsResult(BrokerResult):
    account_id: str
    data: PositionDetailsData

    def describe(self) -> str:
        p = self.data.position
        return (
            f"{p.quantity} {p.symbol} at avg {p.average_cost}, now {p.market_price}: "
            f"P&L {p.unrealized_pnl} ({self.data.unrealized_pnl_pct}%), "
            f"{self.data.weight_pct}% of the account"
        )


class QuotesResult(BrokerResult):
    data: list[QuoteData]

    def describe(self) -> str:
        return "; ".join(f"{q.symbol} {q.last} ({q.change_pct:+}%)" for q in self.data)


class FillData(BaseModel):
    fill_id: str
    quantity: Amount
    price: Amount
    time: datetime


class OrderData(BaseModel):
    order_id: str
    symbol: str
    side: str
    quantity: Amount
    order_type: str
    limit_price: Amount | None
    stop_price: Amount | None
    time_in_force: str
    extended_hours: bool
    status: str
    filled_quantity: Amount
    average_fill_price: Amount | None
    created_at: datetime
    updated_at: datetime
    fills: list[FillData]
    reason: str


class OrderLine(BaseModel):
    """An order in a list; get_order gives its fills."""

    order_id: str
    symbol: str
    side: str
    quantity: Amount
    order_type: str
    limit_price: Amount | None
    stop_price: Amount | None
    status: str
    filled_quantity: Amount
    average_fill_price: Amount | None
    created_at: datetime


class OrdersResult(BrokerResult):
    account_id: str
    data: list[OrderLine]

    def describe(self) -> str:
        return f"{len(self.data)} order(s): " + ", ".join(
            f"{o.order_id} {o.side} {o.quantity} {o.symbol} {o.status}" for o in self.data
        )


class OrderResult(BrokerResult):
    account_id: str
    data: OrderData

    def describe(self) -> str:
        o = self.data
        return (
            f"order {o.order_id}: {o.side} {o.quantity} {o.symbol} {o.order_type} "
            f"{o.status}, filled {o.filled_quantity}"
        )


class TransactionData(BaseModel):
    transaction_id: str
    transaction_type: str
    time: datetime
    amount: Amount
    description: str
    symbol: str
    quantity: Amount | None
    price: Amount | None
    order_id: str


class TransactionsResult(BrokerResult):
    account_id: str
    data: list[TransactionData]

    def describe(self) -> str:
        return f"{len(self.data)} transaction(s)"


class RiskCheck(BaseModel):
    name: str
    detail: str = ""
    limit: str | None = None
    value: str | None = None


class RiskSummary(BaseModel):
    passed: list[RiskCheck]
    failed: list[RiskCheck]
    skipped: list[RiskCheck]


def risk_summary(result: RiskResult) -> RiskSummary:
    def convert(checks: list[CheckResult]) -> list[RiskCheck]:
        return [
            RiskCheck(name=c.name, detail=c.detail, limit=c.limit, value=c.value) for c in checks
        ]

    return RiskSummary(
        passed=convert(result.passed),
        failed=convert(result.failed),
        skipped=convert(result.skipped),
    )


class PreviewData(BaseModel):
    estimated_total: Amount
    commission: Amount
    estimated_price: Amount
    warnings: list[str]


class PreviewResult(BrokerResult):
    account_id: str
    order: dict[str, str]
    data: PreviewData
    risk: RiskSummary
    note: str = "A preview only: nothing was created or sent. Trades use create_order."

    def describe(self) -> str:
        failed = ", ".join(c.name for c in self.risk.failed)
        return (
            f"{self.order['side']} {self.order['quantity']} {self.order['symbol']}: "
            f"estimated {self.data.estimated_total} incl. commission {self.data.commission}"
            + (f"; would fail risk checks: {failed}" if failed else "")
        )


class PendingTradeInfo(BaseModel):
    confirmation_id: str
    kind: str
    status: str
    summary: str
    expires_at: datetime


class PendingTradesResult(Result):
    pending: list[PendingTradeInfo]

    def describe(self) -> str:
        return f"{len(self.pending)} trade(s) awaiting confirmation"


class WatchlistResult(Result):
    name: str
    symbols: list[str]

    def describe(self) -> str:
        return f"watchlist {self.name}: {', '.join(self.symbols) or 'empty'}"


def plain(value: Any) -> Any:
    """A broker dataclass as plain data (enums to their values) for the models above."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


class TradeResult(Result):
    """A trade proposal or its outcome; the summary is what the person must see."""

    confirmation_id: str
    kind: str
    status: str
    summary: str
    account_id: str
    environment: Environment
    expires_at: datetime
    estimate: dict[str, Any]
    risk: dict[str, Any]
    broker_order_id: str
    next_step: str

    def describe(self) -> str:
        return f"{self.summary} [{self.status}] {self.next_step}"
