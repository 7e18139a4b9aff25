"""Trading: create_order -> confirm_trade through the real MCP server, and the safety rules
of the trading service under concurrency, expiry, halts and risk limits (paper broker)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection as db_connection
from django.test import override_settings
from django.utils import timezone

from audit.models import AuditEvent
from brokers.base import OrderRequest, OrderType, Side
from brokers.paper.models import PaperOrder
from controlplane.accesstokens import Principal
from controlplane.errors import (
    AwaitingApproval,
    BrokerFailure,
    ConfirmationExpired,
    ConfirmationUsed,
    ForbiddenScope,
    NotFound,
    RiskRejected,
    TradingDisabled,
    TradingHalted,
)
from controlplane.models import (
    ALL_SCOPES,
    BrokerAccount,
    BrokerConnection,
    GlobalTradingHalt,
    PendingTrade,
    RiskPolicy,
)
from controlplane.services import portfolio, trading
from controlplane.services.connections import create_connection, set_trading_enabled
from controlplane.services.platforms import set_trading_halted
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user
from tests.mcp_harness import McpServer, call, call_tool, first_account, text_of, token_for

D = Decimal
BUY_5 = OrderRequest(symbol="AAPL", side=Side.BUY, quantity=D(5), order_type=OrderType.MARKET)


def principal_of(user: UserCreds, scopes: frozenset[str] = ALL_SCOPES) -> Principal:
    return Principal(
        end_user_pk=user.user.pk,
        user_id=user.user_id,
        platform_pk=user.platform.platform.pk,
        client_id=user.platform.client_id,
        scopes=scopes,
        jti="test-jti-0000000000",
        expires_at=timezone.now() + timedelta(hours=1),
    )


def trading_user(name: str = "alice", *, granted: bool = True) -> tuple[UserCreds, str]:
    user = make_user(make_platform(f"P-{name}"), name)
    connection = create_connection(
        user.user, broker="paper", environment=None, trading_requested=True, actor=OPERATOR
    )
    if granted:
        set_trading_enabled(connection, True, actor=OPERATOR)
    (account, _), *_ = portfolio.list_accounts(principal_of(user))
    return user, account.id


def audit_actions(trade: PendingTrade) -> list[str]:
    return list(
        AuditEvent.objects.filter(target=f"trade:{trade.confirmation_id}")
        .order_by("seq")
        .values_list("action", flat=True)
    )


def paper_orders(trade: PendingTrade) -> int:
    return PaperOrder.objects.filter(client_order_id=trade.client_order_id).count()


# ---- Through the MCP server ---------------------------------------------------------------------


def test_buy_then_sell_changes_positions_only_after_confirm(
    server: McpServer, trader: UserCreds
) -> None:
    set_trading_enabled(BrokerConnection.objects.get(end_user=trader.user), True, actor=OPERATOR)
    token = token_for(server, trader)
    account_id = first_account(server, token)

    async def work(client: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        created = await client.call_tool(
            "create_order",
            {
                "account_id": account_id,
                "symbol": "AAPL",
                "side": "BUY",
                "quantity": 4,
                "order_type": "MARKET",
            },
        )
        seen["created"] = created
        seen["positions_before"] = await client.call_tool(
            "get_positions", {"account_id": account_id}
        )
        seen["pending"] = await client.call_tool("list_pending_trades", {})
        confirmation_id = created.structured_content["confirmation_id"]
        seen["confirmed"] = await client.call_tool(
            "confirm_trade", {"confirmation_id": confirmation_id}
        )
        seen["again"] = await client.call_tool(
            "confirm_trade", {"confirmation_id": confirmation_id}
        )
        seen["positions_after"] = await client.call_tool(
            "get_positions", {"account_id": account_id}
        )
        sell = await client.call_tool(
            "create_order",
            {
                "account_id": account_id,
                "symbol": "AAPL",
                "side": "SELL",
                "quantity": 4,
                "order_type": "MARKET",
            },
        )
        seen["sold"] = await client.call_tool(
            "confirm_trade", {"confirmation_id": sell.structured_content["confirmation_id"]}
        )
        seen["positions_end"] = await client.call_tool("get_positions", {"account_id": account_id})
        return seen

    seen = call(server.mcp_url, token, work)
    created = seen["created"].structured_content
    assert created["status"] == "pending"
    assert created["summary"].startswith("BUY 4 AAPL MARKET in ")
    assert "confirm by" in created["summary"]
    assert len(created["confirmation_id"]) >= 3 + 32
    assert seen["positions_before"].structured_content["data"] == []
    assert [p["confirmation_id"] for p in seen["pending"].structured_content["pending"]] == [
        created["confirmation_id"]
    ]
    confirmed = seen["confirmed"].structured_content
    assert confirmed["status"] == "submitted"
    assert confirmed["broker_order_id"]
    assert text_of(seen["again"]).startswith("confirmation_used:")
    assert confirmed["broker_order_id"] in text_of(seen["again"])
    assert [
        (p["symbol"], p["quantity"]) for p in seen["positions_after"].structured_content["data"]
    ] == [("AAPL", "4")]
    assert seen["sold"].structured_content["status"] == "submitted"
    assert seen["positions_end"].structured_content["data"] == []
    trade = PendingTrade.objects.get(confirmation_id=created["confirmation_id"])
    assert audit_actions(trade) == ["trade.created", "trade.confirmed", "trade.submitted"]


def test_a_read_only_token_cannot_trade_and_creates_nothing(
    server: McpServer, trader: UserCreds
) -> None:
    token = token_for(server, trader, frozenset({"read"}))
    account_id = first_account(server, token)
    result = call_tool(
        server.mcp_url,
        token,
        "create_order",
        {
            "account_id": account_id,
            "symbol": "AAPL",
            "side": "BUY",
            "quantity": 1,
            "order_type": "MARKET",
        },
    )
    assert text_of(result).startswith("forbidden_scope:")
    assert not PendingTrade.objects.exists()


# ---- The service ---------------------------------------------------------------------------------


def test_trading_must_be_granted_at_create_and_at_confirm(db: None) -> None:
    user, account_id = trading_user(granted=False)
    principal = principal_of(user)
    with pytest.raises(TradingDisabled):
        trading.create_order(principal, account_id, BUY_5)
    connection = BrokerConnection.objects.get(end_user=user.user)
    set_trading_enabled(connection, True, actor=OPERATOR)
    trade = trading.create_order(principal, account_id, BUY_5)
    set_trading_enabled(connection, False, actor=OPERATOR)
    with pytest.raises(TradingDisabled):
        trading.confirm_trade(principal, trade.confirmation_id)
    assert paper_orders(trade) == 0
    with pytest.raises(ForbiddenScope):
        trading.create_order(principal_of(user, frozenset({"read"})), account_id, BUY_5)


@pytest.mark.parametrize("halt", ["platform", "global"])
def test_a_halt_blocks_the_next_create_and_confirm(db: None, halt: str) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    trade = trading.create_order(principal, account_id, BUY_5)
    if halt == "platform":
        set_trading_halted(user.platform.platform, True, reason="test", actor=OPERATOR)
    else:
        GlobalTradingHalt.objects.update_or_create(pk=1, defaults={"halted": True})
    with pytest.raises(TradingHalted):
        trading.create_order(principal, account_id, BUY_5)
    with pytest.raises(TradingHalted):
        trading.confirm_trade(principal, trade.confirmation_id)
    assert paper_orders(trade) == 0


def test_another_users_confirmation_is_not_found(db: None) -> None:
    alice, account_id = trading_user("alice")
    mallory, _ = trading_user("mallory")
    trade = trading.create_order(principal_of(alice), account_id, BUY_5)
    with pytest.raises(NotFound) as foreign:
        trading.confirm_trade(principal_of(mallory), trade.confirmation_id)
    with pytest.raises(NotFound) as missing:
        trading.confirm_trade(principal_of(mallory), "cf_" + "x" * 32)
    assert str(foreign.value) == str(missing.value)
    assert paper_orders(trade) == 0


def test_a_confirm_after_expiry_fails_with_no_worker_running(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    with time_machine.travel(timezone.now() - timedelta(seconds=121), tick=False):
        trade = trading.create_order(principal, account_id, BUY_5)
    # The database decides: expires_at is in the past by its own clock.
    with pytest.raises(ConfirmationExpired):
        trading.confirm_trade(principal, trade.confirmation_id)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.PENDING  # nothing ran; no order either
    assert paper_orders(trade) == 0
    assert trading.expire_pending_trades() == 1
    assert trading.expire_pending_trades() == 0
    assert audit_actions(trade) == ["trade.created", "trade.expired"]


def test_fifty_concurrent_confirms_make_exactly_one_order(committed_db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    trade = trading.create_order(principal, account_id, BUY_5)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []

    def confirm() -> None:
        try:
            barrier.wait()
            trading.confirm_trade(principal, trade.confirmation_id)
            outcomes.append("submitted")
        except ConfirmationUsed:
            outcomes.append("confirmation_used")
        except Exception as exc:  # reported below
            outcomes.append(repr(exc))
        finally:
            db_connection.close()

    threads = [threading.Thread(target=confirm) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["confirmation_used"] * 49 + ["submitted"]
    assert paper_orders(trade) == 1
    assert audit_actions(trade) == ["trade.created", "trade.confirmed", "trade.submitted"]


def test_a_broker_refusal_fails_the_trade_with_its_reason(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    trade = trading.create_order(principal, account_id, BUY_5)
    sunday = timezone.now() + timedelta(days=(6 - timezone.now().weekday()) % 7 or 7)
    with (
        override_settings(PAPER_MARKET_HOURS="regular"),
        time_machine.travel(sunday),
        pytest.raises(BrokerFailure) as refused,
    ):
        trading.confirm_trade(principal, trade.confirmation_id)
    assert "market_closed" in str(refused.value)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.FAILED
    assert "market_closed" in trade.status_reason
    assert audit_actions(trade) == ["trade.created", "trade.confirmed", "trade.failed"]
    with pytest.raises(ConfirmationUsed):
        trading.confirm_trade(principal, trade.confirmation_id)


def test_pending_orders_count_against_the_daily_notional(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    price = portfolio.get_quotes(principal, ["AAPL"])[1][0].ask
    RiskPolicy.objects.create(
        platform=user.platform.platform, max_notional_per_day=(price * 8).quantize(D("0.01"))
    )
    trading.create_order(principal, account_id, BUY_5)  # pending, not confirmed
    with pytest.raises(RiskRejected, match="max_notional_per_day"):
        trading.create_order(principal, account_id, BUY_5)
    assert PendingTrade.objects.count() == 1


def test_risk_checks_run_again_at_confirm(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    trade = trading.create_order(principal, account_id, BUY_5)
    RiskPolicy.objects.create(platform=user.platform.platform, max_orders_per_day=0)
    with pytest.raises(RiskRejected, match="max_orders_per_day"):
        trading.confirm_trade(principal, trade.confirmation_id)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.FAILED
    assert paper_orders(trade) == 0


def test_an_identical_order_inside_the_duplicate_window_is_refused(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    RiskPolicy.objects.create(platform=user.platform.platform, duplicate_window_seconds=60)
    trading.create_order(principal, account_id, BUY_5)
    with pytest.raises(RiskRejected, match="duplicate_order"):
        trading.create_order(principal, account_id, BUY_5)
    trading.create_order(principal, account_id, replace(BUY_5, quantity=D(6)))


def test_orders_above_the_threshold_wait_for_an_operator(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    RiskPolicy.objects.create(platform=user.platform.platform, approval_threshold_value=D(100))
    trade = trading.create_order(principal, account_id, BUY_5)
    assert trade.status == PendingTrade.Status.AWAITING_APPROVAL
    with pytest.raises(AwaitingApproval):
        trading.confirm_trade(principal, trade.confirmation_id)
    trading.approve_trade(trade.confirmation_id, actor=OPERATOR)
    confirmed = trading.confirm_trade(principal, trade.confirmation_id)
    assert confirmed.status == PendingTrade.Status.SUBMITTED
    assert audit_actions(trade) == [
        "trade.created",
        "trade.approved",
        "trade.confirmed",
        "trade.submitted",
    ]
    rejected = trading.create_order(principal, account_id, replace(BUY_5, quantity=D(7)))
    trading.reject_trade(rejected.confirmation_id, reason="too large today", actor=OPERATOR)
    with pytest.raises(RiskRejected, match="too large today"):
        trading.confirm_trade(principal, rejected.confirmation_id)


def test_a_cancel_goes_through_the_same_confirmation(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    price = portfolio.get_quotes(principal, ["AAPL"])[1][0].bid
    resting = OrderRequest(
        symbol="AAPL",
        side=Side.BUY,
        quantity=D(1),
        order_type=OrderType.LIMIT,
        limit_price=(price * D("0.5")).quantize(D("0.01")),
    )
    placed = trading.confirm_trade(
        principal, trading.create_order(principal, account_id, resting).confirmation_id
    )
    cancel = trading.create_cancel(principal, account_id, placed.broker_order_id)
    account = BrokerAccount.objects.get(id=account_id)
    assert (
        PaperOrder.objects.get(
            account__account_key=account.broker_account_key, order_id=placed.broker_order_id
        ).status
        == "OPEN"
    )
    done = trading.confirm_trade(principal, cancel.confirmation_id)
    assert done.status == PendingTrade.Status.SUBMITTED
    assert PaperOrder.objects.get(
        order_id=placed.broker_order_id, account__account_key=account.broker_account_key
    ).status == ("CANCELLED")
    assert audit_actions(cancel) == ["trade.created", "trade.confirmed", "trade.cancelled"]


def test_client_order_ids_are_derived_short_and_stable() -> None:
    first = trading.derive_client_order_id("cf_abc")
    assert first == trading.derive_client_order_id("cf_abc")
    assert first != trading.derive_client_order_id("cf_abd")
    assert len(first) <= 20
    assert first.isalnum()


def test_list_pending_trades_hides_expired_ones(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    with time_machine.travel(timezone.now() - timedelta(seconds=200), tick=False):
        trading.create_order(principal, account_id, BUY_5)
    fresh = trading.create_order(principal, account_id, replace(BUY_5, quantity=D(2)))
    assert [t.confirmation_id for t in trading.open_trades(principal)] == [fresh.confirmation_id]


def run_command(*args: str) -> Any:
    import io
    import json

    from django.core.management import call_command

    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_operator_commands_grant_halt_approve_and_reject(db: None) -> None:
    from django.core.management.base import CommandError

    user, account_id = trading_user(granted=False)
    principal = principal_of(user)
    connection = BrokerConnection.objects.get(end_user=user.user)
    assert run_command("grant_trading", str(connection.pk))["changed"] is True
    assert run_command("grant_trading", str(connection.pk))["changed"] is False
    RiskPolicy.objects.create(platform=user.platform.platform, approval_threshold_value=D(1))
    first = trading.create_order(principal, account_id, BUY_5)
    second = trading.create_order(principal, account_id, replace(BUY_5, quantity=D(3)))
    assert run_command("approve_trade", first.confirmation_id)["status"] == "pending"
    assert run_command("reject_trade", second.confirmation_id, "--reason", "no")["status"] == (
        "rejected"
    )
    with pytest.raises(CommandError, match=r"confirmation_used|already"):
        run_command("approve_trade", first.confirmation_id)
    client_id = user.platform.client_id
    assert run_command("halt_trading", "--platform", client_id)["halted"] is True
    with pytest.raises(TradingHalted):
        trading.confirm_trade(principal, first.confirmation_id)
    run_command("resume_trading", "--platform", client_id)
    run_command("halt_trading")
    assert GlobalTradingHalt.is_halted()
    run_command("resume_trading")
    assert not GlobalTradingHalt.is_halted()
    run_command("revoke_trading", str(connection.pk))
    with pytest.raises(TradingDisabled):
        trading.confirm_trade(principal, first.confirmation_id)
    operator_actions = set(
        AuditEvent.objects.filter(actor_kind="operator").values_list("action", flat=True)
    )
    assert {
        "connection.trading_granted",
        "connection.trading_revoked",
        "trade.approved",
        "trade.rejected",
        "platform.trading_halted",
        "platform.trading_resumed",
        "system.trading_halted",
        "system.trading_resumed",
    } <= operator_actions


def test_the_admin_queue_approves_and_rejects_with_a_reason(db: None) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    browser = Client()
    browser.login(username="ops", password="correct horse battery")
    user, account_id = trading_user()
    principal = principal_of(user)
    RiskPolicy.objects.create(platform=user.platform.platform, approval_threshold_value=D(1))
    first = trading.create_order(principal, account_id, BUY_5)
    second = trading.create_order(principal, account_id, replace(BUY_5, quantity=D(3)))
    page = browser.get("/admin/controlplane/pendingtrade/?queue=approval")
    assert page.status_code == 200
    assert first.summary[:20] in page.content.decode()
    url = "/admin/controlplane/pendingtrade/"
    browser.post(url, {"action": "approve", "_selected_action": [first.pk]})
    refused = browser.post(url, {"action": "reject", "_selected_action": [second.pk]}, follow=True)
    assert "Give a reason" in refused.content.decode()
    browser.post(url, {"action": "reject", "_selected_action": [second.pk], "reason": "limit"})
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == PendingTrade.Status.PENDING
    assert (second.status, second.status_reason) == (PendingTrade.Status.REJECTED, "limit")
    assert AuditEvent.objects.filter(action="trade.approved", actor_id="ops").count() == 1
    assert (
        browser.post(
            "/admin/controlplane/globaltradinghalt/add/", {"halted": "on", "reason": "incident"}
        ).status_code
        == 302
    )
    assert GlobalTradingHalt.is_halted()
    with pytest.raises(TradingHalted):
        trading.confirm_trade(principal, first.confirmation_id)


def test_closing_the_client_during_confirm_still_records_one_order(
    server: McpServer, trader: UserCreds
) -> None:
    """The client hangs up after sending confirm_trade, at growing delays. Whenever it
    hangs up, the trade is either untouched (still pending, no order: the call was cut off
    before the confirmation began) or ends in one recorded outcome with exactly one order;
    it is never left submitting, and never sent twice."""
    import httpx

    from tests.mcp_harness import raw_post

    set_trading_enabled(BrokerConnection.objects.get(end_user=trader.user), True, actor=OPERATOR)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    created = call_tool(
        server.mcp_url,
        token,
        "create_order",
        {
            "account_id": account_id,
            "symbol": "MSFT",
            "side": "BUY",
            "quantity": 1,
            "order_type": "MARKET",
        },
    )
    confirmation_id = created.structured_content["confirmation_id"]
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "confirm_trade",
            "arguments": {"confirmation_id": confirmation_id},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    trade = PendingTrade.objects.get(confirmation_id=confirmation_id)
    for read_timeout in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 5.0):
        with contextlib.suppress(httpx.ReadTimeout):
            raw_post(
                server.mcp_url,
                {"authorization": f"Bearer {token}", "mcp-name": "confirm_trade"},
                body,
                timeout=httpx.Timeout(5.0, read=read_timeout),
            )
        deadline = timezone.now() + timedelta(seconds=10)
        trade.refresh_from_db()
        while trade.status == PendingTrade.Status.SUBMITTING:
            assert timezone.now() < deadline, "left submitting: no recorded outcome"
            threading.Event().wait(0.05)
            trade.refresh_from_db()
        if trade.status == PendingTrade.Status.PENDING:
            assert paper_orders(trade) == 0
            continue
        break
    assert trade.status == PendingTrade.Status.SUBMITTED
    assert paper_orders(trade) == 1
    assert audit_actions(trade) == ["trade.created", "trade.confirmed", "trade.submitted"]


def test_a_lapsed_trade_over_a_risk_limit_is_refused_as_expired(db: None) -> None:
    """Found by the lifecycle state machine: a late confirm that would also fail a risk
    check is refused as expired, not turned into a failed trade."""
    user, account_id = trading_user()
    principal = principal_of(user)
    with time_machine.travel(timezone.now() - timedelta(seconds=121), tick=False):
        trade = trading.create_order(principal, account_id, BUY_5)
    RiskPolicy.objects.create(platform=user.platform.platform, max_orders_per_day=0)
    with pytest.raises(ConfirmationExpired):
        trading.confirm_trade(principal, trade.confirmation_id)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.PENDING
    assert paper_orders(trade) == 0
    assert trading.expire_pending_trades() == 1
    assert audit_actions(trade) == ["trade.created", "trade.expired"]


def test_a_lapsed_trade_cannot_be_approved_even_before_the_sweep(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    RiskPolicy.objects.create(platform=user.platform.platform, approval_threshold_value=D(1))
    with time_machine.travel(timezone.now() - timedelta(seconds=121), tick=False):
        trade = trading.create_order(principal, account_id, BUY_5)
    assert trade.status == PendingTrade.Status.AWAITING_APPROVAL
    with pytest.raises(ConfirmationExpired):
        trading.approve_trade(trade.confirmation_id, actor=OPERATOR)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.AWAITING_APPROVAL
    assert trading.expire_pending_trades() == 1
    assert audit_actions(trade) == ["trade.created", "trade.expired"]


def test_approval_opens_the_policys_confirmation_window(db: None) -> None:
    user, account_id = trading_user()
    principal = principal_of(user)
    RiskPolicy.objects.create(
        platform=user.platform.platform,
        approval_threshold_value=D(100),
        approval_extends_seconds=900,
    )
    trade = trading.create_order(principal, account_id, BUY_5)
    approved = trading.approve_trade(trade.confirmation_id, actor=OPERATOR)
    window = approved.expires_at - timezone.now()
    assert timedelta(seconds=890) < window <= timedelta(seconds=900)
    with time_machine.travel(timezone.now() + timedelta(seconds=600)):
        assert trading.confirm_trade(principal, trade.confirmation_id).status == "submitted"
