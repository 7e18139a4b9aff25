"""Read access to a principal's brokerage accounts, across brokers.

Tradeplane's own account ids (`acct_…`) are resolved here to one account of one of the
principal's active connections; another user's id looks exactly like a missing one. Every
broker call goes through `call_broker`, which turns BrokerError into a ControlPlaneError
carrying the broker's own reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from brokers.base import (
    Balance,
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    Preview,
    Quote,
    Transaction,
)
from brokers.registry import get_adapter
from controlplane import risk
from controlplane.accesstokens import Principal
from controlplane.errors import BrokerFailure, ControlPlaneError, InvalidArgument, NotFound
from controlplane.models import BrokerAccount, BrokerConnection, Watchlist
from controlplane.services.broker_tokens import mark_needs_reauth

NOT_FOUND_CODES = frozenset({BrokerErrorCode.ACCOUNT_NOT_FOUND, BrokerErrorCode.ORDER_NOT_FOUND})
DEFAULT_WATCHLIST = "default"
MAX_WATCHLIST_SYMBOLS = 100


class ConnectionNeedsReauth(ControlPlaneError):
    code = "broker_error"

    def __init__(self, connection: BrokerConnection) -> None:
        super().__init__(
            f"auth_expired: the {connection.broker} connection's login has expired; the person "
            "must reconnect the account (their platform starts a new connection)"
        )


def call_broker[T](call: Callable[[], T], connection: BrokerConnection) -> T:
    """One call to the connection's broker, its BrokerError turned into ours. Credentials
    the broker no longer accepts put the connection in needs_reauth: only the person can
    connect again, and every tool says so from then on without calling the broker."""
    try:
        return call()
    except BrokerError as exc:
        if exc.code in NOT_FOUND_CODES:
            raise NotFound(exc.broker_message) from exc
        if exc.code == BrokerErrorCode.AUTH_EXPIRED:
            mark_needs_reauth(connection, reason=exc.broker_message)
            raise ConnectionNeedsReauth(connection) from exc
        raise BrokerFailure(exc) from exc


@dataclass(frozen=True)
class ResolvedAccount:
    account: BrokerAccount
    connection: BrokerConnection
    adapter: BrokerAdapter

    @property
    def key(self) -> str:
        return self.account.broker_account_key

    def call[T](self, call: Callable[[], T]) -> T:
        return call_broker(call, self.connection)


def live_connections(principal: Principal) -> list[BrokerConnection]:
    return list(
        BrokerConnection.objects.filter(end_user_id=principal.end_user_pk)
        .exclude(status=BrokerConnection.Status.REVOKED)
        .order_by("created_at")
    )


def discover_accounts(connection: BrokerConnection) -> list[BrokerAccount]:
    """Ask the broker which accounts the connection reaches; give new ones a stable id."""
    found = call_broker(get_adapter(connection).list_accounts, connection)
    known = {a.broker_account_key: a for a in connection.accounts.all()}
    for account in found:
        if account.account_id in known:
            continue
        try:
            with transaction.atomic():
                known[account.account_id] = BrokerAccount.objects.create(
                    id=f"acct_{secrets.token_hex(8)}",
                    connection=connection,
                    broker_account_key=account.account_id,
                    name=account.name,
                    account_type=account.account_type,
                    currency=account.currency,
                    number_masked=account.number_masked,
                )
        except IntegrityError:  # discovered concurrently by another request
            known[account.account_id] = BrokerAccount.objects.get(
                connection=connection, broker_account_key=account.account_id
            )
    keys = {account.account_id for account in found}
    return [a for key, a in known.items() if key in keys]


def list_accounts(principal: Principal) -> list[tuple[BrokerAccount, BrokerConnection]]:
    """Every account across the principal's active connections (discovering new ones)."""
    result = []
    for connection in live_connections(principal):
        if connection.status != BrokerConnection.Status.ACTIVE:
            continue
        result += [(account, connection) for account in discover_accounts(connection)]
    return result


def resolve_account(principal: Principal, account_id: str) -> ResolvedAccount:
    account = (
        BrokerAccount.objects.select_related("connection")
        .filter(
            id=account_id,
            connection__end_user_id=principal.end_user_pk,
        )
        .exclude(connection__status=BrokerConnection.Status.REVOKED)
        .first()
    )
    if account is None:
        raise NotFound(f"no account {account_id!r}; call list_accounts for the account ids")
    connection = account.connection
    if connection.status == BrokerConnection.Status.NEEDS_REAUTH:
        raise ConnectionNeedsReauth(connection)
    if connection.status != BrokerConnection.Status.ACTIVE:
        raise NotFound(f"account {account_id!r} is not available (connection {connection.status})")
    return ResolvedAccount(account, connection, get_adapter(connection))


def quote_connection(principal: Principal, account_id: str | None) -> BrokerConnection:
    """Quotes come from the broker of the given account, else the first active connection."""
    if account_id:
        return resolve_account(principal, account_id).connection
    for connection in live_connections(principal):
        if connection.status == BrokerConnection.Status.ACTIVE:
            return connection
    raise NotFound("no active broker connection; the platform must connect an account first")


def get_balance(principal: Principal, account_id: str) -> tuple[ResolvedAccount, Balance]:
    resolved = resolve_account(principal, account_id)
    return resolved, resolved.call(lambda: resolved.adapter.get_balance(resolved.key))


def get_positions(principal: Principal, account_id: str) -> tuple[ResolvedAccount, list[Position]]:
    resolved = resolve_account(principal, account_id)
    return resolved, resolved.call(lambda: resolved.adapter.get_positions(resolved.key))


def get_quotes(
    principal: Principal, symbols: list[str], account_id: str | None = None
) -> tuple[BrokerConnection, list[Quote]]:
    connection = quote_connection(principal, account_id)
    return connection, call_broker(lambda: get_adapter(connection).get_quotes(symbols), connection)


def list_orders(
    principal: Principal, account_id: str, status: OrderStatus | None, limit: int
) -> tuple[ResolvedAccount, list[Order]]:
    resolved = resolve_account(principal, account_id)
    return resolved, resolved.call(
        lambda: resolved.adapter.list_orders(resolved.key, status=status, limit=limit)
    )


def get_order(
    principal: Principal, account_id: str, order_id: str
) -> tuple[ResolvedAccount, Order]:
    resolved = resolve_account(principal, account_id)
    return resolved, resolved.call(lambda: resolved.adapter.get_order(resolved.key, order_id))


def list_transactions(
    principal: Principal,
    account_id: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> tuple[ResolvedAccount, list[Transaction]]:
    resolved = resolve_account(principal, account_id)
    return resolved, resolved.call(
        lambda: resolved.adapter.list_transactions(resolved.key, start=start, end=end, limit=limit)
    )


def reference_price(request: OrderRequest, quote: Quote) -> Decimal:
    """What one share is expected to cost (buys) or fetch (sells) for valuing the order."""
    if request.limit_price is not None:
        return request.limit_price
    if request.stop_price is not None:
        return request.stop_price
    return quote.ask if request.side.is_buy else quote.bid


@dataclass(frozen=True)
class BrokerDay:
    """Today's live orders at the broker (not rejected or cancelled)."""

    orders: list[Order]
    fallback_price: Decimal

    def notional(self, orders: list[Order]) -> Decimal:
        return sum(
            (
                o.quantity
                * (o.average_fill_price or o.limit_price or o.stop_price or self.fallback_price)
                for o in orders
            ),
            Decimal(0),
        )


def risk_context_and_day(
    resolved: ResolvedAccount, request: OrderRequest, policy: risk.EffectivePolicy
) -> tuple[risk.RiskContext, BrokerDay]:
    """The broker-side facts the risk checks need: price and balance always; positions and
    today's orders only when a limit of the policy looks at them (they are the costly
    reads). Trades awaiting confirmation are added by the trading service."""
    adapter, key = resolved.adapter, resolved.key
    (quote,) = resolved.call(lambda: adapter.get_quotes([request.symbol]))
    balance = resolved.call(lambda: adapter.get_balance(key))
    positions = (
        resolved.call(lambda: adapter.get_positions(key))
        if policy.max_position_concentration_pct is not None
        else []
    )
    needs_orders = (
        policy.max_orders_per_day is not None
        or policy.max_notional_per_day is not None
        or bool(policy.duplicate_window_seconds)
    )
    orders = resolved.call(lambda: adapter.list_orders(key, limit=200)) if needs_orders else []
    price = reference_price(request, quote)
    now = timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day = BrokerDay(
        [
            o
            for o in orders
            if o.created_at >= today
            and o.status not in (OrderStatus.REJECTED, OrderStatus.CANCELLED)
        ],
        price,
    )
    window = timedelta(seconds=policy.duplicate_window_seconds or 0)
    identical = [
        o
        for o in day.orders
        if o.created_at >= now - window
        and (o.symbol, o.side, o.quantity, o.order_type, o.limit_price, o.stop_price)
        == (
            request.symbol,
            request.side,
            request.quantity,
            request.order_type,
            request.limit_price,
            request.stop_price,
        )
    ]
    ctx = risk.RiskContext(
        request=request,
        reference_price=price,
        last_price=quote.last,
        account_value=balance.account_value,
        buying_power=balance.buying_power,
        position_quantity=next(
            (p.quantity for p in positions if p.symbol == request.symbol), Decimal(0)
        ),
        orders_today=len(day.orders),
        notional_today=day.notional(day.orders),
        identical_recent=len(identical) if window else 0,
    )
    return ctx, day


def preview_order(
    principal: Principal, account_id: str, request: OrderRequest
) -> tuple[ResolvedAccount, Preview, risk.RiskResult]:
    """The broker's estimate and the risk checks the order would pass and fail."""
    resolved = resolve_account(principal, account_id)
    policy = risk.resolve_policy(resolved.connection)
    ctx, _ = risk_context_and_day(resolved, request, policy)
    checks = risk.evaluate(policy, ctx)
    preview = resolved.call(lambda: resolved.adapter.preview_order(resolved.key, request))
    return resolved, preview, checks


def get_watchlist(principal: Principal, name: str) -> Watchlist:
    watchlist = Watchlist.objects.filter(end_user_id=principal.end_user_pk, name=name).first()
    if watchlist is None:
        raise NotFound(f"no watchlist {name!r}")
    return watchlist


def change_watchlist(
    principal: Principal, name: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> Watchlist:
    with transaction.atomic():
        watchlist, _ = Watchlist.objects.select_for_update().get_or_create(
            end_user_id=principal.end_user_pk, name=name
        )
        symbols = [s for s in watchlist.symbols if s not in set(remove)]
        symbols += [s for s in add if s not in symbols]
        if len(symbols) > MAX_WATCHLIST_SYMBOLS:
            raise InvalidArgument(f"a watchlist holds at most {MAX_WATCHLIST_SYMBOLS} symbols")
        watchlist.symbols = symbols
        watchlist.save(update_fields=["symbols", "updated_at"])
    return watchlist
