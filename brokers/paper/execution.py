"""Working an order against the simulated market, and booking what it fills.

Called by brokers.paper.services only, with the account row locked. The market model:

- An order is worked against the quote of the moment it is evaluated: when placed, when its
  account is read, and when the periodic evaluation runs. The price path in between is not
  back-filled, so a limit the price touched and left while nobody looked does not fill, as
  if the order had been in the market only at those instants.
- A market order (and a triggered stop) fills whole at the touch: the ask for buys, the bid
  for sells. Sweeping deeper into the book would cost more; that impact is not modelled.
- A limit order (and a triggered stop-limit) fills at the touch when the touch is at or
  better than its limit, but takes at most the depth shown there, once a minute. That is
  how partial fills happen, and what IOC (fill what can be filled, cancel the rest) and FOK
  (all at once or nothing) act on.
- A stop triggers when the last price reaches it (buy stops at or above, sell stops at or
  below) and from then on works as a market or limit order.
- Commission is zero; the fill and transaction rows carry it as 0.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal

from brokers.base import BrokerError, OrderStatus, Quote, Side, TimeInForce, TransactionType
from brokers.paper import market_hours
from brokers.paper.capacity import check_capacity, touch
from brokers.paper.models import PaperAccount, PaperFill, PaperOrder, PaperPosition
from brokers.paper.money import four_places, plain, six_places
from brokers.paper.prices import PriceBook, touch_depth

COMMISSION = Decimal(0)

_PAST_TENSE = {
    Side.BUY: "Bought",
    Side.SELL: "Sold",
    Side.SELL_SHORT: "Sold short",
    Side.BUY_TO_COVER: "Bought to cover",
}


def work_order(account: PaperAccount, order: PaperOrder, book: PriceBook) -> bool:
    """Expire, trigger, fill or cancel `order` as the market at `book.at` allows, and save
    it. Returns whether the order changed."""
    changed = _work(account, order, book)
    if changed:
        order.save()
    return changed


def _work(account: PaperAccount, order: PaperOrder, book: PriceBook) -> bool:
    now = book.at
    if order.expires_at is not None and now >= order.expires_at:
        return _finish(order, OrderStatus.EXPIRED, "DAY order expired at the close")
    if not market_hours.trades_at(now, extended_hours=order.extended_hours):
        return False
    quote = book.quote(order.symbol)
    triggered = _trigger(order, quote)
    if order.is_stop and not order.stop_triggered:
        return False
    quantity = _fillable_quantity(order, quote, now)
    if order.time_in_force == TimeInForce.FOK and quantity < order.remaining_quantity:
        return _finish(
            order, OrderStatus.CANCELLED, "FOK: the whole quantity could not fill at once"
        )
    if quantity > 0:
        _execute(account, order, quantity, touch(order.trade_side, quote), book)
    if order.time_in_force == TimeInForce.IOC and order.is_open:
        return _finish(order, OrderStatus.CANCELLED, "IOC: the unfilled quantity was cancelled")
    return triggered or quantity > 0


def _trigger(order: PaperOrder, quote: Quote) -> bool:
    """Trigger a stop the last price has reached; whether this call triggered it."""
    if not order.is_stop or order.stop_triggered:
        return False
    assert order.stop_price is not None
    order.stop_triggered = stop_reached(order.trade_side, order.stop_price, quote)
    return order.stop_triggered


def _execute(
    account: PaperAccount, order: PaperOrder, quantity: Decimal, price: Decimal, book: PriceBook
) -> None:
    """Fill, or reject an order the account can no longer carry out: it may have changed
    since the order was placed (cash spent, a position opened the other way)."""
    try:
        check_capacity(
            account,
            symbol=order.symbol,
            side=order.trade_side,
            quantity=quantity,
            price=price,
            book=book,
            exclude=order,
        )
    except BrokerError as refusal:
        _finish(order, OrderStatus.REJECTED, refusal.broker_message)
        return
    _fill(account, order, quantity, price, book.at)


def stop_reached(side: Side, stop_price: Decimal, quote: Quote) -> bool:
    return quote.last >= stop_price if side.is_buy else quote.last <= stop_price


def is_marketable(side: Side, limit_price: Decimal, quote: Quote) -> bool:
    price = touch(side, quote)
    return price <= limit_price if side.is_buy else price >= limit_price


def _fillable_quantity(order: PaperOrder, quote: Quote, now: datetime) -> Decimal:
    if not order.is_limit_priced:
        return order.remaining_quantity
    assert order.limit_price is not None
    minute = math.floor(now.timestamp() / 60)
    if order.depth_minute == minute or not is_marketable(
        order.trade_side, order.limit_price, quote
    ):
        return Decimal(0)
    order.depth_minute = minute
    return min(order.remaining_quantity, touch_depth(order.symbol, now))


def _finish(order: PaperOrder, status: OrderStatus, reason: str) -> bool:
    order.status = status
    order.reason = reason
    return True


def _fill(
    account: PaperAccount, order: PaperOrder, quantity: Decimal, price: Decimal, now: datetime
) -> None:
    """Book one execution: the order (saved by the caller), the position, cash, a fill and
    a ledger entry."""
    side = order.trade_side
    number = account.take_entry_number()
    filled = order.filled_quantity + quantity
    previous_value = (order.average_fill_price or Decimal(0)) * order.filled_quantity
    order.average_fill_price = six_places((previous_value + price * quantity) / filled)
    order.filled_quantity = filled
    order.status = OrderStatus.FILLED if filled == order.quantity else OrderStatus.PARTIALLY_FILLED

    _move_position(account, order.symbol, side, quantity, price)
    value = quantity * price
    amount = -(value + COMMISSION) if side.is_buy else value - COMMISSION
    account.cash += amount
    account.save(update_fields=["cash", "entries_made"])
    PaperFill.objects.create(
        order=order,
        fill_id=f"F{number}",
        quantity=quantity,
        price=price,
        commission=COMMISSION,
        time=now,
    )
    account.transactions.create(
        transaction_id=f"T{number}",
        type=TransactionType(side.value),
        time=now,
        amount=amount,
        description=f"{_PAST_TENSE[side]} {plain(quantity)} {order.symbol} @ {price}",
        symbol=order.symbol,
        quantity=quantity,
        price=price,
        order_id=order.order_id,
    )


def _move_position(
    account: PaperAccount, symbol: str, side: Side, quantity: Decimal, price: Decimal
) -> None:
    """Opening trades (BUY, SELL_SHORT) re-average the cost; closing trades (SELL,
    BUY_TO_COVER) realize (price - average) per share on a long, (average - price) on a
    short, and leave the average as it is."""
    position, _ = PaperPosition.objects.get_or_create(account=account, symbol=symbol)
    size = abs(position.quantity)
    if side in (Side.BUY, Side.SELL_SHORT):
        position.average_cost = six_places(
            (size * position.average_cost + quantity * price) / (size + quantity)
        )
        position.quantity += quantity if side == Side.BUY else -quantity
    else:
        gain = price - position.average_cost if side == Side.SELL else position.average_cost - price
        position.realized_pnl += four_places(gain * quantity)
        position.quantity += -quantity if side == Side.SELL else quantity
        if position.quantity == 0:
            position.average_cost = Decimal(0)
    position.save()
