"""Every change to the paper brokerage's books: opening accounts, previewing, placing and
cancelling orders, and evaluating resting orders against the simulated market.

Each change to an account happens in a transaction holding its row lock (select_for_update),
so placements, cancels, evaluations and fills of one account run one at a time, and
anything read after taking the lock includes what the previous holder committed.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from brokers.base import (
    BrokerError,
    BrokerErrorCode,
    OrderRequest,
    OrderStatus,
    OrderType,
    Preview,
    Quote,
    TimeInForce,
    TransactionType,
)
from brokers.paper import market_hours
from brokers.paper.capacity import check_capacity, order_price, touch
from brokers.paper.execution import COMMISSION, is_marketable, stop_reached, work_order
from brokers.paper.models import (
    OPEN_STATUSES,
    PREVIEW_LIFETIME,
    PaperAccount,
    PaperOrder,
)
from brokers.paper.money import CENT, cents, plain
from brokers.paper.prices import PriceBook, touch_depth
from brokers.paper.universe import Instrument, instrument
from controlplane.models import BrokerConnection

ACCOUNT_NAMES = {1: "Paper Margin", 2: "Paper Margin 2"}
CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9]{1,20}$")
MAX_ORDER_QUANTITY = Decimal(10_000_000)
# A limit or stop this far from the last price is probably a typo; the preview says so.
FAR_FROM_LAST = Decimal("0.05")


# ---- Accounts ----------------------------------------------------------------------------


def open_paper_accounts(connection: BrokerConnection) -> list[PaperAccount]:
    """Open the connection's paper accounts, funded with PAPER_STARTING_CASH; a second one
    when PAPER_SECOND_ACCOUNT is on. Idempotent: existing accounts are left as they are."""
    starting_cash = _starting_cash()
    slots = [1, 2] if settings.PAPER_SECOND_ACCOUNT else [1]
    with transaction.atomic():
        # Concurrent openers of one connection queue here, so each slot is opened once.
        BrokerConnection.objects.select_for_update().get(pk=connection.pk)
        opened = set(
            PaperAccount.objects.filter(connection=connection).values_list("slot", flat=True)
        )
        for slot in slots:
            if slot not in opened:
                _open_account(connection, slot, starting_cash)
    return list(PaperAccount.objects.filter(connection=connection).order_by("slot"))


def _starting_cash() -> Decimal:
    try:
        amount = Decimal(settings.PAPER_STARTING_CASH)
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise ImproperlyConfigured("PAPER_STARTING_CASH must be a non-negative amount")
    return cents(amount)


def _open_account(connection: BrokerConnection, slot: int, cash: Decimal) -> None:
    now = timezone.now()
    account = PaperAccount(connection=connection, slot=slot, name=ACCOUNT_NAMES[slot], cash=cash)
    account.created_at = now
    number = account.take_entry_number()
    account.save()
    account.transactions.create(
        transaction_id=f"T{number}",
        type=TransactionType.DEPOSIT,
        time=now,
        amount=cash,
        description="Starting paper cash",
    )


def _lock(account: PaperAccount) -> PaperAccount:
    return PaperAccount.objects.select_for_update().get(pk=account.pk)


# ---- Evaluation --------------------------------------------------------------------------


def evaluate_open_orders(account: PaperAccount | None = None) -> int:
    """Work the resting orders of `account` (of every account when None, as the periodic
    task does) against the market now: expire, trigger, fill. Returns how many changed."""
    if account is not None:
        accounts = [account]
    else:
        accounts = list(PaperAccount.objects.filter(orders__status__in=OPEN_STATUSES).distinct())
    changed = 0
    for each in accounts:
        # Every read of an account comes here: skip the lock when nothing rests.
        if not each.orders.filter(status__in=OPEN_STATUSES).exists():
            continue
        with transaction.atomic():
            locked = _lock(each)
            book = PriceBook(timezone.now())
            for order in locked.orders.filter(status__in=OPEN_STATUSES).order_by(
                "created_at", "pk"
            ):
                changed += work_order(locked, order, book)
    return changed


# ---- Previews ----------------------------------------------------------------------------


def preview_paper_order(account: PaperAccount, request: OrderRequest) -> Preview:
    """Price the request, refuse it as placing would, and keep a preview to place it by."""
    item = validate_request(request)
    now = timezone.now()
    market_hours.ensure_open(now, extended_hours=request.extended_hours)
    book = PriceBook(now)
    quote = book.quote(item.symbol)
    check_capacity(
        account,
        symbol=item.symbol,
        side=request.side,
        quantity=request.quantity,
        price=order_price(
            request.side, request.order_type, request.limit_price, request.stop_price, quote
        ),
        book=book,
    )
    price = _expected_price(request, quote)
    value = cents(price * request.quantity)
    total = value + COMMISSION if request.side.is_buy else value - COMMISSION
    with transaction.atomic():
        account.previews.filter(created_at__lte=now - PREVIEW_LIFETIME).delete()
        preview = account.previews.create(
            request_hash=request_fingerprint(request),
            estimated_price=price,
            estimated_total=total,
            commission=COMMISSION,
            created_at=now,
        )
    return Preview(
        estimated_total=total,
        commission=COMMISSION,
        estimated_price=price,
        preview_id=preview.preview_id,
        warnings=tuple(_warnings(request, quote, book)),
    )


def validate_request(request: OrderRequest) -> Instrument:
    problems = request.problems()
    if not problems:
        problems = _tick_problems(request)
    if not problems and request.quantity > MAX_ORDER_QUANTITY:
        problems = [f"quantity must be at most {plain(MAX_ORDER_QUANTITY)} shares"]
    if problems:
        raise BrokerError(BrokerErrorCode.INVALID_ORDER, "; ".join(problems))
    return instrument(request.symbol)


def _tick_problems(request: OrderRequest) -> list[str]:
    # As on US exchanges: whole cents from $1 up, hundredths of a cent below.
    found = []
    for name, price in (("limit_price", request.limit_price), ("stop_price", request.stop_price)):
        if price is None:
            continue
        tick = CENT if price >= 1 else Decimal("0.0001")
        if price % tick:
            found.append(f"{name} must be a multiple of {tick} at that price")
    return found


def request_fingerprint(request: OrderRequest) -> str:
    """Equal for equal requests however their numbers are written (10 and 10.00 alike)."""

    def number(value: Decimal | None) -> str:
        return "" if value is None else plain(value)

    fields = {
        "symbol": request.symbol,
        "side": request.side.value,
        "quantity": number(request.quantity),
        "order_type": request.order_type.value,
        "limit_price": number(request.limit_price),
        "stop_price": number(request.stop_price),
        "time_in_force": request.time_in_force.value,
        "extended_hours": request.extended_hours,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _expected_price(request: OrderRequest, quote: Quote) -> Decimal:
    """Where the order would fill if placed now; its limit or stop price if it would rest."""
    market = touch(request.side, quote)
    triggered = request.stop_price is None or stop_reached(request.side, request.stop_price, quote)
    if request.order_type == OrderType.STOP and not triggered:
        assert request.stop_price is not None
        return request.stop_price
    if request.limit_price is not None and not (
        triggered and is_marketable(request.side, request.limit_price, quote)
    ):
        return request.limit_price
    return market


def _warnings(request: OrderRequest, quote: Quote, book: PriceBook) -> list[str]:
    found = []
    for name, price in (("limit", request.limit_price), ("stop", request.stop_price)):
        if price is not None and abs(price - quote.last) > quote.last * FAR_FROM_LAST:
            found.append(
                f"the {name} price {price} is more than 5% away from the last price {quote.last}"
            )
    if request.order_type == OrderType.MARKET and market_hours.session_at(book.at).is_extended:
        found.append(
            "market order during extended hours: thin trading can fill it far from the last price"
        )
    if request.stop_price is not None and stop_reached(request.side, request.stop_price, quote):
        found.append("the stop price has already been reached: the order triggers at once")
    if request.limit_price is not None and is_marketable(request.side, request.limit_price, quote):
        depth = touch_depth(request.symbol, book.at)
        if request.quantity > depth:
            found.append(
                f"only {plain(depth)} shares are offered at {touch(request.side, quote)}: a limit "
                "order takes at most that many a minute, so expect a partial fill"
            )
    elif request.limit_price is not None and request.time_in_force not in (
        TimeInForce.IOC,
        TimeInForce.FOK,
    ):
        found.append("the limit price is not reached now: the order will rest until it is")
    return found


# ---- Placing and cancelling --------------------------------------------------------------


def place_paper_order(
    account: PaperAccount, request: OrderRequest, *, client_order_id: str, preview_id: str
) -> PaperOrder:
    """Place a previewed order and work it at once. A client order id already used on the
    account returns that order instead: a retried placement never makes a second one."""
    if not CLIENT_ORDER_ID.match(client_order_id):
        raise BrokerError(
            BrokerErrorCode.INVALID_ORDER, "client_order_id must be 1 to 20 letters or digits"
        )
    existing = account.orders.filter(client_order_id=client_order_id).first()
    if existing is not None:
        return existing
    item = validate_request(request)
    now = timezone.now()
    market_hours.ensure_open(now, extended_hours=request.extended_hours)
    # Settle what rests first, in its own transaction, so buying power is current and a
    # refusal below does not undo the fills.
    evaluate_open_orders(account)
    with transaction.atomic():
        locked = _lock(account)
        # A placement with the same id may have committed while this one waited for the lock.
        existing = locked.orders.filter(client_order_id=client_order_id).first()
        if existing is not None:
            return existing
        _check_preview(locked, preview_id, request, now)
        book = PriceBook(now)
        check_capacity(
            locked,
            symbol=item.symbol,
            side=request.side,
            quantity=request.quantity,
            price=order_price(
                request.side,
                request.order_type,
                request.limit_price,
                request.stop_price,
                book.quote(item.symbol),
            ),
            book=book,
        )
        order = _create_order(locked, request, client_order_id, now)
        if order is None:
            return locked.orders.get(client_order_id=client_order_id)
        work_order(locked, order, book)
    return order


def _check_preview(
    account: PaperAccount, preview_id: str, request: OrderRequest, now: datetime
) -> None:
    preview = account.previews.filter(preview_id=preview_id).first()
    if preview is None:
        message = "no such preview on this account; preview the order first"
    elif preview.is_expired(now):
        message = "the preview has expired (previews last 10 minutes); preview the order again"
    elif preview.request_hash != request_fingerprint(request):
        message = "preview does not match this order; preview it again"
    else:
        return
    raise BrokerError(BrokerErrorCode.REJECTED, message)


def _create_order(
    account: PaperAccount, request: OrderRequest, client_order_id: str, now: datetime
) -> PaperOrder | None:
    """The new order, or None when the unique client order id shows another writer placed it
    first (possible only for a writer that skipped the account lock; kept as the backstop)."""
    expires_at = None
    if request.time_in_force == TimeInForce.DAY:
        expires_at = market_hours.day_order_expiry(now, extended_hours=request.extended_hours)
    try:
        with transaction.atomic():
            order_id = account.take_order_id()
            account.save(update_fields=["orders_placed"])
            return account.orders.create(
                order_id=order_id,
                client_order_id=client_order_id,
                symbol=request.symbol,
                side=request.side,
                quantity=request.quantity,
                order_type=request.order_type,
                limit_price=request.limit_price,
                stop_price=request.stop_price,
                time_in_force=request.time_in_force,
                extended_hours=request.extended_hours,
                expires_at=expires_at,
                created_at=now,
            )
    except IntegrityError:
        account.refresh_from_db(fields=["orders_placed"])
        return None


def find_paper_order(account: PaperAccount, order_id: str) -> PaperOrder:
    order = account.orders.filter(order_id=order_id).first()
    if order is None:
        raise BrokerError(BrokerErrorCode.ORDER_NOT_FOUND, f"no order {order_id} on this account")
    return order


def cancel_paper_order(account: PaperAccount, order_id: str) -> PaperOrder:
    # An order the market has filled meanwhile is filled, not cancelled: settle first.
    evaluate_open_orders(account)
    with transaction.atomic():
        locked = _lock(account)
        order = find_paper_order(locked, order_id)
        if not order.is_open:
            raise BrokerError(
                BrokerErrorCode.ORDER_NOT_CANCELLABLE,
                f"order {order_id} is already {order.status}",
            )
        order.status = OrderStatus.CANCELLED
        order.reason = "cancelled on request"
        order.save(update_fields=["status", "reason", "updated_at"])
    return order
