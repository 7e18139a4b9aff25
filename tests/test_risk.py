"""The risk engine: every check passes at its limit and fails just past it, naming the limit
and the value seen; policies resolve platform default <- end user <- connection."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from brokers.base import OrderRequest, OrderType, Side
from controlplane import risk
from controlplane.models import BrokerConnection, RiskPolicy
from tests.conftest import UserCreds

D = Decimal


def context(**changes: object) -> risk.RiskContext:
    request = OrderRequest(
        symbol="AAPL",
        side=Side.BUY,
        quantity=D(10),
        order_type=OrderType.LIMIT,
        limit_price=D("100.00"),
    )
    base = risk.RiskContext(
        request=request,
        reference_price=D("100.00"),
        last_price=D("100.00"),
        account_value=D("10000.00"),
        buying_power=D("5000.00"),
        position_quantity=D(0),
        orders_today=0,
        notional_today=D(0),
        identical_recent=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def order(**changes: object) -> OrderRequest:
    return replace(context().request, **changes)  # type: ignore[arg-type]


def run(check: risk.Check, policy: risk.EffectivePolicy, ctx: risk.RiskContext) -> str:
    return check(policy, ctx).status


# (check, policy at the limit, context, policy just under what the context needs)
BOUNDARIES = [
    (risk.max_order_value, {"max_order_value": D("1000.00")}, {}, {"max_order_value": D("999.99")}),
    (risk.max_quantity, {"max_quantity": D(10)}, {}, {"max_quantity": D(9)}),
    (
        risk.price_collar,
        {"price_collar_pct": D("5.00")},
        {"request": order(limit_price=D("105.00"))},
        {"price_collar_pct": D("4.99")},
    ),
    (
        risk.max_orders_per_day,
        {"max_orders_per_day": 3},
        {"orders_today": 2},
        {"max_orders_per_day": 2},
    ),
    (
        risk.max_notional_per_day,
        {"max_notional_per_day": D("3000.00")},
        {"notional_today": D("2000.00")},
        {"max_notional_per_day": D("2999.99")},
    ),
    (
        risk.max_position_concentration,
        {"max_position_concentration_pct": D("20.00")},
        {"position_quantity": D(10)},
        {"max_position_concentration_pct": D("19.99")},
    ),
    (risk.order_types, {"allowed_order_types": ["LIMIT"]}, {}, {"allowed_order_types": ["MARKET"]}),
    (risk.symbol_lists, {"symbol_allowlist": ["AAPL"]}, {}, {"symbol_allowlist": ["MSFT"]}),
    (risk.symbol_lists, {"symbol_denylist": ["TSLA"]}, {}, {"symbol_denylist": ["AAPL"]}),
    (
        risk.duplicate_order,
        {"duplicate_window_seconds": 30},
        {"identical_recent": 0},
        {"duplicate_window_seconds": 30},
    ),
]


@pytest.mark.parametrize(
    ("check", "at_limit", "changes", "past_limit"),
    BOUNDARIES,
    ids=lambda v: getattr(v, "__name__", None),
)
def test_each_check_passes_at_its_limit_and_fails_just_past_it(
    check: risk.Check, at_limit: dict, changes: dict, past_limit: dict
) -> None:
    ctx = context(**changes)
    assert run(check, risk.EffectivePolicy(**at_limit), ctx) == risk.PASSED
    if check is risk.duplicate_order:
        ctx = context(identical_recent=1)
    result = check(risk.EffectivePolicy(**past_limit), ctx)
    assert result.status == risk.FAILED
    assert result.detail


def test_buying_power_at_and_past_the_limit() -> None:
    at = context(buying_power=D("1000.00"))
    past = context(buying_power=D("999.99"))
    assert run(risk.buying_power, risk.EffectivePolicy(), at) == risk.PASSED
    failed = risk.buying_power(risk.EffectivePolicy(), past)
    assert (failed.status, failed.limit, failed.value) == (risk.FAILED, "999.99", "1000.00")
    sell = context(request=order(side=Side.SELL), buying_power=D(0))
    assert run(risk.buying_power, risk.EffectivePolicy(), sell) == risk.SKIPPED


def test_short_selling_and_extended_hours_follow_the_policy() -> None:
    short = context(request=order(side=Side.SELL_SHORT))
    assert (
        run(risk.short_selling, risk.EffectivePolicy(allow_short_selling=True), short) == "passed"
    )
    assert (
        run(risk.short_selling, risk.EffectivePolicy(allow_short_selling=False), short) == "failed"
    )
    assert run(risk.short_selling, risk.EffectivePolicy(allow_short_selling=False), context()) == (
        "skipped"
    )
    late = context(request=order(extended_hours=True))
    assert run(risk.extended_hours, risk.EffectivePolicy(allow_extended_hours=False), late) == (
        "failed"
    )
    assert run(risk.extended_hours, risk.EffectivePolicy(), late) == "passed"


def test_unset_limits_are_skipped_and_market_orders_skip_the_collar() -> None:
    result = risk.evaluate(risk.EffectivePolicy(), context())
    assert result.ok
    assert {c.name for c in result.skipped} >= {
        "max_order_value",
        "max_quantity",
        "price_collar",
        "max_orders_per_day",
        "max_notional_per_day",
        "max_position_concentration",
        "symbol_lists",
        "order_types",
        "duplicate_order",
    }
    market = context(request=order(order_type=OrderType.MARKET, limit_price=None))
    collar = risk.price_collar(risk.EffectivePolicy(price_collar_pct=D(1)), market)
    assert collar.status == risk.SKIPPED


def test_a_rejection_names_every_failed_check_with_limit_and_value() -> None:
    policy = risk.EffectivePolicy(
        max_order_value=D(500), max_quantity=D(5), symbol_denylist=["AAPL"]
    )
    result = risk.evaluate(policy, context())
    assert not result.ok
    assert [c.name for c in result.failed] == ["max_order_value", "max_quantity", "symbol_lists"]
    assert result.failed[0].limit == "500"
    assert result.failed[0].value == "1000.00"
    assert "max_quantity: quantity 10 exceeds the limit 5" in result.describe_failures()


def test_policies_resolve_platform_then_user_then_connection(alice: UserCreds) -> None:
    connection = BrokerConnection.objects.create(
        end_user=alice.user, broker="paper", environment="paper"
    )
    platform = alice.platform.platform
    assert risk.resolve_policy(connection) == risk.EffectivePolicy()
    RiskPolicy.objects.create(platform=platform, max_order_value=D(1000), max_quantity=D(100))
    RiskPolicy.objects.create(platform=platform, end_user=alice.user, max_order_value=D(500))
    RiskPolicy.objects.create(
        platform=platform, end_user=alice.user, connection=connection, allow_short_selling=False
    )
    policy = risk.resolve_policy(connection)
    assert policy.max_order_value == D(500)
    assert policy.max_quantity == D(100)
    assert policy.allow_short_selling is False
    assert policy.max_notional_per_day is None
