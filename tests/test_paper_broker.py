"""The paper broker's own behaviour: its accounts, its simulated market and its books.

Time is pinned with time_machine; to wait for the market, a test searches the simulated
price path forward (deterministically, in bounded steps) for the moment it crosses, then
moves the clock there.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
import time_machine
from django.db import connection as db_connection
from django.test import override_settings

from brokers.base import (
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Placement,
    Position,
    Quote,
    Side,
    TimeInForce,
    TransactionType,
)
from brokers.paper import prices
from brokers.paper.adapter import PaperBroker
from brokers.paper.market_hours import EASTERN, previous_close
from brokers.paper.models import PaperAccount, PaperOrder
from brokers.paper.services import evaluate_open_orders
from brokers.paper.universe import UNIVERSE, instrument
from controlplane.services.connections import create_connection
from tests.conftest import OPERATOR, UserCreds

# A Wednesday, 10:00 in New York.
MOMENT = datetime(2025, 11, 19, 15, 0, tzinfo=UTC)
CENT = Decimal("0.01")
STARTING_CASH = Decimal("100000.00")
DAY, IOC, FOK = TimeInForce.DAY, TimeInForce.IOC, TimeInForce.FOK


def connect(user: UserCreds) -> PaperBroker:
    connection = create_connection(
        user.user, broker="paper", environment="paper", trading_requested=True, actor=OPERATOR
    )
    broker = PaperBroker(connection)
    broker.start_authorization()
    return broker


def request(
    symbol: str,
    side: Side,
    quantity: int,
    order_type: OrderType = OrderType.MARKET,
    *,
    limit: Decimal | None = None,
    stop: Decimal | None = None,
    tif: TimeInForce = TimeInForce.GTC,
    extended_hours: bool = False,
) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        order_type=order_type,
        limit_price=limit,
        stop_price=stop,
        time_in_force=tif,
        extended_hours=extended_hours,
    )


def quote_at(symbol: str, at: datetime) -> Quote:
    return prices.quote(instrument(symbol), at)


def first_moment(
    condition: Callable[[Quote], bool],
    symbol: str,
    start: datetime,
    *,
    step: timedelta = timedelta(minutes=5),
    horizon: timedelta = timedelta(days=30),
) -> datetime:
    at = start
    while at <= start + horizon:
        if condition(quote_at(symbol, at)):
            return at
        at += step
    raise AssertionError(f"{symbol} never met the condition within {horizon}")


class Desk:
    """Alice's paper broker and first account, with the few moves the tests repeat."""

    def __init__(self, broker: PaperBroker) -> None:
        self.broker = broker
        self.account_id = broker.list_accounts()[0].account_id
        self._ids = 0

    def place(self, order_request: OrderRequest) -> Placement:
        preview = self.broker.preview_order(self.account_id, order_request)
        self._ids += 1
        return self.broker.place_order(self.account_id, order_request, f"test{self._ids}", preview)

    def fill_price(self, order_request: OrderRequest) -> Decimal:
        """Place an order expected to fill at once; its average price."""
        price = self.order(self.place(order_request)).average_fill_price
        assert price is not None
        return price

    def order(self, placement: Placement) -> Order:
        return self.broker.get_order(self.account_id, placement.order_id)

    def position(self, symbol: str) -> Position | None:
        held = [p for p in self.broker.get_positions(self.account_id) if p.symbol == symbol]
        return held[0] if held else None

    def cash(self) -> Decimal:
        return self.broker.get_balance(self.account_id).cash

    def refused(self, order_request: OrderRequest) -> BrokerError:
        with pytest.raises(BrokerError) as refusal:
            self.place(order_request)
        return refusal.value


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(MOMENT, tick=False) as traveller:
        yield traveller


@pytest.fixture
def desk(alice: UserCreds, clock: time_machine.Traveller) -> Desk:
    return Desk(connect(alice))


# ---- Accounts ----------------------------------------------------------------------------


def test_it_opens_an_account_with_100000_usd(desk: Desk) -> None:
    [account] = desk.broker.list_accounts()
    assert account.account_id.startswith("PA")
    assert len(account.account_id) == 12
    assert account.account_type == "MARGIN"
    balance = desk.broker.get_balance(desk.account_id)
    assert balance.cash == balance.buying_power == balance.account_value == STARTING_CASH
    [deposit] = desk.broker.list_transactions(desk.account_id)
    assert deposit.transaction_type == TransactionType.DEPOSIT
    assert deposit.amount == STARTING_CASH


def test_it_needs_no_authorization(desk: Desk) -> None:
    adapter: BrokerAdapter = desk.broker
    assert adapter.start_authorization() is None  # None: active at once, nobody to ask
    desk.broker.complete_authorization("anything")
    desk.broker.renew()
    desk.broker.revoke()
    assert [a.account_id for a in desk.broker.list_accounts()] == [desk.account_id]


@override_settings(PAPER_SECOND_ACCOUNT=True, PAPER_STARTING_CASH="25000.50")
def test_it_opens_a_second_account_when_configured_and_only_once(alice: UserCreds) -> None:
    broker = connect(alice)
    broker.start_authorization()
    accounts = broker.list_accounts()
    assert [account.name for account in accounts] == ["Paper Margin", "Paper Margin 2"]
    for account in accounts:
        assert broker.get_balance(account.account_id).cash == Decimal("25000.50")
        assert len(broker.list_transactions(account.account_id)) == 1


def test_it_adds_the_second_account_to_an_existing_connection(alice: UserCreds) -> None:
    broker = connect(alice)
    with override_settings(PAPER_SECOND_ACCOUNT=True):
        broker.start_authorization()
    assert len(broker.list_accounts()) == 2


# ---- The simulated market ----------------------------------------------------------------


def test_it_has_a_universe_of_well_known_symbols_with_positive_prices() -> None:
    assert len(UNIVERSE) >= 100
    assert {"AAPL", "MSFT", "NVDA", "SPY", "QQQ", "IWM", "VTI", "BRK.B"} <= set(UNIVERSE)
    for item in UNIVERSE.values():
        assert item.reference_price > 0
        assert Decimal("0.001") <= item.daily_volatility <= Decimal("0.05")
        assert item.name


def test_it_quotes_deterministically_at_a_pinned_time(desk: Desk) -> None:
    first = desk.broker.get_quotes(["AAPL", "SPY", "BRK.B"])
    assert desk.broker.get_quotes(["AAPL", "SPY", "BRK.B"]) == first
    with time_machine.travel(MOMENT + timedelta(hours=1), tick=False):
        later = desk.broker.get_quotes(["AAPL", "SPY", "BRK.B"])
    assert desk.broker.get_quotes(["AAPL", "SPY", "BRK.B"]) == first
    assert [quote.last for quote in later] != [quote.last for quote in first]
    assert all(quote.time == MOMENT for quote in first)


def test_it_moves_prices_over_time() -> None:
    path = [quote_at("NVDA", MOMENT + timedelta(minutes=10 * i)).last for i in range(30)]
    assert len(set(path)) > 20


def test_it_keeps_bid_below_ask_across_the_universe(desk: Desk) -> None:
    symbols = sorted(UNIVERSE)
    for start in range(0, len(symbols), 25):
        for quote in desk.broker.get_quotes(symbols[start : start + 25]):
            assert 0 < quote.bid < quote.ask
            assert quote.bid <= quote.last <= quote.ask
            assert quote.ask - quote.bid >= CENT
            for amount in (quote.last, quote.bid, quote.ask, quote.change):
                assert amount == amount.quantize(CENT)
            assert isinstance(quote.volume, int)
            assert quote.volume >= 0


def test_it_measures_change_from_the_previous_close(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["MSFT"])
    close = previous_close(MOMENT)
    assert close == datetime(2025, 11, 18, 16, 0, tzinfo=EASTERN)
    previous = prices.last_price(instrument("MSFT"), close)
    assert quote.change == quote.last - previous
    assert quote.change_pct == (quote.change * 100 / previous).quantize(CENT)


def test_it_measures_monday_change_from_fridays_close() -> None:
    monday_morning = datetime(2025, 11, 24, 10, 0, tzinfo=EASTERN)
    assert previous_close(monday_morning) == datetime(2025, 11, 21, 16, 0, tzinfo=EASTERN)


def test_it_accumulates_volume_through_the_day() -> None:
    day = [datetime(2025, 11, 19, hour, 0, tzinfo=EASTERN) for hour in (3, 8, 10, 13, 15, 19, 23)]
    volumes = [quote_at("AAPL", at).volume for at in day]
    assert volumes[0] == 0
    assert all(earlier < later for earlier, later in pairwise(volumes))
    assert quote_at("AAPL", datetime(2025, 11, 20, 3, 0, tzinfo=EASTERN)).volume == 0


def test_it_moves_about_one_daily_volatility_a_day() -> None:
    changes = []
    for item in list(UNIVERSE.values())[:40]:
        for day in range(25):
            start = MOMENT + timedelta(days=7 * day, hours=int(item.reference_price) % 24)
            ratio = prices.last_price(item, start + timedelta(days=1)) / prices.last_price(
                item, start
            )
            changes.append(math.log(ratio) / float(item.daily_volatility))
    assert 0.8 < statistics.pstdev(changes) < 1.2


def test_it_keeps_prices_near_the_reference_over_months() -> None:
    item = instrument("TSLA")
    moments = [MOMENT + timedelta(days=3 * i) for i in range(240)]
    deviations = [
        math.log(prices.last_price(item, at) / item.reference_price) / float(item.daily_volatility)
        for at in moments
    ]
    assert max(abs(d) for d in deviations) < 12


def test_it_collapses_duplicate_symbols_and_ignores_case(desk: Desk) -> None:
    quotes = desk.broker.get_quotes(["aapl", "AAPL", " msft ", "AAPL"])
    assert [quote.symbol for quote in quotes] == ["AAPL", "MSFT"]


def test_it_refuses_an_empty_quote_request(desk: Desk) -> None:
    with pytest.raises(BrokerError) as refused:
        desk.broker.get_quotes([])
    assert refused.value.code == BrokerErrorCode.INVALID_ORDER


# ---- Market hours ------------------------------------------------------------------------


@override_settings(PAPER_MARKET_HOURS="regular")
def test_it_follows_regular_market_hours(desk: Desk, clock: time_machine.Traveller) -> None:
    buy = request("AAPL", Side.BUY, 1)
    clock.move_to(datetime(2025, 11, 23, 12, 0, tzinfo=EASTERN))  # a Sunday
    assert desk.refused(buy).code == BrokerErrorCode.MARKET_CLOSED

    clock.move_to(datetime(2025, 11, 24, 8, 0, tzinfo=EASTERN))  # Monday, pre-market
    refusal = desk.refused(buy)
    assert refusal.code == BrokerErrorCode.MARKET_CLOSED
    assert "extended_hours" in refusal.broker_message
    early = request("AAPL", Side.BUY, 1, extended_hours=True, tif=DAY)
    preview = desk.broker.preview_order(desk.account_id, early)
    assert any("extended hours" in warning for warning in preview.warnings)
    assert desk.place(early).status == OrderStatus.FILLED

    clock.move_to(datetime(2025, 11, 24, 20, 30, tzinfo=EASTERN))
    assert desk.refused(early).code == BrokerErrorCode.MARKET_CLOSED

    clock.move_to(datetime(2025, 11, 25, 9, 30, tzinfo=EASTERN))
    assert desk.place(buy).status == OrderStatus.FILLED


@override_settings(PAPER_MARKET_HOURS="regular")
def test_it_leaves_resting_orders_alone_while_the_market_is_closed(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    friday = datetime(2025, 11, 21, 15, 0, tzinfo=EASTERN)
    saturday = datetime(2025, 11, 22, 12, 0, tzinfo=EASTERN)
    on_friday, on_saturday = quote_at("AAPL", friday), quote_at("AAPL", saturday)
    # A limit the Saturday price reaches but Friday's does not, whichever way it went.
    if on_saturday.ask < on_friday.ask:
        waiting = request("AAPL", Side.BUY, 1, OrderType.LIMIT, limit=on_saturday.ask)
    else:
        waiting = request("AAPL", Side.SELL_SHORT, 1, OrderType.LIMIT, limit=on_saturday.bid)
    clock.move_to(friday)
    placement = desk.place(waiting)
    assert placement.status == OrderStatus.OPEN
    clock.move_to(saturday)
    assert desk.order(placement).status == OrderStatus.OPEN
    with override_settings(PAPER_MARKET_HOURS="always"):
        assert desk.order(placement).status == OrderStatus.FILLED


# ---- Resting orders ----------------------------------------------------------------------


def test_it_fills_a_resting_limit_order_once_the_price_reaches_it(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["TSLA"])
    limit = (quote.ask * Decimal("0.995")).quantize(CENT)
    placement = desk.place(request("TSLA", Side.BUY, 10, OrderType.LIMIT, limit=limit))
    assert placement.status == OrderStatus.OPEN
    assert desk.broker.get_balance(desk.account_id).buying_power == STARTING_CASH - 10 * limit

    moment = first_moment(lambda q: q.ask <= limit, "TSLA", MOMENT)
    clock.move_to(moment - timedelta(minutes=5))
    assert desk.order(placement).status == OrderStatus.OPEN
    clock.move_to(moment)
    order = desk.order(placement)
    price = quote_at("TSLA", moment).ask
    assert order.status == OrderStatus.FILLED
    assert order.average_fill_price == price <= limit
    assert [fill.time for fill in order.fills] == [moment]
    assert desk.cash() == STARTING_CASH - 10 * price


def test_it_triggers_a_sell_stop_when_the_last_price_falls_to_it(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    desk.place(request("TSLA", Side.BUY, 10))
    [quote] = desk.broker.get_quotes(["TSLA"])
    stop = (quote.last * Decimal("0.99")).quantize(CENT)
    placement = desk.place(request("TSLA", Side.SELL, 10, OrderType.STOP, stop=stop))
    assert placement.status == OrderStatus.OPEN

    moment = first_moment(lambda q: q.last <= stop, "TSLA", MOMENT)
    clock.move_to(moment - timedelta(minutes=5))
    assert desk.order(placement).status == OrderStatus.OPEN
    clock.move_to(moment)
    order = desk.order(placement)
    assert order.status == OrderStatus.FILLED
    assert order.average_fill_price == quote_at("TSLA", moment).bid
    assert desk.position("TSLA") is None


def test_it_triggers_a_buy_stop_limit_and_fills_it_within_the_limit(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["AMD"])
    stop = (quote.last * Decimal("1.01")).quantize(CENT)
    limit = (stop * Decimal("1.01")).quantize(CENT)
    placement = desk.place(
        request("AMD", Side.BUY, 5, OrderType.STOP_LIMIT, stop=stop, limit=limit)
    )
    assert placement.status == OrderStatus.OPEN
    moment = first_moment(lambda q: q.last >= stop, "AMD", MOMENT)
    clock.move_to(moment)
    order = desk.order(placement)
    assert order.status == OrderStatus.FILLED
    assert order.average_fill_price is not None
    assert order.average_fill_price <= limit


def test_it_does_not_back_fill_a_crossing_nobody_saw(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["TSLA"])
    limit = (quote.ask * Decimal("0.995")).quantize(CENT)
    placement = desk.place(request("TSLA", Side.BUY, 1, OrderType.LIMIT, limit=limit))
    crossed = first_moment(lambda q: q.ask <= limit, "TSLA", MOMENT)
    recovered = first_moment(lambda q: q.ask > limit, "TSLA", crossed)
    clock.move_to(recovered)
    assert desk.order(placement).status == OrderStatus.OPEN


def test_it_rejects_a_resting_order_the_account_can_no_longer_carry_out(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["AAPL"])
    limit = (quote.bid * Decimal("1.005")).quantize(CENT)
    short = desk.place(request("AAPL", Side.SELL_SHORT, 1, OrderType.LIMIT, limit=limit))
    assert short.status == OrderStatus.OPEN
    desk.place(request("AAPL", Side.BUY, 2))  # a long position, opened meanwhile
    clock.move_to(first_moment(lambda q: q.bid >= limit, "AAPL", MOMENT))
    order = desk.order(short)
    assert order.status == OrderStatus.REJECTED
    assert "while holding 2" in order.reason
    position = desk.position("AAPL")
    assert position is not None
    assert position.quantity == 2


def test_it_evaluates_every_account_from_the_periodic_function(
    desk: Desk, bob: UserCreds, clock: time_machine.Traveller
) -> None:
    bobs = Desk(connect(bob))
    [quote] = desk.broker.get_quotes(["TSLA"])
    limit = (quote.ask * Decimal("0.995")).quantize(CENT)
    for each in (desk, bobs):
        each.place(request("TSLA", Side.BUY, 1, OrderType.LIMIT, limit=limit))
    clock.move_to(first_moment(lambda q: q.ask <= limit, "TSLA", MOMENT))
    assert evaluate_open_orders() == 2
    assert set(PaperOrder.objects.values_list("status", flat=True)) == {OrderStatus.FILLED}
    assert evaluate_open_orders() == 0


def test_it_expires_a_day_order_at_the_end_of_its_utc_day_when_always_open(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["AAPL"])
    far_below = (quote.bid / 2).quantize(CENT)
    day = desk.place(request("AAPL", Side.BUY, 1, OrderType.LIMIT, limit=far_below, tif=DAY))
    gtc = desk.place(request("AAPL", Side.BUY, 1, OrderType.LIMIT, limit=far_below))
    clock.move_to(datetime(2025, 11, 19, 23, 59, 59, tzinfo=UTC))
    assert desk.order(day).status == OrderStatus.OPEN
    clock.move_to(datetime(2025, 11, 20, 0, 0, tzinfo=UTC))
    assert desk.order(day).status == OrderStatus.EXPIRED
    assert desk.order(gtc).status == OrderStatus.OPEN
    assert desk.broker.get_balance(desk.account_id).buying_power == STARTING_CASH - far_below


@override_settings(PAPER_MARKET_HOURS="regular")
def test_it_expires_a_day_order_at_the_close_under_regular_hours(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["AAPL"])
    far_below = (quote.bid / 2).quantize(CENT)
    day = desk.place(request("AAPL", Side.BUY, 1, OrderType.LIMIT, limit=far_below, tif=DAY))
    clock.move_to(datetime(2025, 11, 19, 15, 59, 59, tzinfo=EASTERN))
    assert desk.order(day).status == OrderStatus.OPEN
    clock.move_to(datetime(2025, 11, 19, 16, 0, tzinfo=EASTERN))
    expired = desk.order(day)
    assert expired.status == OrderStatus.EXPIRED
    assert "expired" in expired.reason


# ---- Immediate-or-cancel and fill-or-kill ------------------------------------------------


def test_it_cancels_an_ioc_order_that_cannot_fill(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["F"])
    below = quote.ask - CENT
    placement = desk.place(request("F", Side.BUY, 10, OrderType.LIMIT, limit=below, tif=IOC))
    assert placement.status == OrderStatus.CANCELLED
    assert desk.order(placement).filled_quantity == 0
    assert desk.position("F") is None


def test_it_fills_what_it_can_of_an_ioc_order_and_cancels_the_rest(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["F"])
    depth = prices.touch_depth("F", MOMENT)
    placement = desk.place(
        request("F", Side.BUY, int(depth) + 100, OrderType.LIMIT, limit=quote.ask, tif=IOC)
    )
    order = desk.order(placement)
    assert order.status == OrderStatus.CANCELLED
    assert order.filled_quantity == depth
    assert "IOC" in order.reason
    position = desk.position("F")
    assert position is not None
    assert position.quantity == depth


def test_it_fills_a_fok_order_whole_or_not_at_all(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["F"])
    depth = int(prices.touch_depth("F", MOMENT))
    too_big = desk.place(
        request("F", Side.BUY, depth + 100, OrderType.LIMIT, limit=quote.ask, tif=FOK)
    )
    assert desk.order(too_big).status == OrderStatus.CANCELLED
    assert desk.order(too_big).filled_quantity == 0
    whole = desk.place(request("F", Side.BUY, depth, OrderType.LIMIT, limit=quote.ask, tif=FOK))
    assert desk.order(whole).status == OrderStatus.FILLED


def test_it_fills_a_large_limit_order_a_minute_at_a_time(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    [quote] = desk.broker.get_quotes(["F"])
    depth = int(prices.touch_depth("F", MOMENT))
    generous = (quote.ask * Decimal("1.03")).quantize(CENT)
    placement = desk.place(request("F", Side.BUY, depth + 50, OrderType.LIMIT, limit=generous))
    assert placement.status == OrderStatus.PARTIALLY_FILLED
    assert desk.order(placement).filled_quantity == depth  # read again, same minute
    clock.move_to(MOMENT + timedelta(minutes=1))
    order = desk.order(placement)
    assert order.status == OrderStatus.FILLED
    assert len(order.fills) == 2


# ---- The books ---------------------------------------------------------------------------


def test_it_keeps_average_cost_realized_pnl_and_cash_exact(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    x = desk.fill_price(request("AAPL", Side.BUY, 10))
    clock.move_to(MOMENT + timedelta(hours=1))
    y = desk.fill_price(request("AAPL", Side.BUY, 10))
    clock.move_to(MOMENT + timedelta(hours=2))
    z = desk.fill_price(request("AAPL", Side.SELL, 5))
    assert x == quote_at("AAPL", MOMENT).ask
    assert z == quote_at("AAPL", MOMENT + timedelta(hours=2)).bid

    average = (x + y) / 2
    position = desk.position("AAPL")
    assert position is not None
    assert position.quantity == 15
    assert position.average_cost == average
    assert position.realized_pnl == (z - average) * 5
    assert position.cost_basis == (15 * average).quantize(CENT)
    assert position.market_value == 15 * position.market_price
    assert desk.cash() == STARTING_CASH - 10 * x - 10 * y + 5 * z
    amounts = [entry.amount for entry in desk.broker.list_transactions(desk.account_id)]
    assert amounts == [5 * z, -10 * y, -10 * x, STARTING_CASH]

    clock.move_to(MOMENT + timedelta(hours=3))
    w = desk.fill_price(request("AAPL", Side.SELL, 15))
    assert desk.position("AAPL") is None
    realized = (z - average) * 5 + (w - average) * 15
    assert desk.cash() == STARTING_CASH + realized
    balance = desk.broker.get_balance(desk.account_id)
    assert balance.account_value == balance.cash == balance.buying_power


def test_it_sells_short_and_covers_with_realized_pnl(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    p1 = desk.fill_price(request("TSLA", Side.SELL_SHORT, 10))
    assert p1 == quote_at("TSLA", MOMENT).bid
    short = desk.position("TSLA")
    assert short is not None
    assert short.quantity == -10
    assert short.average_cost == p1
    assert short.market_value == -10 * short.market_price
    balance = desk.broker.get_balance(desk.account_id)
    assert balance.cash == STARTING_CASH + 10 * p1
    assert balance.buying_power == balance.cash - Decimal("1.5") * 10 * short.market_price
    assert balance.account_value == balance.cash + short.market_value

    clock.move_to(MOMENT + timedelta(hours=2))
    p2 = desk.fill_price(request("TSLA", Side.BUY_TO_COVER, 4))
    assert p2 == quote_at("TSLA", MOMENT + timedelta(hours=2)).ask
    covered = desk.position("TSLA")
    assert covered is not None
    assert covered.quantity == -6
    assert covered.realized_pnl == (p1 - p2) * 4
    assert desk.cash() == STARTING_CASH + 10 * p1 - 4 * p2

    refusal = desk.refused(request("TSLA", Side.BUY_TO_COVER, 7))
    assert refusal.code == BrokerErrorCode.REJECTED
    assert "6 short" in refusal.broker_message
    assert desk.refused(request("TSLA", Side.BUY, 1)).code == BrokerErrorCode.REJECTED


def test_it_refuses_short_selling_when_the_account_does_not_allow_it(desk: Desk) -> None:
    PaperAccount.objects.filter(account_key=desk.account_id).update(allow_short_selling=False)
    refusal = desk.refused(request("AAPL", Side.SELL_SHORT, 1))
    assert refusal.code == BrokerErrorCode.REJECTED
    assert "short selling is not enabled" in refusal.broker_message
    assert desk.broker.list_accounts()[0].account_type == "CASH"


def test_it_refuses_a_short_sale_while_holding_the_stock_long(desk: Desk) -> None:
    desk.place(request("AAPL", Side.BUY, 2))
    refusal = desk.refused(request("AAPL", Side.SELL_SHORT, 1))
    assert refusal.code == BrokerErrorCode.REJECTED
    assert "holding 2" in refusal.broker_message


def test_it_refuses_to_sell_more_than_held(desk: Desk) -> None:
    refusal = desk.refused(request("AAPL", Side.SELL, 10))
    assert refusal.code == BrokerErrorCode.REJECTED
    assert refusal.broker_message == "cannot sell 10 AAPL: none held; use SELL_SHORT to sell short"
    desk.place(request("AAPL", Side.BUY, 5))
    refusal = desk.refused(request("AAPL", Side.SELL, 10))
    assert refusal.broker_message == "cannot sell 10 AAPL: 5 held; use SELL_SHORT to sell short"


def test_it_counts_shares_in_open_sell_orders_as_taken(desk: Desk) -> None:
    desk.place(request("AAPL", Side.BUY, 5))
    [quote] = desk.broker.get_quotes(["AAPL"])
    far_above = (quote.ask * 2).quantize(CENT)
    desk.place(request("AAPL", Side.SELL, 4, OrderType.LIMIT, limit=far_above))
    refusal = desk.refused(request("AAPL", Side.SELL, 2))
    assert "4 already in open sell orders" in refusal.broker_message


def test_it_reserves_buying_power_for_resting_buys(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["MSFT"])
    limit = (quote.bid * Decimal("0.9")).quantize(CENT)
    placement = desk.place(request("MSFT", Side.BUY, 100, OrderType.LIMIT, limit=limit))
    balance = desk.broker.get_balance(desk.account_id)
    assert balance.cash == STARTING_CASH
    assert balance.buying_power == STARTING_CASH - 100 * limit
    affordable = int(balance.buying_power / quote.ask)
    refusal = desk.refused(request("MSFT", Side.BUY, affordable + 1))
    assert refusal.code == BrokerErrorCode.INSUFFICIENT_FUNDS
    assert "buying power" in refusal.broker_message
    desk.broker.cancel_order(desk.account_id, placement.order_id)
    assert desk.broker.get_balance(desk.account_id).buying_power == STARTING_CASH


# ---- Previews and placement --------------------------------------------------------------


def test_it_prices_a_preview_at_the_touch_and_warns_about_odd_prices(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["AAPL"])
    preview = desk.broker.preview_order(desk.account_id, request("AAPL", Side.BUY, 10))
    assert preview.estimated_price == quote.ask
    assert preview.estimated_total == 10 * quote.ask
    assert preview.commission == 0
    assert preview.warnings == ()
    sell = desk.broker.preview_order(desk.account_id, request("AAPL", Side.SELL_SHORT, 10))
    assert sell.estimated_total == 10 * quote.bid

    far_below = (quote.last * Decimal("0.8")).quantize(CENT)
    resting = desk.broker.preview_order(
        desk.account_id, request("AAPL", Side.BUY, 10, OrderType.LIMIT, limit=far_below)
    )
    assert resting.estimated_price == far_below
    assert any("more than 5% away" in warning for warning in resting.warnings)
    assert any("will rest" in warning for warning in resting.warnings)
    assert desk.broker.list_orders(desk.account_id) == []


def test_it_refuses_a_placement_its_preview_was_not_made_for(
    desk: Desk, clock: time_machine.Traveller
) -> None:
    broker, account_id = desk.broker, desk.account_id
    ten = request("AAPL", Side.BUY, 10)
    preview = broker.preview_order(account_id, ten)
    attempts = [
        (request("AAPL", Side.BUY, 11), preview, "does not match"),
        (ten, replace(preview, preview_id="made-up"), "no such preview"),
    ]
    for order_request, offered, complaint in attempts:
        with pytest.raises(BrokerError) as refused:
            broker.place_order(account_id, order_request, "a1", offered)
        assert refused.value.code == BrokerErrorCode.REJECTED
        assert complaint in refused.value.broker_message
    clock.move_to(MOMENT + timedelta(minutes=10))
    with pytest.raises(BrokerError) as refused:
        broker.place_order(account_id, ten, "a1", preview)
    assert "expired" in refused.value.broker_message
    assert broker.list_orders(account_id) == []


def test_it_matches_a_preview_however_the_numbers_are_written(desk: Desk) -> None:
    [quote] = desk.broker.get_quotes(["AAPL"])
    limit = (quote.bid / 2).quantize(CENT)
    preview = desk.broker.preview_order(
        desk.account_id, request("AAPL", Side.BUY, 10, OrderType.LIMIT, limit=limit)
    )
    same = OrderRequest(
        symbol="AAPL",
        side=Side.BUY,
        quantity=Decimal("10.000"),
        order_type=OrderType.LIMIT,
        limit_price=limit.quantize(Decimal("0.0001")),
        time_in_force=TimeInForce.GTC,
    )
    placement = desk.broker.place_order(desk.account_id, same, "b1", preview)
    assert placement.status == OrderStatus.OPEN


def test_it_refuses_a_preview_of_another_account(desk: Desk, bob: UserCreds) -> None:
    bobs = Desk(connect(bob))
    buy = request("AAPL", Side.BUY, 1)
    bobs_preview = bobs.broker.preview_order(bobs.account_id, buy)
    with pytest.raises(BrokerError) as refused:
        desk.broker.place_order(desk.account_id, buy, "c1", bobs_preview)
    assert refused.value.code == BrokerErrorCode.REJECTED


@pytest.mark.parametrize("client_order_id", ["", "has-dash", "x" * 21, "spaces here"])
def test_it_refuses_a_malformed_client_order_id(desk: Desk, client_order_id: str) -> None:
    buy = request("AAPL", Side.BUY, 1)
    preview = desk.broker.preview_order(desk.account_id, buy)
    with pytest.raises(BrokerError) as refused:
        desk.broker.place_order(desk.account_id, buy, client_order_id, preview)
    assert refused.value.code == BrokerErrorCode.INVALID_ORDER


@pytest.mark.parametrize(
    ("order_request", "problem"),
    [
        (request("AAPL", Side.BUY, 0), "positive"),
        (request("AAPL", Side.BUY, 1, OrderType.LIMIT), "limit_price is required"),
        (request("AAPL", Side.BUY, 1, OrderType.LIMIT, limit=Decimal("1.005")), "multiple"),
        (request("AAPL", Side.BUY, 1, tif=IOC), "IOC and FOK"),
        (request("AAPL", Side.BUY, 20_000_000), "at most"),
    ],
)
def test_it_explains_what_is_wrong_with_an_order(
    desk: Desk, order_request: OrderRequest, problem: str
) -> None:
    with pytest.raises(BrokerError) as refused:
        desk.broker.preview_order(desk.account_id, order_request)
    assert refused.value.code == BrokerErrorCode.INVALID_ORDER
    assert problem in refused.value.broker_message


def test_it_names_an_unknown_symbol_in_an_order(desk: Desk) -> None:
    with pytest.raises(BrokerError) as refused:
        desk.broker.preview_order(desk.account_id, request("ZZZZQ", Side.BUY, 1))
    assert refused.value.code == BrokerErrorCode.INVALID_SYMBOL
    assert "ZZZZQ" in refused.value.broker_message


def test_it_places_one_order_for_concurrent_retries(committed_db: None, alice: UserCreds) -> None:
    broker = connect(alice)
    account_id = broker.list_accounts()[0].account_id
    buy = request("AAPL", Side.BUY, 1)
    preview = broker.preview_order(account_id, buy)
    threads = 8
    barrier = threading.Barrier(threads)
    placements: list[Placement] = []
    errors: list[BaseException] = []

    def place() -> None:
        try:
            barrier.wait(timeout=10)
            own = PaperBroker(broker.connection)
            placements.append(own.place_order(account_id, buy, "retry1", preview))
        except BaseException as error:
            errors.append(error)
        finally:
            db_connection.close()

    workers = [threading.Thread(target=place) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []
    assert len(placements) == threads
    assert len({placement.order_id for placement in placements}) == 1
    assert PaperOrder.objects.filter(client_order_id="retry1").count() == 1
    position = broker.get_positions(account_id)
    assert [p.quantity for p in position] == [1]


# ---- Isolation ---------------------------------------------------------------------------


def test_it_hides_another_connections_account(
    desk: Desk, bob: UserCreds, mallory: UserCreds
) -> None:
    for other in (Desk(connect(bob)), Desk(connect(mallory))):
        with pytest.raises(BrokerError) as refused:
            desk.broker.get_balance(other.account_id)
        assert refused.value.code == BrokerErrorCode.ACCOUNT_NOT_FOUND


def test_it_hides_another_accounts_orders(desk: Desk, bob: UserCreds) -> None:
    bobs = Desk(connect(bob))
    placement = bobs.place(request("AAPL", Side.BUY, 1))
    for call in (desk.broker.get_order, desk.broker.cancel_order):
        with pytest.raises(BrokerError) as refused:
            call(desk.account_id, placement.order_id)
        assert refused.value.code == BrokerErrorCode.ORDER_NOT_FOUND


@override_settings(PAPER_SECOND_ACCOUNT=True)
def test_it_keeps_the_two_accounts_of_a_connection_apart(alice: UserCreds) -> None:
    broker = connect(alice)
    first, second = (account.account_id for account in broker.list_accounts())
    preview = broker.preview_order(first, request("AAPL", Side.BUY, 1))
    placement = broker.place_order(first, request("AAPL", Side.BUY, 1), "d1", preview)
    with pytest.raises(BrokerError) as refused:
        broker.get_order(second, placement.order_id)
    assert refused.value.code == BrokerErrorCode.ORDER_NOT_FOUND
    assert broker.get_positions(second) == []
    assert broker.find_order_by_client_order_id(second, "d1") is None
