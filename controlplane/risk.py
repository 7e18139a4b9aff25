"""The risk engine: each check is a small named function over one order and its context,
answering passed, failed (with the limit and the value seen) or skipped (no limit set, or
nothing to check).

Policy resolution: the platform's default policy, overridden field by field by the end
user's policy, overridden by the connection's. An empty field inherits; when no level sets
a limit, the check is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from django.db.models import Q, Subquery

from brokers.base import OrderRequest, OrderType, Side
from controlplane.models import BrokerConnection, EndUser, RiskPolicy

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class EffectivePolicy:
    max_order_value: Decimal | None = None
    max_quantity: Decimal | None = None
    price_collar_pct: Decimal | None = None
    max_orders_per_day: int | None = None
    max_notional_per_day: Decimal | None = None
    allowed_order_types: list[str] | None = None
    allow_short_selling: bool | None = None
    allow_extended_hours: bool | None = None
    symbol_allowlist: list[str] | None = None
    symbol_denylist: list[str] | None = None
    max_position_concentration_pct: Decimal | None = None
    approval_threshold_value: Decimal | None = None
    duplicate_window_seconds: int | None = None
    approval_extends_seconds: int | None = None
    require_elicitation: bool | None = None


def resolve_policy(connection: BrokerConnection) -> EffectivePolicy:
    """Platform default <- end user <- connection, read in one query: this runs in every
    create and confirm."""
    platform_of_user = EndUser.objects.filter(pk=connection.end_user_id).values("platform_id")[:1]
    found = RiskPolicy.objects.filter(
        Q(platform_id=Subquery(platform_of_user), end_user__isnull=True, connection__isnull=True)
        | Q(end_user_id=connection.end_user_id, connection__isnull=True)
        | Q(connection_id=connection.pk)
    )

    def depth(level: RiskPolicy) -> int:
        return 2 if level.connection_id else 1 if level.end_user_id else 0

    values: dict[str, Any] = {}
    for level in sorted(found, key=depth):
        for item in fields(EffectivePolicy):
            value = getattr(level, item.name)
            if value is not None:
                values[item.name] = value
    return EffectivePolicy(**values)


@dataclass(frozen=True)
class RiskContext:
    """What the checks look at, gathered by the caller (broker reads, today's activity)."""

    request: OrderRequest
    reference_price: Decimal  # what one share is expected to cost or fetch
    last_price: Decimal
    account_value: Decimal
    buying_power: Decimal
    position_quantity: Decimal  # current position in the symbol (negative when short)
    orders_today: int  # orders created today, counting pending and open ones
    notional_today: Decimal  # their value, counting pending and open ones
    identical_recent: int  # identical orders within the duplicate window

    @property
    def order_value(self) -> Decimal:
        return (self.request.quantity * self.reference_price).quantize(CENT)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    detail: str = ""
    limit: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class RiskResult:
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    def _with(self, status: str) -> list[CheckResult]:
        return [check for check in self.checks if check.status == status]

    @property
    def passed(self) -> list[CheckResult]:
        return self._with(PASSED)

    @property
    def failed(self) -> list[CheckResult]:
        return self._with(FAILED)

    @property
    def skipped(self) -> list[CheckResult]:
        return self._with(SKIPPED)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe_failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failed)


Check = Callable[[EffectivePolicy, RiskContext], CheckResult]


def _limit(name: str, limit: Any, value: Any, exceeded: bool, what: str) -> CheckResult:
    if exceeded:
        return CheckResult(
            name, FAILED, f"{what} {value} exceeds the limit {limit}", str(limit), str(value)
        )
    return CheckResult(name, PASSED, f"{what} {value} within {limit}", str(limit), str(value))


def max_order_value(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if policy.max_order_value is None:
        return CheckResult("max_order_value", SKIPPED, "no limit set")
    return _limit(
        "max_order_value",
        policy.max_order_value,
        ctx.order_value,
        ctx.order_value > policy.max_order_value,
        "order value",
    )


def max_quantity(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if policy.max_quantity is None:
        return CheckResult("max_quantity", SKIPPED, "no limit set")
    quantity = ctx.request.quantity
    return _limit(
        "max_quantity", policy.max_quantity, quantity, quantity > policy.max_quantity, "quantity"
    )


def price_collar(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    prices = [p for p in (ctx.request.limit_price, ctx.request.stop_price) if p is not None]
    if policy.price_collar_pct is None:
        return CheckResult("price_collar", SKIPPED, "no limit set")
    if not prices:
        return CheckResult("price_collar", SKIPPED, "market order: no price to check")
    worst = max(abs(price - ctx.last_price) / ctx.last_price * 100 for price in prices)
    worst = worst.quantize(CENT)
    if worst > policy.price_collar_pct:
        return CheckResult(
            "price_collar",
            FAILED,
            f"price is {worst}% from the last price {ctx.last_price}, more than "
            f"{policy.price_collar_pct}%",
            f"{policy.price_collar_pct}%",
            f"{worst}%",
        )
    return CheckResult(
        "price_collar", PASSED, f"{worst}% from last", f"{policy.price_collar_pct}%", f"{worst}%"
    )


def max_orders_per_day(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if policy.max_orders_per_day is None:
        return CheckResult("max_orders_per_day", SKIPPED, "no limit set")
    count = ctx.orders_today + 1
    return _limit(
        "max_orders_per_day",
        policy.max_orders_per_day,
        count,
        count > policy.max_orders_per_day,
        "orders today including this one",
    )


def max_notional_per_day(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if policy.max_notional_per_day is None:
        return CheckResult("max_notional_per_day", SKIPPED, "no limit set")
    total = ctx.notional_today + ctx.order_value
    return _limit(
        "max_notional_per_day",
        policy.max_notional_per_day,
        total,
        total > policy.max_notional_per_day,
        "notional today including this order",
    )


def buying_power(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    side = ctx.request.side
    if side not in (Side.BUY, Side.SELL_SHORT):
        return CheckResult("buying_power", SKIPPED, f"{side} does not use buying power")
    return _limit(
        "buying_power",
        ctx.buying_power,
        ctx.order_value,
        ctx.order_value > ctx.buying_power,
        "order value",
    )


def max_position_concentration(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    limit = policy.max_position_concentration_pct
    if limit is None:
        return CheckResult("max_position_concentration", SKIPPED, "no limit set")
    if ctx.account_value <= 0:
        return CheckResult("max_position_concentration", SKIPPED, "account value is zero")
    signed = ctx.request.quantity if ctx.request.side.is_buy else -ctx.request.quantity
    after = abs(ctx.position_quantity + signed) * ctx.reference_price
    pct = (after / ctx.account_value * 100).quantize(CENT)
    return _limit(
        "max_position_concentration",
        f"{limit}%",
        f"{pct}%",
        pct > limit,
        f"{ctx.request.symbol} after the trade would be",
    )


def symbol_lists(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    symbol = ctx.request.symbol
    deny = {s.upper() for s in policy.symbol_denylist or []}
    allow = {s.upper() for s in policy.symbol_allowlist or []}
    if not deny and not allow:
        return CheckResult("symbol_lists", SKIPPED, "no lists set")
    if symbol in deny:
        return CheckResult("symbol_lists", FAILED, f"{symbol} is on the deny list", value=symbol)
    if allow and symbol not in allow:
        return CheckResult(
            "symbol_lists", FAILED, f"{symbol} is not on the allow list", value=symbol
        )
    return CheckResult("symbol_lists", PASSED, f"{symbol} allowed", value=symbol)


def order_types(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    allowed = policy.allowed_order_types
    if allowed is None:
        return CheckResult("order_types", SKIPPED, "all order types allowed")
    kind = OrderType(ctx.request.order_type)
    if kind not in allowed:
        return CheckResult(
            "order_types",
            FAILED,
            f"{kind} orders are not allowed (allowed: {', '.join(allowed)})",
            ", ".join(allowed),
            str(kind),
        )
    return CheckResult("order_types", PASSED, f"{kind} allowed", ", ".join(allowed), str(kind))


def short_selling(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if ctx.request.side != Side.SELL_SHORT:
        return CheckResult("short_selling", SKIPPED, "not a short sale")
    if policy.allow_short_selling is False:
        return CheckResult("short_selling", FAILED, "short selling is not allowed")
    return CheckResult("short_selling", PASSED, "short selling allowed")


def extended_hours(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    if not ctx.request.extended_hours:
        return CheckResult("extended_hours", SKIPPED, "regular session only")
    if policy.allow_extended_hours is False:
        return CheckResult("extended_hours", FAILED, "extended-hours trading is not allowed")
    return CheckResult("extended_hours", PASSED, "extended hours allowed")


def duplicate_order(policy: EffectivePolicy, ctx: RiskContext) -> CheckResult:
    window = policy.duplicate_window_seconds
    if not window:
        return CheckResult("duplicate_order", SKIPPED, "no duplicate window set")
    if ctx.identical_recent:
        return CheckResult(
            "duplicate_order",
            FAILED,
            f"an identical order was made in the last {window} seconds",
            f"{window}s",
            str(ctx.identical_recent),
        )
    return CheckResult(
        "duplicate_order", PASSED, f"no identical order in {window}s", f"{window}s", "0"
    )


CHECKS: tuple[Check, ...] = (
    max_order_value,
    max_quantity,
    price_collar,
    max_orders_per_day,
    max_notional_per_day,
    buying_power,
    max_position_concentration,
    symbol_lists,
    order_types,
    short_selling,
    extended_hours,
    duplicate_order,
)


def evaluate(
    policy: EffectivePolicy, ctx: RiskContext, checks: tuple[Check, ...] = CHECKS
) -> RiskResult:
    return RiskResult(tuple(check(policy, ctx) for check in checks))
