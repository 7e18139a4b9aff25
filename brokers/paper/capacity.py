"""What an account can still do: buying power and the shares free to sell or cover.

The rule, Reg T style, for accounts that hold cash and may sell short:

    buying power = cash
                   - cash reserved by open BUY orders (remaining shares x order price)
                   - half the value reserved by open SELL_SHORT orders
                   - 150% of the market value of the short positions

A short sale credits its proceeds to cash, yet 150% of the short's value is held against
it, so opening a short uses half its value of buying power. A buy uses its full cost.
Selling a long and covering a short only need the shares, less those already committed to
other open orders; covering is never refused for want of cash (it lowers the risk), so cash
can go negative in a short squeeze, like a margin debit.

An order is valued at its limit price when it has one; a market order at the touch (ask
for buys, bid for sells); a stop order at the worse of its stop price and the touch.
"""

from __future__ import annotations

from decimal import Decimal

from brokers.base import BrokerError, BrokerErrorCode, OrderType, Quote, Side
from brokers.paper.models import OPEN_STATUSES, PaperAccount, PaperOrder, PaperPosition
from brokers.paper.money import dollars, plain
from brokers.paper.prices import PriceBook

SHORT_REQUIREMENT = Decimal("1.5")
SHORT_SALE_USES = SHORT_REQUIREMENT - 1


def touch(side: Side, quote: Quote) -> Decimal:
    return quote.ask if side.is_buy else quote.bid


def order_price(
    side: Side,
    order_type: OrderType,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    quote: Quote,
) -> Decimal:
    """The price an order is valued at for buying power (see the module docstring)."""
    if limit_price is not None and order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        return limit_price
    market = touch(side, quote)
    if order_type == OrderType.STOP and stop_price is not None:
        return max(stop_price, market) if side.is_buy else min(stop_price, market)
    return market


def _open_orders(account: PaperAccount, exclude: PaperOrder | None) -> list[PaperOrder]:
    orders = account.orders.filter(status__in=OPEN_STATUSES)
    if exclude is not None:
        orders = orders.exclude(pk=exclude.pk)
    return list(orders)


def _reserved_cash(orders: list[PaperOrder], book: PriceBook) -> Decimal:
    reserved = Decimal(0)
    for order in orders:
        if order.side not in (Side.BUY, Side.SELL_SHORT):
            continue
        side = order.trade_side
        price = order_price(
            side,
            OrderType(order.order_type),
            order.limit_price,
            order.stop_price,
            book.quote(order.symbol),
        )
        share = 1 if side == Side.BUY else SHORT_SALE_USES
        reserved += order.remaining_quantity * price * share
    return reserved


def short_requirement(account: PaperAccount, book: PriceBook) -> Decimal:
    shorts = account.positions.filter(quantity__lt=0)
    return sum(
        (-short.quantity * book.quote(short.symbol).last * SHORT_REQUIREMENT for short in shorts),
        Decimal(0),
    )


def buying_power(
    account: PaperAccount, book: PriceBook, *, exclude: PaperOrder | None = None
) -> Decimal:
    """Per the module docstring; `exclude` leaves out one open order's own reservation, for
    checking that order itself as it executes."""
    reserved = _reserved_cash(_open_orders(account, exclude), book)
    return account.cash - reserved - short_requirement(account, book)


def _held(account: PaperAccount, symbol: str) -> Decimal:
    position = PaperPosition.objects.filter(account=account, symbol=symbol).first()
    return position.quantity if position is not None else Decimal(0)


def _committed(orders: list[PaperOrder], symbol: str, side: Side) -> Decimal:
    return sum(
        (o.remaining_quantity for o in orders if o.symbol == symbol and o.side == side),
        Decimal(0),
    )


def check_capacity(
    account: PaperAccount,
    *,
    symbol: str,
    side: Side,
    quantity: Decimal,
    price: Decimal,
    book: PriceBook,
    exclude: PaperOrder | None = None,
) -> None:
    """Refuse (BrokerError) an order the account cannot afford or has not the shares for.

    Placing checks a new order; execution checks a resting one again, excluding its own
    reservation, since the account may have changed while it waited."""
    held = _held(account, symbol)
    if side == Side.BUY:
        _check_buy(account, symbol, held, quantity * price, book, exclude)
    elif side == Side.SELL:
        _check_sell(
            symbol, held, quantity, _committed(_open_orders(account, exclude), symbol, side)
        )
    elif side == Side.SELL_SHORT:
        _check_short_sale(account, symbol, held, quantity * price, book, exclude)
    else:
        committed = _committed(_open_orders(account, exclude), symbol, side)
        _check_cover(symbol, held, quantity, committed)


def _check_buy(
    account: PaperAccount,
    symbol: str,
    held: Decimal,
    cost: Decimal,
    book: PriceBook,
    exclude: PaperOrder | None,
) -> None:
    # Keeping BUY/SELL on longs and SELL_SHORT/BUY_TO_COVER on shorts means a position
    # never flips sign within one fill.
    if held < 0:
        raise BrokerError(
            BrokerErrorCode.REJECTED,
            f"cannot BUY {symbol} while short {plain(-held)} shares; use BUY_TO_COVER",
        )
    available = buying_power(account, book, exclude=exclude)
    if cost > available:
        raise BrokerError(
            BrokerErrorCode.INSUFFICIENT_FUNDS,
            f"the order costs {dollars(cost)} but buying power is {dollars(available)}",
        )


def _check_sell(symbol: str, held: Decimal, quantity: Decimal, committed: Decimal) -> None:
    long = max(held, Decimal(0))
    if quantity <= long - committed:
        return
    detail = f"{plain(long)} held" if long else "none held"
    if committed:
        detail += f", {plain(committed)} already in open sell orders"
    raise BrokerError(
        BrokerErrorCode.REJECTED,
        f"cannot sell {plain(quantity)} {symbol}: {detail}; use SELL_SHORT to sell short",
    )


def _check_short_sale(
    account: PaperAccount,
    symbol: str,
    held: Decimal,
    value: Decimal,
    book: PriceBook,
    exclude: PaperOrder | None,
) -> None:
    if not account.allow_short_selling:
        raise BrokerError(BrokerErrorCode.REJECTED, "short selling is not enabled on this account")
    if held > 0:
        raise BrokerError(
            BrokerErrorCode.REJECTED,
            f"cannot sell {symbol} short while holding {plain(held)} shares; SELL those first",
        )
    needed = value * SHORT_SALE_USES
    available = buying_power(account, book, exclude=exclude)
    if needed > available:
        raise BrokerError(
            BrokerErrorCode.INSUFFICIENT_FUNDS,
            f"selling {dollars(value)} short needs {dollars(needed)} of buying power (50% "
            f"margin) but buying power is {dollars(available)}",
        )


def _check_cover(symbol: str, held: Decimal, quantity: Decimal, committed: Decimal) -> None:
    short = max(-held, Decimal(0))
    if quantity <= short - committed:
        return
    detail = f"{plain(short)} short" if short else "no short position"
    if committed:
        detail += f", {plain(committed)} already in open cover orders"
    raise BrokerError(
        BrokerErrorCode.REJECTED, f"cannot buy to cover {plain(quantity)} {symbol}: {detail}"
    )
