"""Trades: `create_order` proposes, only `confirm_trade` submits, once.

The safety rules, in order of importance:
- Nothing reaches a broker's place or cancel call except `_submit`, and `_submit` runs only
  after the one atomic transition pending -> submitting, decided by the database (status,
  owner and `expires_at > now()` in one conditional UPDATE). Any second confirm loses.
- The client order id is derived from the confirmation, so a retried submission can never
  become a second order; a lost response leaves the trade `unknown` for reconciliation.
- Permission, halts and the time-dependent risk checks run again at confirm.
- No broker call happens inside a transaction or while a row lock is held.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.db.models.functions import Now
from django.utils import timezone

from audit.events import Action, Actor, record
from brokers.base import (
    BrokerError,
    BrokerErrorCode,
    OrderRequest,
    OrderType,
    Preview,
    Side,
    TimeInForce,
)
from controlplane import risk
from controlplane.accesstokens import Principal
from controlplane.errors import (
    AwaitingApproval,
    BrokerFailure,
    ConfirmationExpired,
    ConfirmationUsed,
    ElicitationRequired,
    ForbiddenScope,
    NotFound,
    RiskRejected,
    TradingDisabled,
    TradingHalted,
)
from controlplane.models import (
    BrokerConnection,
    GlobalTradingHalt,
    PendingTrade,
    Platform,
    Scope,
)
from controlplane.services import portfolio, webhooks

Status = PendingTrade.Status
DECLINED_BY_PERSON = "declined by the person in the confirmation dialog"
# Re-checked at confirm: the checks whose answer can change while a trade waits.
TIME_DEPENDENT_CHECKS: tuple[risk.Check, ...] = (
    risk.max_orders_per_day,
    risk.max_notional_per_day,
    risk.buying_power,
)


class OutcomeUnknown(BrokerFailure):
    """The broker may or may not have the order: reconciliation will tell. Never retry."""

    code = "broker_unavailable"


def derive_client_order_id(confirmation_id: str) -> str:
    """20 alphanumerics (E*TRADE's limit), the same for every retry of one confirmation."""
    digest = hmac.new(settings.TRADEPLANE_HASH_KEY, confirmation_id.encode(), hashlib.sha256)
    return "TP" + base64.b32encode(digest.digest()).decode()[:18]


def order_hash(account_id: str, order: dict[str, Any]) -> str:
    canonical = json.dumps({"account": account_id, "order": order}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def normalized(request: OrderRequest) -> dict[str, Any]:
    return {
        "symbol": request.symbol,
        "side": str(request.side),
        "quantity": str(request.quantity),
        "order_type": str(request.order_type),
        "limit_price": str(request.limit_price) if request.limit_price is not None else None,
        "stop_price": str(request.stop_price) if request.stop_price is not None else None,
        "time_in_force": str(request.time_in_force),
        "extended_hours": request.extended_hours,
    }


def request_from(order: dict[str, Any]) -> OrderRequest:
    def amount(key: str) -> Decimal | None:
        return Decimal(order[key]) if order.get(key) is not None else None

    return OrderRequest(
        symbol=order["symbol"],
        side=Side(order["side"]),
        quantity=Decimal(order["quantity"]),
        order_type=OrderType(order["order_type"]),
        limit_price=amount("limit_price"),
        stop_price=amount("stop_price"),
        time_in_force=TimeInForce(order["time_in_force"]),
        extended_hours=bool(order["extended_hours"]),
    )


def _audit(
    action: str,
    trade: PendingTrade,
    principal_or_actor: Principal | Actor,
    outcome: str = "ok",
    **detail: Any,
) -> None:
    actor = (
        principal_or_actor
        if isinstance(principal_or_actor, Actor)
        else Actor.end_user(principal_or_actor.user_id)
    )
    if isinstance(principal_or_actor, Principal):
        # Known from the token: no walk through trade -> connection -> user -> platform.
        platform, end_user = principal_or_actor.client_id, principal_or_actor.user_id
    else:
        platform = trade.connection.end_user.platform.client_id
        end_user = trade.end_user.user_id
    record(
        action,
        actor=actor,
        outcome=outcome,
        platform=platform,
        end_user=end_user,
        jti=principal_or_actor.jti if isinstance(principal_or_actor, Principal) else "",
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


def check_trading_allowed(principal: Principal, connection: BrokerConnection) -> None:
    if Scope.TRADE not in principal.scopes:
        raise ForbiddenScope("this token does not have the 'trade' scope")
    if GlobalTradingHalt.is_halted():
        raise TradingHalted("trading is halted for every platform by an operator")
    if Platform.objects.filter(pk=principal.platform_pk, trading_halted=True).exists():
        raise TradingHalted("trading is halted for this platform by an operator")
    if not BrokerConnection.objects.filter(pk=connection.pk, trading_enabled=True).exists():
        raise TradingDisabled(f"trading is not enabled on this {connection.broker} connection")


@dataclass(frozen=True)
class Exposure:
    count: int
    notional: Decimal
    identical: int
    client_order_ids: frozenset[str]


def exposure_today(
    connection: BrokerConnection,
    *,
    identical_hash: str = "",
    window_seconds: int = 0,
    excluding: int | None = None,
) -> Exposure:
    """Our own trades of today that count against daily limits before any fill."""
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    trades = PendingTrade.objects.filter(
        connection=connection,
        kind=PendingTrade.Kind.ORDER,
        created_at__gte=start,
        status__in=PendingTrade.EXPOSED_STATUSES,
    )
    if excluding is not None:
        trades = trades.exclude(pk=excluding)
    totals = trades.aggregate(notional=Sum("notional"))
    identical = 0
    if identical_hash and window_seconds:
        identical = trades.filter(
            order_hash=identical_hash,
            created_at__gte=timezone.now() - timedelta(seconds=window_seconds),
        ).count()
    return Exposure(
        count=trades.count(),
        notional=totals["notional"] or Decimal(0),
        identical=identical,
        client_order_ids=frozenset(trades.values_list("client_order_id", flat=True)),
    )


def _with_exposure(
    ctx: risk.RiskContext, broker_orders: portfolio.BrokerDay, exposure: Exposure
) -> risk.RiskContext:
    """Broker-side activity of today plus our own trades, each order counted once."""
    others = [o for o in broker_orders.orders if o.client_order_id not in exposure.client_order_ids]
    return replace(
        ctx,
        orders_today=len(others) + exposure.count,
        notional_today=broker_orders.notional(others) + exposure.notional,
        identical_recent=ctx.identical_recent + exposure.identical,
    )


def _summary(
    request: OrderRequest, account_name: str, total: Decimal, commission: Decimal, expires: str
) -> str:
    price = ""
    if request.limit_price is not None:
        price += f" limit {request.limit_price}"
    if request.stop_price is not None:
        price += f" stop {request.stop_price}"
    return (
        f"{request.side} {request.quantity} {request.symbol} {request.order_type}{price} "
        f"in {account_name} · est. total {total:,.2f} USD incl. commission "
        f"{commission:,.2f} · confirm by {expires}"
    )


def _masked(account: Any) -> str:
    tail = (account.number_masked or account.broker_account_key)[-4:]
    return f"{account.name} (…{tail})"


def create_order(
    principal: Principal, account_id: str, request: OrderRequest, *, can_elicit: bool = False
) -> PendingTrade:
    """Validate, check permission and risk, preview at the broker, and record a pending
    trade for the person to confirm. Nothing is placed.

    `can_elicit` says whether the caller can put a confirmation dialog in front of the
    person; a policy that requires one refuses the order up front otherwise."""
    resolved = portfolio.resolve_account(principal, account_id)
    check_trading_allowed(principal, resolved.connection)
    policy = risk.resolve_policy(resolved.connection)
    if policy.require_elicitation and not can_elicit:
        raise ElicitationRequired(
            "this account's policy requires the person to confirm each order in their MCP "
            "client's confirmation dialog, and this client cannot show one"
        )
    order = normalized(request)
    digest = order_hash(account_id, order)
    # Broker reads and the preview first, outside any lock.
    ctx, day = portfolio.risk_context_and_day(resolved, request, policy)
    preview = resolved.call(lambda: resolved.adapter.preview_order(resolved.key, request))
    confirmation_id = "cf_" + secrets.token_urlsafe(24)  # 192 bits
    with transaction.atomic():
        # One creator at a time per connection, so concurrent orders cannot together
        # overshoot the daily limits.
        BrokerConnection.objects.select_for_update().filter(pk=resolved.connection.pk).get()
        exposure = exposure_today(
            resolved.connection,
            identical_hash=digest,
            window_seconds=policy.duplicate_window_seconds or 0,
        )
        result = risk.evaluate(policy, _with_exposure(ctx, day, exposure))
        if not result.ok:
            rejected = RiskRejected(result.describe_failures())
        else:
            rejected = None
            needs_approval = (
                policy.approval_threshold_value is not None
                and ctx.order_value > policy.approval_threshold_value
            )
            expires_at = timezone.now() + timedelta(seconds=settings.CONFIRMATION_TTL_SECONDS)
            trade = PendingTrade.objects.create(
                confirmation_id=confirmation_id,
                end_user_id=principal.end_user_pk,
                connection=resolved.connection,
                account=resolved.account,
                order=order,
                order_hash=digest,
                notional=ctx.order_value,
                summary=_summary(
                    request,
                    _masked(resolved.account),
                    preview.estimated_total,
                    preview.commission,
                    expires_at.strftime("%H:%M:%S UTC"),
                ),
                risk=_risk_json(result),
                estimate={
                    "estimated_total": str(preview.estimated_total),
                    "commission": str(preview.commission),
                    "estimated_price": str(preview.estimated_price),
                    "warnings": list(preview.warnings),
                },
                broker_preview_id=preview.preview_id,
                client_order_id=derive_client_order_id(confirmation_id),
                status=Status.AWAITING_APPROVAL if needs_approval else Status.PENDING,
                created_by_jti=principal.jti,
                expires_at=expires_at,
            )
            _audit(
                Action.TRADE_CREATED,
                trade,
                principal,
                status=trade.status,
                order=order,
                risk=trade.risk,
            )
    if rejected is not None:
        raise rejected
    return trade


def create_cancel(principal: Principal, account_id: str, order_id: str) -> PendingTrade:
    """A pending cancel of an open order, confirmed like an order."""
    resolved = portfolio.resolve_account(principal, account_id)
    check_trading_allowed(principal, resolved.connection)
    order = resolved.call(lambda: resolved.adapter.get_order(resolved.key, order_id))
    if order.status.is_final:
        raise BrokerFailure(
            BrokerError(
                BrokerErrorCode.ORDER_NOT_CANCELLABLE, f"order {order_id} is already {order.status}"
            )
        )
    confirmation_id = "cf_" + secrets.token_urlsafe(24)
    expires_at = timezone.now() + timedelta(seconds=settings.CONFIRMATION_TTL_SECONDS)
    payload = {"cancel_order_id": order_id}
    with transaction.atomic():
        trade = PendingTrade.objects.create(
            confirmation_id=confirmation_id,
            kind=PendingTrade.Kind.CANCEL,
            end_user_id=principal.end_user_pk,
            connection=resolved.connection,
            account=resolved.account,
            order=payload,
            order_hash=order_hash(account_id, payload),
            summary=(
                f"CANCEL order {order_id} ({order.side} {order.quantity} {order.symbol} "
                f"{order.order_type}, {order.status}) in {_masked(resolved.account)} · "
                f"confirm by {expires_at.strftime('%H:%M:%S UTC')}"
            ),
            client_order_id=derive_client_order_id(confirmation_id),
            created_by_jti=principal.jti,
            expires_at=expires_at,
        )
        _audit(Action.TRADE_CREATED, trade, principal, status=trade.status, order=payload)
    return trade


def own_trade(principal: Principal, confirmation_id: str) -> PendingTrade:
    trade = (
        PendingTrade.objects.select_related("connection__end_user__platform", "end_user", "account")
        .filter(confirmation_id=confirmation_id, end_user_id=principal.end_user_pk)
        .first()
    )
    if trade is None:
        raise NotFound("no such confirmation; list_pending_trades shows the open ones")
    return trade


def _refusal(trade: PendingTrade) -> Exception:
    """Why this trade cannot be confirmed now (it is not pending, or it expired)."""
    if trade.status in (Status.SUBMITTING, Status.SUBMITTED, Status.FAILED, Status.UNKNOWN):
        order = f" (broker order {trade.broker_order_id})" if trade.broker_order_id else ""
        return ConfirmationUsed(f"this confirmation was already used: {trade.status}{order}")
    if trade.status == Status.AWAITING_APPROVAL:
        return AwaitingApproval("an operator must approve this trade before it can be confirmed")
    if trade.status == Status.REJECTED:
        return RiskRejected(f"an operator rejected this trade: {trade.status_reason}")
    return ConfirmationExpired("this confirmation expired; create the order again")


def confirm_trade(
    principal: Principal, confirmation_id: str, *, elicited: bool = False
) -> PendingTrade:
    """Submit the pending trade to the broker, exactly once.

    `elicited` is true when the person accepted the trade's summary in their client's
    confirmation dialog rather than through the agent; the same transition guards both."""
    trade = own_trade(principal, confirmation_id)
    if trade.status != Status.PENDING:
        raise _refusal(trade)
    resolved = portfolio.resolve_account(principal, trade.account_id)
    check_trading_allowed(principal, resolved.connection)
    request = request_from(trade.order) if trade.kind == PendingTrade.Kind.ORDER else None
    policy = risk.resolve_policy(resolved.connection)
    if request is not None and policy.require_elicitation and not elicited:
        raise ElicitationRequired(
            "this account's policy requires the person to accept this order in their MCP "
            "client's confirmation dialog; confirm_trade from a client that supports "
            "elicitation asks them"
        )
    if request is not None:
        ctx, day = portfolio.risk_context_and_day(resolved, request, policy)  # outside the lock
    refusal: Exception | None = None
    with transaction.atomic():
        BrokerConnection.objects.select_for_update().filter(pk=resolved.connection.pk).get()
        if request is not None:
            exposure = exposure_today(resolved.connection, excluding=trade.pk)
            result = risk.evaluate(
                policy, _with_exposure(ctx, day, exposure), TIME_DEPENDENT_CHECKS
            )
            if not result.ok:
                refusal = RiskRejected(result.describe_failures())
        if refusal is None:
            changed = PendingTrade.objects.filter(
                pk=trade.pk,
                end_user_id=principal.end_user_pk,
                status=Status.PENDING,
                expires_at__gt=Now(),
            ).update(status=Status.SUBMITTING, confirmed_at=Now())
            trade.refresh_from_db()
            if not changed:
                refusal = _refusal(trade)
            else:
                _audit(
                    Action.TRADE_CONFIRMED,
                    trade,
                    principal,
                    via="elicitation" if elicited else "confirm_trade",
                )
        # A risk failure ends the trade only while it is still confirmable; a lapsed trade
        # is refused as expired (and left for the expiry sweep), like any late confirm.
        elif PendingTrade.objects.filter(
            pk=trade.pk, status=Status.PENDING, expires_at__gt=Now()
        ).update(status=Status.FAILED, status_reason=str(refusal)[:500], finished_at=Now()):
            trade.refresh_from_db()
            _audit(
                Action.TRADE_FAILED, trade, principal, outcome="risk_rejected", reason=str(refusal)
            )
        else:
            trade.refresh_from_db()
            refusal = _refusal(trade)
    if refusal is not None:
        raise refusal
    return _submit(trade, resolved, request, principal)


def _submit(
    trade: PendingTrade,
    resolved: portfolio.ResolvedAccount,
    request: OrderRequest | None,
    principal: Principal,
) -> PendingTrade:
    """The only broker place/cancel call. Runs to a recorded outcome whatever happens."""
    try:
        if request is not None:
            preview = Preview(
                estimated_total=Decimal(trade.estimate["estimated_total"]),
                commission=Decimal(trade.estimate["commission"]),
                estimated_price=Decimal(trade.estimate["estimated_price"]),
                preview_id=trade.broker_preview_id,
                warnings=tuple(trade.estimate.get("warnings", ())),
            )
            age = timezone.now() - trade.created_at
            if age > timedelta(seconds=settings.BROKER_PREVIEW_MAX_AGE_SECONDS):
                # The same order under the same client order id, so still placed once.
                preview = resolved.adapter.preview_order(resolved.key, request)
            broker_order_id = resolved.adapter.place_order(
                resolved.key, request, trade.client_order_id, preview
            ).order_id
        else:
            broker_order_id = resolved.adapter.cancel_order(
                resolved.key, trade.order["cancel_order_id"]
            ).order_id
    except BrokerError as exc:
        if exc.code == BrokerErrorCode.OUTCOME_UNKNOWN:
            _finish(trade, Status.UNKNOWN, principal, reason=exc.broker_message)
            raise OutcomeUnknown(exc) from exc
        _finish(trade, Status.FAILED, principal, reason=f"{exc.code}: {exc.broker_message}")
        raise BrokerFailure(exc) from exc
    except BaseException:
        # A bug or a cancelled thread: the order may exist. Never resubmit; reconcile.
        _finish(trade, Status.UNKNOWN, principal, reason="submission interrupted")
        raise
    _finish(trade, Status.SUBMITTED, principal, broker_order_id=broker_order_id)
    return trade


def _finish(
    trade: PendingTrade,
    status: str,
    principal: Principal,
    *,
    reason: str = "",
    broker_order_id: str = "",
) -> None:
    action: str = {
        str(Status.SUBMITTED): (
            Action.TRADE_CANCELLED
            if trade.kind == PendingTrade.Kind.CANCEL
            else Action.TRADE_SUBMITTED
        ),
        str(Status.FAILED): Action.TRADE_FAILED,
        str(Status.UNKNOWN): Action.TRADE_UNKNOWN,
    }[status]
    with transaction.atomic():
        PendingTrade.objects.filter(pk=trade.pk, status=Status.SUBMITTING).update(
            status=status,
            status_reason=reason[:500],
            broker_order_id=broker_order_id,
            finished_at=Now(),
        )
        trade.refresh_from_db()
        _audit(
            action,
            trade,
            principal,
            outcome="ok" if status == Status.SUBMITTED else status,
            reason=reason,
        )


def decline_trade(principal: Principal, confirmation_id: str) -> PendingTrade:
    """The person said no in the confirmation dialog: the trade can no longer be confirmed."""
    trade = own_trade(principal, confirmation_id)
    with transaction.atomic():
        changed = PendingTrade.objects.filter(
            pk=trade.pk, end_user_id=principal.end_user_pk, status=Status.PENDING
        ).update(
            status=Status.REJECTED,
            status_reason=DECLINED_BY_PERSON,
            finished_at=Now(),
        )
        trade.refresh_from_db()
        if not changed:
            raise _refusal(trade)
        _audit(Action.TRADE_REJECTED, trade, principal, reason=DECLINED_BY_PERSON)
    return trade


def matches_order(trade: PendingTrade, account_id: str, request: OrderRequest) -> bool:
    """Whether a pending trade is exactly this order on this account."""
    return hmac.compare_digest(trade.order_hash, order_hash(account_id, normalized(request)))


def open_trades(principal: Principal) -> list[PendingTrade]:
    return list(
        PendingTrade.objects.filter(end_user_id=principal.end_user_pk)
        .filter(Q(status=Status.AWAITING_APPROVAL) | Q(status=Status.PENDING, expires_at__gt=Now()))
        .order_by("created_at")
    )


def expire_pending_trades() -> int:
    """Mark lapsed confirmations expired, one audit row each. Safe to run twice or never:
    confirm_trade checks `expires_at` itself."""
    expired = 0
    for pk in PendingTrade.objects.filter(
        status__in=PendingTrade.OPEN_STATUSES, expires_at__lte=Now()
    ).values_list("pk", flat=True):
        with transaction.atomic():
            if PendingTrade.objects.filter(
                pk=pk, status__in=PendingTrade.OPEN_STATUSES, expires_at__lte=Now()
            ).update(status=Status.EXPIRED, finished_at=Now()):
                trade = PendingTrade.objects.select_related(
                    "connection__end_user__platform", "end_user"
                ).get(pk=pk)
                _audit(Action.TRADE_EXPIRED, trade, Actor.system("expire_pending_trades"))
                webhooks.notify_trade_expired(trade)
                expired += 1
    return expired


def _risk_json(result: risk.RiskResult) -> dict[str, list[dict[str, Any]]]:
    def rows(checks: list[risk.CheckResult]) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "detail": c.detail, "limit": c.limit, "value": c.value} for c in checks
        ]

    return {
        "passed": rows(result.passed),
        "failed": rows(result.failed),
        "skipped": rows(result.skipped),
    }


def approve_trade(confirmation_id: str, *, actor: Actor) -> PendingTrade:
    """An operator approves a trade above the approval threshold; the person then has a
    fresh confirmation window."""
    trade = _any_trade(confirmation_id)
    window = risk.resolve_policy(trade.connection).approval_extends_seconds
    with transaction.atomic():
        expires_at = timezone.now() + timedelta(seconds=window or settings.CONFIRMATION_TTL_SECONDS)
        # Like a confirm, an approval after the window closed is refused whether or not
        # the expiry sweep has run: the database decides.
        changed = PendingTrade.objects.filter(
            confirmation_id=confirmation_id,
            status=Status.AWAITING_APPROVAL,
            expires_at__gt=Now(),
        ).update(
            status=Status.PENDING,
            approved_by=actor.id[:150],
            approved_at=Now(),
            expires_at=expires_at,
        )
        trade = _any_trade(confirmation_id)
        if not changed:
            if trade.status == Status.PENDING:
                raise ConfirmationUsed("this trade is already approved")
            if trade.status == Status.AWAITING_APPROVAL:
                raise ConfirmationExpired("this trade's window closed before it was approved")
            raise _refusal(trade)
        _audit(Action.TRADE_APPROVED, trade, actor)
    return trade


def reject_trade(confirmation_id: str, *, reason: str, actor: Actor) -> PendingTrade:
    with transaction.atomic():
        changed = PendingTrade.objects.filter(
            confirmation_id=confirmation_id, status__in=PendingTrade.OPEN_STATUSES
        ).update(status=Status.REJECTED, status_reason=reason[:500], finished_at=Now())
        trade = _any_trade(confirmation_id)
        if not changed:
            raise _refusal(trade)
        _audit(Action.TRADE_REJECTED, trade, actor, reason=reason)
    return trade


def _any_trade(confirmation_id: str) -> PendingTrade:
    trade = (
        PendingTrade.objects.select_related("connection__end_user__platform", "end_user")
        .filter(confirmation_id=confirmation_id)
        .first()
    )
    if trade is None:
        raise NotFound(f"no trade {confirmation_id!r}")
    return trade
