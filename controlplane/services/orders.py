"""After submission: following orders at the broker to a final state, and reconciling
trades whose submission had no answer.

Neither ever places, changes or cancels an order: they only read the broker (get_order,
find_order_by_client_order_id, list_orders) and record what they see. Each change is
recorded by a conditional UPDATE on the state it was computed from, with its audit row and
webhook in the same transaction, so two runs at once, or a run again after a crash, record
every change exactly once. Broker calls happen outside transactions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.events import Action, Actor, record
from brokers.base import BrokerAdapter, BrokerError, BrokerErrorCode, Order, OrderStatus
from brokers.registry import get_adapter
from controlplane.models import BrokerConnection, PendingTrade
from controlplane.services import broker_tokens, webhooks
from controlplane.services.trading import request_from

logger = logging.getLogger(__name__)

Status = PendingTrade.Status
FINAL_ORDER_STATUSES = [str(s) for s in OrderStatus if s.is_final]
# A followed order is asked about again once this long has passed since the last look,
# so a second run straight after the first asks the broker nothing and writes nothing.
RECHECK_AFTER = timedelta(seconds=20)
FOLLOW_BATCH = 200
# An unknown order not found at the broker this long after it was sent is taken as never
# placed. Until then it may still appear (brokers list new orders with some delay).
RECONCILE_GRACE = timedelta(minutes=15)
# Brokers that cannot look orders up by client order id: a candidate order must have been
# created between a minute before the confirm (clock skew) and this long after it.
MATCH_WINDOW = timedelta(minutes=5)
MATCH_LIST_LIMIT = 200
SWEEP_BUDGET_SECONDS = 40
FOLLOW_ACTOR = Actor.system("follow_open_orders")
RECONCILE_ACTOR = Actor.system("reconcile_unknown_trades")

# The order event (audit action and webhook type alike) for a broker order status.
ORDER_EVENTS = {
    OrderStatus.FILLED: Action.ORDER_FILLED,
    OrderStatus.PARTIALLY_FILLED: Action.ORDER_PARTIALLY_FILLED,
    OrderStatus.CANCELLED: Action.ORDER_CANCELLED,
    OrderStatus.REJECTED: Action.ORDER_REJECTED,
    OrderStatus.EXPIRED: Action.ORDER_EXPIRED,
}


@dataclass
class SweepReport:
    checked: int = 0
    changed: int = 0
    deferred: int = 0  # a broker error; the next run asks again


# ---- Following submitted orders ----------------------------------------------------------


def follow_open_orders(limit: int = FOLLOW_BATCH) -> SweepReport:
    """Ask the broker about every submitted order that is not final yet (least recently
    checked first) and record what changed."""
    report = SweepReport()
    started = time.monotonic()
    now = timezone.now()
    trades = (
        PendingTrade.objects.filter(
            kind=PendingTrade.Kind.ORDER,
            status=Status.SUBMITTED,
            connection__status=BrokerConnection.Status.ACTIVE,
        )
        .exclude(broker_order_id="")
        .exclude(order_status__in=FINAL_ORDER_STATUSES)
        .filter(Q(order_checked_at__isnull=True) | Q(order_checked_at__lte=now - RECHECK_AFTER))
        .select_related("account", "connection__end_user__platform", "end_user")
        .order_by(F("order_checked_at").asc(nulls_first=True), "pk")[:limit]
    )
    for trade in trades:
        if time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            break
        report.checked += 1
        try:
            order = get_adapter(trade.connection).get_order(
                trade.account.broker_account_key, trade.broker_order_id
            )
        except BrokerError as exc:
            report.deferred += 1
            _broker_trouble(trade, exc, "following")
            continue
        if record_order_state(trade, order):
            report.changed += 1
    return report


def record_order_state(trade: PendingTrade, order: Order) -> bool:
    """Record what the broker says about the trade's order. A reportable change (a fill,
    or a final state) is audited and sent as a webhook once. Returns whether the order's
    state changed."""
    filled = order.filled_quantity
    changed_state = order.status != trade.order_status or filled != trade.filled_quantity
    now = timezone.now()
    with transaction.atomic():
        # Conditional on the state this was computed from: another run that recorded the
        # same change first leaves nothing to update here.
        current = PendingTrade.objects.filter(
            pk=trade.pk, order_status=trade.order_status, filled_quantity=trade.filled_quantity
        )
        if not changed_state:
            current.update(order_checked_at=now)
            return False
        if not current.update(
            order_status=order.status,
            filled_quantity=filled,
            average_fill_price=order.average_fill_price,
            order_checked_at=now,
        ):
            return False
        previous = trade.order_status
        trade.refresh_from_db()
        event = _event_for(order)
        if event is not None:
            _audit(
                event,
                trade,
                FOLLOW_ACTOR,
                order_status=order.status,
                previous_order_status=previous,
                filled_quantity=filled,
                average_fill_price=order.average_fill_price,
                reason=order.reason,
            )
            webhooks.notify_order_changed(trade, event, reason=order.reason)
    return True


def _event_for(order: Order) -> str | None:
    """Which event a recorded change reports: a fill, or the order ending. An order seen
    open (accepted, resting) reports nothing."""
    if order.status == OrderStatus.PARTIALLY_FILLED or order.status.is_final:
        return ORDER_EVENTS[order.status]
    return None


# ---- Reconciling trades in `unknown` -----------------------------------------------------


class AmbiguousMatch(Exception):
    """More than one broker order fits: an operator must decide."""


def reconcile_unknown_trades() -> SweepReport:
    """Find out what became of every trade whose submission had no answer."""
    report = SweepReport()
    started = time.monotonic()
    trades = (
        PendingTrade.objects.filter(
            status=Status.UNKNOWN, connection__status=BrokerConnection.Status.ACTIVE
        )
        .select_related("account", "connection__end_user__platform", "end_user")
        .order_by("pk")
    )
    for trade in trades:
        if time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            break
        report.checked += 1
        outcome = reconcile_trade(trade)
        if outcome in (Status.SUBMITTED, Status.FAILED):
            report.changed += 1
        elif outcome == "deferred":
            report.deferred += 1
    return report


def reconcile_trade(trade: PendingTrade) -> str:
    """Look the trade's order (or cancel) up at the broker: found → submitted with the
    broker's order id; definitively absent after RECONCILE_GRACE → failed; otherwise it
    stays unknown. Returns the status it moved to, "unknown" when it stays, "deferred" after
    a broker error, or "skipped" when another run resolved it first."""
    adapter = get_adapter(trade.connection)
    key = trade.account.broker_account_key
    try:
        if trade.kind == PendingTrade.Kind.ORDER:
            found = _find_order(adapter, key, trade)
            refusal = "" if found else "no such order at the broker"
        else:
            found, refusal = _find_cancel(adapter, key, trade)
    except AmbiguousMatch as exc:
        logger.warning("trade %s stays unknown: %s", trade.confirmation_id, exc)
        return "deferred"
    except BrokerError as exc:
        _broker_trouble(trade, exc, "reconciling")
        return "deferred"
    if found is not None:
        return _resolve(
            trade,
            Status.SUBMITTED,
            Action.TRADE_RECONCILED,
            broker_order_id=found.order_id,
            reason="found at the broker by reconciliation",
        )
    sent_at = trade.confirmed_at or trade.created_at
    if timezone.now() - sent_at < RECONCILE_GRACE:
        return Status.UNKNOWN
    minutes = int(RECONCILE_GRACE.total_seconds() // 60)
    return _resolve(
        trade,
        Status.FAILED,
        Action.TRADE_FAILED,
        reason=f"reconciliation: {refusal} {minutes} minutes after it was sent",
    )


def _find_order(adapter: BrokerAdapter, account_key: str, trade: PendingTrade) -> Order | None:
    try:
        return adapter.find_order_by_client_order_id(account_key, trade.client_order_id)
    except BrokerError as exc:
        if exc.code != BrokerErrorCode.UNSUPPORTED:
            raise
    return _match_recent_order(adapter, account_key, trade)


def _match_recent_order(
    adapter: BrokerAdapter, account_key: str, trade: PendingTrade
) -> Order | None:
    """For brokers that cannot look up client order ids (E*TRADE does not even return
    them): the one recent order with the same symbol, side, quantity, type and prices,
    created around the confirm, that no other trade of ours already accounts for."""
    request = request_from(trade.order)
    sent_at = trade.confirmed_at or trade.created_at
    earliest, latest = sent_at - timedelta(minutes=1), sent_at + MATCH_WINDOW
    claimed = set(
        PendingTrade.objects.filter(account=trade.account)
        .exclude(pk=trade.pk)
        .exclude(broker_order_id="")
        .values_list("broker_order_id", flat=True)
    )
    candidates = [
        order
        for order in adapter.list_orders(account_key, limit=MATCH_LIST_LIMIT)
        if earliest <= order.created_at <= latest
        and order.order_id not in claimed
        and order.client_order_id in ("", trade.client_order_id)
        and (
            order.symbol,
            order.side,
            order.quantity,
            order.order_type,
            order.limit_price,
            order.stop_price,
        )
        == (
            request.symbol,
            request.side,
            request.quantity,
            request.order_type,
            request.limit_price,
            request.stop_price,
        )
    ]
    if len(candidates) > 1:
        ids = ", ".join(order.order_id for order in candidates)
        raise AmbiguousMatch(f"{len(candidates)} broker orders match ({ids})")
    return candidates[0] if candidates else None


def _find_cancel(
    adapter: BrokerAdapter, account_key: str, trade: PendingTrade
) -> tuple[Order | None, str]:
    """A cancel took effect when its order is cancelled; the order, or why it did not."""
    order = adapter.get_order(account_key, trade.order["cancel_order_id"])
    if order.status == OrderStatus.CANCELLED:
        return order, ""
    return None, f"the order is {order.status}, not cancelled,"


def _resolve(
    trade: PendingTrade, status: str, action: str, *, reason: str, broker_order_id: str = ""
) -> str:
    with transaction.atomic():
        changed = PendingTrade.objects.filter(pk=trade.pk, status=Status.UNKNOWN).update(
            status=status,
            status_reason=reason[:500],
            broker_order_id=broker_order_id or trade.broker_order_id,
        )
        if not changed:
            return "skipped"  # another run resolved it first
        trade.refresh_from_db()
        _audit(
            action,
            trade,
            RECONCILE_ACTOR,
            outcome="ok" if status == Status.SUBMITTED else "not_found_at_broker",
            reason=reason,
        )
    return status


# ---- Shared ------------------------------------------------------------------------------


def _broker_trouble(trade: PendingTrade, exc: BrokerError, doing: str) -> None:
    if exc.code == BrokerErrorCode.AUTH_EXPIRED:
        broker_tokens.mark_needs_reauth(trade.connection, reason=exc.broker_message)
    logger.warning(
        "%s trade %s at the broker failed (%s): %s",
        doing,
        trade.confirmation_id,
        exc.code,
        exc.broker_message,
    )


def _audit(
    action: str, trade: PendingTrade, actor: Actor, outcome: str = "ok", **detail: Any
) -> None:
    record(
        action,
        actor=actor,
        outcome=outcome,
        platform=trade.connection.end_user.platform.client_id,
        end_user=trade.end_user.user_id,
        target=f"trade:{trade.confirmation_id}",
        detail={
            "confirmation_id": trade.confirmation_id,
            "client_order_id": trade.client_order_id,
            "broker_order_id": trade.broker_order_id,
            "kind": trade.kind,
            "summary": trade.summary,
            **detail,
        },
    )
