"""The trade lifecycle as a Hypothesis state machine (paper broker, real PostgreSQL).

One trading user per example, holding 5 KO and 5 INTC, with an approval threshold of $150,
$400 or $1000 and $2500 or $20000 of cash. Each step draws an action: create orders (fresh,
or created 121 s ago so already lapsed), cancel a resting order, confirm (once, twice,
or over a lowered daily order limit),
halt the platform or everything for a create and a confirm, approve, reject or expire. A
model of every trade predicts each outcome it can; after every step these invariants are checked:

1. At most one broker submission per confirmation: 0 or 1 paper orders per client order id,
   and 1 only for a submitted trade. (Broker faults, which leave trades unknown, are driven
   through the fake E*TRADE's fault switches in tests/test_etrade_trading.py.)
2. Every state change has exactly one audit row: the rows form a valid path for the trade's
   status (created[, approved], then rejected | expired | failed (a risk failure at confirm)
   | confirmed + submitted/cancelled/failed/unknown) and equal the model's list.
3. Terminal states (submitted, failed, rejected, expired, unknown) never change.
4. Nothing reaches the broker while trading is halted.
Plus: the audit chain verifies, no trade is left submitting, and there are no trades the
model does not know about.

Each example runs in a savepoint rolled back at its end, so examples start from the same
database (and the audit chain grows only by the example's own rows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import time_machine
from django.db import transaction
from django.db.models import Count
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from audit.chain import verify_chain
from audit.events import Action
from audit.models import AuditEvent
from brokers.base import OrderRequest, OrderType, Side
from brokers.paper.models import PaperOrder
from controlplane.errors import (
    AwaitingApproval,
    BrokerFailure,
    ConfirmationExpired,
    ConfirmationUsed,
    NotFound,
    RiskRejected,
    TradingHalted,
)
from controlplane.models import PendingTrade, RiskPolicy
from controlplane.services import portfolio, trading
from controlplane.services.platforms import set_global_halt, set_trading_halted
from tests.conftest import OPERATOR
from tests.test_trading import principal_of, trading_user

D = Decimal
CENT = D("0.01")
Status = PendingTrade.Status
Kind = PendingTrade.Kind

SYMBOLS = ("KO", "INTC", "AAPL", "MSFT")  # $35 to $480 a share; KO and INTC held
OPEN = frozenset({Status.PENDING, Status.AWAITING_APPROVAL})
TERMINAL = frozenset(
    {Status.SUBMITTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.UNKNOWN}
)
# What confirm_trade (and approve/reject) must answer for a trade that is not pending.
REFUSALS: dict[str, type[Exception]] = {
    Status.AWAITING_APPROVAL: AwaitingApproval,
    Status.REJECTED: RiskRejected,
    Status.EXPIRED: ConfirmationExpired,
    Status.SUBMITTED: ConfirmationUsed,
    Status.FAILED: ConfirmationUsed,
    Status.UNKNOWN: ConfirmationUsed,
}
CONFIRM_ERRORS = (
    AwaitingApproval,
    BrokerFailure,  # and OutcomeUnknown, its subclass
    ConfirmationExpired,
    ConfirmationUsed,
    NotFound,
    RiskRejected,
    TradingHalted,
)


@dataclass(frozen=True)
class OrderSpec:
    symbol: str
    side: Side
    quantity: int
    pricing: str  # market, marketable_limit or resting_limit (away from the market)


PRICING = st.sampled_from(["market", "marketable_limit", "resting_limit"])
ORDERS = st.one_of(
    st.builds(OrderSpec, st.sampled_from(SYMBOLS), st.just(Side.BUY), st.integers(1, 5), PRICING),
    # Sells only of what the seeded trades bought, so that some go through.
    st.builds(
        OrderSpec, st.sampled_from(["KO", "INTC"]), st.just(Side.SELL), st.integers(1, 5), PRICING
    ),
)

# What the runs reached, over all examples of one test (asserted at the end).
STATS: Counter[str] = Counter()


def note(what: str) -> None:
    STATS[what] += 1
    event(what)


@dataclass
class Tracked:
    """The model of one trade."""

    name: str  # t1, t2, ... in creation order: what a failing example prints
    confirmation_id: str
    kind: str
    status: str
    actions: list[str] = field(default_factory=list)
    lapsed: bool = False  # its expires_at has passed by the database's clock
    resting: bool = False  # a limit order away from the market: stays open once placed


def valid_path(actions: list[str], status: str, kind: str) -> bool:
    """The audit actions a trade in `status` may have, whatever the model says."""
    done = Action.TRADE_CANCELLED if kind == Kind.CANCEL else Action.TRADE_SUBMITTED
    if actions[:1] != [Action.TRADE_CREATED]:
        return False
    rest = actions[1:]
    if rest[:1] == [Action.TRADE_APPROVED]:
        if status == Status.AWAITING_APPROVAL:
            return False
        rest = rest[1:]
    allowed: dict[str, list[list[str]]] = {
        Status.PENDING: [[]],
        Status.AWAITING_APPROVAL: [[]],
        Status.REJECTED: [[Action.TRADE_REJECTED]],
        Status.EXPIRED: [[Action.TRADE_EXPIRED]],
        # A risk failure at confirm is failed without confirmed; a broker failure after it.
        Status.FAILED: [[Action.TRADE_FAILED], [Action.TRADE_CONFIRMED, Action.TRADE_FAILED]],
        Status.SUBMITTED: [[Action.TRADE_CONFIRMED, done]],
        Status.UNKNOWN: [[Action.TRADE_CONFIRMED, Action.TRADE_UNKNOWN]],
    }
    return rest in allowed.get(status, [])


class TradeLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.atomic: Any = None
        self.model: dict[str, Tracked] = {}
        self.terminal: dict[str, str] = {}  # invariant 3: the first terminal status seen
        self.halted_platform = False
        self.halted_globally = False
        self.orders_at_halt: int | None = None
        self.seeding = True

    def note(self, what: str) -> None:
        if not self.seeding:
            note(what)

    def pick(self, data: st.DataObject, *wanted: str) -> str:
        """A trade, usually one in a `wanted` status (where the rule does something), else
        any trade (where it must be refused and change nothing)."""
        everyone = [t.name for t in self.model.values()]
        preferred = [t.name for t in self.model.values() if t.status in wanted]
        if preferred and data.draw(st.integers(0, 3), label="any status?") != 0:
            everyone = preferred
        name = data.draw(st.sampled_from(everyone), label="trade")
        return next(t.confirmation_id for t in self.model.values() if t.name == name)

    # ---- Setup and teardown --------------------------------------------------------------

    @initialize(
        threshold=st.sampled_from([D(150), D(400), D(1000)]),
        cash=st.sampled_from(["2500", "20000"]),
    )
    def start(self, threshold: Decimal, cash: str) -> None:
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        set_global_halt(False, reason="", actor=OPERATOR)
        with override_settings(PAPER_STARTING_CASH=cash):
            self.user, self.account_id = trading_user("alice")
        self.principal = principal_of(self.user)
        self.platform = self.user.platform.platform
        self.threshold = None
        self.policy = RiskPolicy.objects.create(platform=self.platform)
        # Some shares to sell: 5 KO and 5 INTC, bought through the same flow (and model),
        # before the approval threshold applies.
        for symbol in ("KO", "INTC"):
            buy = OrderRequest(symbol, Side.BUY, D(5), OrderType.MARKET)
            seeded = self.create(buy, lapsed=False, resting=False)
            assert seeded is not None
            self.confirm(seeded)
            assert self.model[seeded].status == Status.SUBMITTED
        RiskPolicy.objects.filter(pk=self.policy.pk).update(approval_threshold_value=threshold)
        self.threshold = threshold
        self.seeding = False
        self.note("examples")

    def teardown(self) -> None:
        if self.atomic is not None:
            transaction.set_rollback(True)
            self.atomic.__exit__(None, None, None)
            self.atomic = None

    # ---- Helpers -------------------------------------------------------------------------

    @property
    def halted(self) -> bool:
        return self.halted_platform or self.halted_globally

    def paper_orders_total(self) -> int:
        return PaperOrder.objects.filter(account__connection__end_user=self.user.user).count()

    def status_of(self, confirmation_id: str) -> str:
        return PendingTrade.objects.get(confirmation_id=confirmation_id).status

    def request_for(self, order: OrderSpec) -> OrderRequest:
        symbol, side, quantity, pricing = order.symbol, order.side, order.quantity, order.pricing
        if pricing == "market":
            return OrderRequest(symbol, side, D(quantity), OrderType.MARKET)
        _, (quote,) = portfolio.get_quotes(self.principal, [symbol])
        buy = side == Side.BUY
        factor = {
            "marketable_limit": D("1.02") if buy else D("0.98"),
            "resting_limit": D("0.90") if buy else D("1.10"),
        }[pricing]
        price = ((quote.ask if buy else quote.bid) * factor).quantize(CENT)
        return OrderRequest(symbol, side, D(quantity), OrderType.LIMIT, limit_price=price)

    def track_new(self, trade: PendingTrade, *, lapsed: bool, resting: bool) -> str:
        needs_approval = self.threshold is not None and trade.notional > self.threshold
        expected = Status.AWAITING_APPROVAL if needs_approval else Status.PENDING
        assert trade.status == expected, (trade.status, trade.notional, self.threshold)
        self.model[trade.confirmation_id] = Tracked(
            f"t{len(self.model) + 1}",
            trade.confirmation_id,
            trade.kind,
            trade.status,
            [Action.TRADE_CREATED],
            lapsed=lapsed,
            resting=resting,
        )
        self.note(f"created {trade.kind}: {trade.status}" + (" lapsed" if lapsed else ""))
        return trade.confirmation_id

    def create(self, request: OrderRequest, *, lapsed: bool, resting: bool = False) -> str | None:
        """create_order, checked against the model; the new trade's id, or None if refused."""
        count = PendingTrade.objects.filter(end_user=self.user.user).count()
        try:
            if lapsed:
                # The TTL is 120 s: created 121 s ago, it lapsed a second ago by the
                # database's clock, with no expirer run yet.
                back = timezone.now() - timedelta(seconds=121)
                with time_machine.travel(back, tick=False):
                    trade = trading.create_order(self.principal, self.account_id, request)
            else:
                trade = trading.create_order(self.principal, self.account_id, request)
        except TradingHalted:
            assert self.halted
            self.note("create refused: halted")
        except (RiskRejected, BrokerFailure) as exc:
            assert not self.halted
            self.note(f"create refused: {type(exc).__name__}")
        else:
            assert not self.halted, "create_order succeeded while trading is halted"
            return self.track_new(trade, lapsed=lapsed, resting=resting)
        assert PendingTrade.objects.filter(end_user=self.user.user).count() == count
        return None

    def confirm(self, confirmation_id: str) -> None:
        tracked = self.model[confirmation_id]
        orders_before = self.paper_orders_total()
        raised: Exception | None = None
        try:
            trading.confirm_trade(self.principal, confirmation_id)
        except CONFIRM_ERRORS as exc:
            raised = exc
        status = self.status_of(confirmation_id)
        got = f"{raised!r} with the trade now {status}"
        refusal = REFUSALS.get(tracked.status)
        if refusal is not None:
            assert type(raised) is refusal, f"{tracked.status}: expected {refusal}, got {got}"
            assert status == tracked.status
            assert self.paper_orders_total() == orders_before
            self.note(f"confirm refused: {tracked.status}")
            return
        assert tracked.status == Status.PENDING
        if self.halted:
            assert type(raised) is TradingHalted, f"halted: got {got}"
            assert status == Status.PENDING
            assert self.paper_orders_total() == orders_before, "an order reached the broker"
            self.note("confirm refused: halted")
            return
        if tracked.lapsed:
            assert self.paper_orders_total() == orders_before
            assert type(raised) is ConfirmationExpired, f"lapsed: got {got}"
            assert status == Status.PENDING
            self.note("confirm refused: lapsed")
            return
        done = Action.TRADE_CANCELLED if tracked.kind == Kind.CANCEL else Action.TRADE_SUBMITTED
        if status == Status.SUBMITTED:
            assert raised is None, got
            tracked.actions += [Action.TRADE_CONFIRMED, done]
        elif status == Status.FAILED and type(raised) is RiskRejected:
            tracked.actions += [Action.TRADE_FAILED]
            self.note("failed: risk at confirm")
        elif status == Status.FAILED:
            assert type(raised) is BrokerFailure, got
            tracked.actions += [Action.TRADE_CONFIRMED, Action.TRADE_FAILED]
            self.note("failed: broker refused")
        else:
            raise AssertionError(f"confirm of a pending trade left it {status} ({raised!r})")
        tracked.status = status
        self.note(f"confirmed {tracked.kind}: {status}")

    # ---- The step ------------------------------------------------------------------------
    # One rule that draws what to do next. With one Hypothesis rule per action, swarm
    # testing switches whole actions off for runs of similar examples, and some runs never
    # approved (or never confirmed) anything. Repeated entries weigh an action more.

    ACTIONS = (
        "create",
        "create",
        "create lapsed",
        "cancel",
        "confirm",
        "confirm",
        "confirm twice",
        "confirm over the daily limit",
        "trade while halted",
        "approve",
        "approve",
        "reject",
        "expire",
    )

    @rule(action=st.sampled_from(ACTIONS), data=st.data())
    def step(self, action: str, data: st.DataObject) -> None:
        getattr(self, "do_" + action.replace(" ", "_"))(data)

    def do_create(self, data: st.DataObject) -> None:
        for order in data.draw(st.lists(ORDERS, min_size=1, max_size=3), label="orders"):
            request = self.request_for(order)
            self.create(request, lapsed=False, resting=order.pricing == "resting_limit")

    def do_create_lapsed(self, data: st.DataObject) -> None:
        order = data.draw(ORDERS, label="order")
        back = timezone.now() - timedelta(seconds=121)
        with time_machine.travel(back, tick=False):
            request = self.request_for(order)
        self.create(request, lapsed=True, resting=order.pricing == "resting_limit")

    def do_cancel(self, data: st.DataObject) -> None:
        """Propose cancelling a resting limit order that was placed."""
        resting = [
            t.name
            for t in self.model.values()
            if t.kind == Kind.ORDER and t.resting and t.status == Status.SUBMITTED
        ]
        if not resting:
            return
        name = data.draw(st.sampled_from(resting), label="order to cancel")
        placed = next(t for t in self.model.values() if t.name == name)
        order_id = PendingTrade.objects.get(confirmation_id=placed.confirmation_id).broker_order_id
        count = PendingTrade.objects.filter(end_user=self.user.user).count()
        try:
            trade = trading.create_cancel(self.principal, self.account_id, order_id)
        except BrokerFailure:  # cancelled (or filled) already
            self.note("cancel refused: order final")
        else:
            self.track_new(trade, lapsed=False, resting=False)
            return
        assert PendingTrade.objects.filter(end_user=self.user.user).count() == count

    def do_confirm(self, data: st.DataObject) -> None:
        self.confirm(self.pick(data, Status.PENDING))

    def do_confirm_twice(self, data: st.DataObject) -> None:
        confirmation_id = self.pick(data, Status.PENDING)
        self.confirm(confirmation_id)
        self.confirm(confirmation_id)

    def do_confirm_over_the_daily_limit(self, data: st.DataObject) -> None:
        """max_orders_per_day under today's count for this one confirm: the risk re-check
        must fail the trade (unless the confirm is refused for another reason)."""
        confirmation_id = self.pick(data, Status.PENDING)
        exposed = PendingTrade.objects.filter(
            end_user=self.user.user, kind=Kind.ORDER, status__in=PendingTrade.EXPOSED_STATUSES
        ).count()
        policy = RiskPolicy.objects.filter(pk=self.policy.pk)
        policy.update(max_orders_per_day=max(0, exposed - 1))
        self.confirm(confirmation_id)
        policy.update(max_orders_per_day=None)

    def do_trade_while_halted(self, data: st.DataObject) -> None:
        """Halt (the platform, or everything), try to create and confirm, then resume."""
        scope = data.draw(st.sampled_from(["platform", "global"]), label="halt")
        self.halt(scope)
        self.create(self.request_for(data.draw(ORDERS, label="order")), lapsed=False)
        self.confirm(self.pick(data, Status.PENDING))
        self.nothing_reaches_the_broker_while_halted()
        self.resume()

    def do_approve(self, data: st.DataObject) -> None:
        confirmation_id = self.pick(data, Status.AWAITING_APPROVAL)
        tracked = self.model[confirmation_id]
        raised: Exception | None = None
        try:
            trading.approve_trade(confirmation_id, actor=OPERATOR)
        except CONFIRM_ERRORS as exc:
            raised = exc
        status = self.status_of(confirmation_id)
        if tracked.status == Status.AWAITING_APPROVAL and tracked.lapsed:
            # The database decides: a window that closed stays closed, swept or not.
            assert type(raised) is ConfirmationExpired, raised
            assert status == Status.AWAITING_APPROVAL
            self.note("approval refused: lapsed")
        elif tracked.status == Status.AWAITING_APPROVAL:
            assert raised is None, raised
            assert status == Status.PENDING
            tracked.actions.append(Action.TRADE_APPROVED)
            tracked.status = Status.PENDING
            self.note("approved")
        else:
            expected = REFUSALS.get(tracked.status, ConfirmationUsed)  # pending: "already"
            assert type(raised) is expected, (tracked.status, raised)
            assert status == tracked.status

    def do_reject(self, data: st.DataObject) -> None:
        confirmation_id = self.pick(data, *OPEN)
        reason = data.draw(st.sampled_from(["too large", "not today"]), label="reason")
        tracked = self.model[confirmation_id]
        raised: Exception | None = None
        try:
            trading.reject_trade(confirmation_id, reason=reason, actor=OPERATOR)
        except CONFIRM_ERRORS as exc:
            raised = exc
        status = self.status_of(confirmation_id)
        if tracked.status in OPEN:
            assert raised is None, raised
            assert status == Status.REJECTED
            tracked.actions.append(Action.TRADE_REJECTED)
            tracked.status = Status.REJECTED
            self.note("rejected")
        else:
            assert type(raised) is REFUSALS[tracked.status], (tracked.status, raised)
            assert status == tracked.status

    def do_expire(self, data: st.DataObject) -> None:
        due = [t for t in self.model.values() if t.status in OPEN and t.lapsed]
        assert trading.expire_pending_trades() == len(due)
        for tracked in due:
            tracked.status = Status.EXPIRED
            tracked.actions.append(Action.TRADE_EXPIRED)
            self.note("expired")

    def halt(self, scope: str) -> None:
        if not self.halted:
            self.orders_at_halt = self.paper_orders_total()
        if scope == "platform":
            set_trading_halted(self.platform, True, reason="state machine", actor=OPERATOR)
            self.halted_platform = True
        else:
            set_global_halt(True, reason="state machine", actor=OPERATOR)
            self.halted_globally = True

    def resume(self) -> None:
        set_trading_halted(self.platform, False, reason="", actor=OPERATOR)
        set_global_halt(False, reason="", actor=OPERATOR)
        self.halted_platform = self.halted_globally = False
        self.orders_at_halt = None

    # ---- Invariants ----------------------------------------------------------------------

    @invariant()
    def statuses_follow_the_model(self) -> None:
        actual = dict(
            PendingTrade.objects.filter(end_user=self.user.user).values_list(
                "confirmation_id", "status"
            )
        )
        assert set(actual) == set(self.model), "trades the model does not know of (or lost)"
        for confirmation_id, status in actual.items():
            assert status != Status.SUBMITTING, "a trade was left submitting"
            assert status == self.model[confirmation_id].status, (confirmation_id, status)
            # 3. Terminal states never change.
            if confirmation_id in self.terminal:
                assert status == self.terminal[confirmation_id], "a terminal state changed"
            elif status in TERMINAL:
                self.terminal[confirmation_id] = status

    @invariant()
    def at_most_one_broker_order_per_confirmation(self) -> None:
        trades = {
            t.client_order_id: t
            for t in PendingTrade.objects.filter(end_user=self.user.user).only(
                "client_order_id", "status", "kind"
            )
        }
        counts = dict(
            PaperOrder.objects.filter(client_order_id__in=list(trades))
            .values_list("client_order_id")
            .annotate(n=Count("pk"))
            .values_list("client_order_id", "n")
        )
        for client_order_id, trade in trades.items():
            orders = counts.get(client_order_id, 0)
            assert orders in (0, 1), (trade.confirmation_id, orders)
            if orders:
                assert trade.status in (Status.SUBMITTED, Status.UNKNOWN), trade.status
            if trade.kind == Kind.ORDER and trade.status == Status.SUBMITTED:
                assert orders == 1, "submitted without a broker order"

    @invariant()
    def one_audit_row_per_transition(self) -> None:
        targets = {f"trade:{cid}": cid for cid in self.model}
        actions: dict[str, list[str]] = {cid: [] for cid in self.model}
        failures: dict[str, str] = {}
        for target, action, outcome in (
            AuditEvent.objects.filter(target__in=list(targets))
            .order_by("seq")
            .values_list("target", "action", "outcome")
        ):
            actions[targets[target]].append(action)
            if action == Action.TRADE_FAILED:
                failures[targets[target]] = outcome
        for cid, tracked in self.model.items():
            assert valid_path(actions[cid], tracked.status, tracked.kind), (
                tracked.status,
                actions[cid],
            )
            assert actions[cid] == tracked.actions, (tracked.status, actions[cid])
            if cid in failures:  # a risk failure at confirm is never "confirmed"
                confirmed = Action.TRADE_CONFIRMED in actions[cid]
                assert failures[cid] == ("failed" if confirmed else "risk_rejected")

    @invariant()
    def nothing_reaches_the_broker_while_halted(self) -> None:
        if self.halted:
            assert self.orders_at_halt is not None
            assert self.paper_orders_total() == self.orders_at_halt

    @invariant()
    def audit_chain_intact(self) -> None:
        verdict = verify_chain()
        assert verdict.ok, verdict.problem
        STATS["invariant checks"] += 1  # once after setup, then once per step


def test_trade_lifecycle_state_machine(db: None) -> None:
    STATS.clear()
    run_state_machine_as_test(
        TradeLifecycle,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    assert verify_chain().ok
    steps = STATS["invariant checks"] - STATS["examples"]
    print(f"\n{STATS['examples']} examples, {steps} steps:", dict(sorted(STATS.items())))

    def total(prefix: str) -> int:
        return sum(n for what, n in STATS.items() if what.startswith(prefix))

    # The machine really went through the lifecycle, not only through refusals.
    reached = {
        "created": total("created order"),
        "created lapsed": sum(n for what, n in STATS.items() if what.endswith(" lapsed")),
        "submitted": total("confirmed order: submitted"),
        "failed": total("failed:"),
        "approved": total("approved"),
        "rejected": total("rejected"),
        "expired": total("expired"),
        "refused while halted": total("create refused: halted") + total("confirm refused: halted"),
    }
    assert all(reached.values()), reached
