"""The contract every broker adapter keeps, written once and run unchanged against each.

The suite speaks only through the public interface of brokers.base. A broker joins by
adding a case factory to CASES: it yields a BrokerCase with an adapter, a funded account,
symbols its market knows, another connection's account, and a way to make its market
closed (the paper broker switches to regular hours and goes to a Sunday; a fake E*TRADE
can answer as its closed market does).
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from types import UnionType
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.test import override_settings

from brokers.base import (
    Account,
    Balance,
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Placement,
    Position,
    Preview,
    Quote,
    Side,
    TimeInForce,
    Transaction,
    TransactionType,
)
from brokers.registry import get_adapter
from controlplane.models import BrokerConnection
from controlplane.services.connections import create_connection
from tests.conftest import OPERATOR, UserCreds
from tests.fake_etrade import FakeETrade
from tests.fake_etrade.brokerage import SECURITIES


@dataclass
class BrokerCase:
    broker: BrokerAdapter
    account_id: str  # funded, with no positions or orders yet
    foreign_account_id: str  # an account of another connection
    symbol: str  # liquid and cheap enough to buy a few shares
    symbols: list[str]  # at least 26 distinct symbols the market knows
    unknown_symbol: str
    market_closed: Callable[[], AbstractContextManager[None]]

    def request(
        self,
        side: Side = Side.BUY,
        quantity: int = 1,
        *,
        order_type: OrderType = OrderType.MARKET,
        limit_price: Decimal | None = None,
        time_in_force: TimeInForce = TimeInForce.DAY,
    ) -> OrderRequest:
        return OrderRequest(
            symbol=self.symbol,
            side=side,
            quantity=Decimal(quantity),
            order_type=order_type,
            limit_price=limit_price,
            time_in_force=time_in_force,
        )

    def place(self, request: OrderRequest, client_order_id: str | None = None) -> Placement:
        preview = self.broker.preview_order(self.account_id, request)
        return self.broker.place_order(
            self.account_id, request, client_order_id or new_client_order_id(), preview
        )

    def position(self) -> Position | None:
        held = [p for p in self.broker.get_positions(self.account_id) if p.symbol == self.symbol]
        return held[0] if held else None


def new_client_order_id() -> str:
    return uuid.uuid4().hex[:20]


# ---- Cases -------------------------------------------------------------------------------

# A Wednesday, 10:00 in New York: the market is open under either paper hours setting.
PAPER_MOMENT = datetime(2025, 11, 19, 15, 0, tzinfo=UTC)
PAPER_SUNDAY = datetime(2025, 11, 23, 17, 0, tzinfo=UTC)


def connect(user: UserCreds, broker: str) -> BrokerAdapter:
    connection = create_connection(
        user.user, broker=broker, environment="paper", trading_requested=True, actor=OPERATOR
    )
    adapter = get_adapter(connection)
    adapter.start_authorization()
    return adapter


@contextmanager
def paper_market_closed() -> Iterator[None]:
    with (
        override_settings(PAPER_MARKET_HOURS="regular"),
        time_machine.travel(PAPER_SUNDAY, tick=False),
    ):
        yield


@contextmanager
def paper_case(request: pytest.FixtureRequest) -> Iterator[BrokerCase]:
    from brokers.paper.universe import UNIVERSE

    # Pinned time: the paper market's prices are then fixed for the whole test.
    with time_machine.travel(PAPER_MOMENT, tick=False):
        broker = connect(request.getfixturevalue("alice"), "paper")
        other = connect(request.getfixturevalue("bob"), "paper")
        yield BrokerCase(
            broker=broker,
            account_id=broker.list_accounts()[0].account_id,
            foreign_account_id=other.list_accounts()[0].account_id,
            symbol="AAPL",
            symbols=sorted(UNIVERSE)[:30],
            unknown_symbol="ZZZZQ",
            market_closed=paper_market_closed,
        )


def connect_etrade(user: UserCreds, fake: FakeETrade) -> BrokerAdapter:
    """Connect as the control plane does, do the person's part on the fake's authorize
    page, finish the OAuth exchange and keep the credentials."""
    connection = create_connection(
        user.user, broker="etrade", environment="sandbox", trading_requested=True, actor=OPERATOR
    )
    adapter = get_adapter(connection)
    authorization = adapter.start_authorization()
    assert authorization is not None
    [request_token] = parse_qs(urlsplit(authorization.authorize_url).query)["token"]
    adapter.complete_authorization(fake.approve(request_token, user=user.user_id))
    connection.status = BrokerConnection.Status.ACTIVE
    connection.save()
    return adapter


@contextmanager
def etrade_case(request: pytest.FixtureRequest) -> Iterator[BrokerCase]:
    fake: FakeETrade = request.getfixturevalue("fake_etrade")
    broker = connect_etrade(request.getfixturevalue("alice"), fake)
    other = connect_etrade(request.getfixturevalue("bob"), fake)
    yield BrokerCase(
        broker=broker,
        account_id=broker.list_accounts()[0].account_id,
        foreign_account_id=other.list_accounts()[0].account_id,
        symbol="AAPL",
        symbols=sorted(SECURITIES)[:30],
        unknown_symbol="ZZZZQ",
        market_closed=fake.closed_market,
    )


CASES: dict[str, Callable[[pytest.FixtureRequest], AbstractContextManager[BrokerCase]]] = {
    "paper": paper_case,
    "etrade": etrade_case,
}


# `db` is asked for here, not only through the factories' getfixturevalue calls: reached
# that way alone, pytest-django opens the database before creating the test database.
@pytest.fixture(params=sorted(CASES))
def broker_case(request: pytest.FixtureRequest, db: None) -> Iterator[BrokerCase]:
    with CASES[request.param](request) as case:
        yield case


# ---- Normalized values -------------------------------------------------------------------


def assert_normalized(value: object, where: str = "result") -> None:
    """No floats anywhere; every dataclass field of the declared type; datetimes aware."""
    assert not isinstance(value, float), f"{where} is a float"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            assert_normalized(item, f"{where}[{index}]")
    elif is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(type(value))
        for item in fields(value):
            field_value = getattr(value, item.name)
            path = f"{where}.{item.name}"
            assert _conforms(field_value, hints[item.name]), f"{path} = {field_value!r}"
            assert_normalized(field_value, path)
    elif isinstance(value, Decimal):
        assert value.is_finite(), f"{where} is {value}"
    elif isinstance(value, datetime):
        assert value.tzinfo is not None, f"{where} is a naive datetime"


def _conforms(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, UnionType):
        return any(_conforms(value, option) for option in typing.get_args(hint))
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(item, item_hint) for item in value)
    if hint is type(None):
        return value is None
    assert isinstance(hint, type)
    return isinstance(value, hint)


# ---- Accounts and quotes -----------------------------------------------------------------


def test_it_lists_the_connections_accounts(broker_case: BrokerCase) -> None:
    accounts = broker_case.broker.list_accounts()
    assert accounts
    assert all(isinstance(account, Account) for account in accounts)
    assert broker_case.account_id in {account.account_id for account in accounts}
    assert broker_case.foreign_account_id not in {account.account_id for account in accounts}
    assert_normalized(accounts)


def test_it_reports_the_balance_in_decimals(broker_case: BrokerCase) -> None:
    balance = broker_case.broker.get_balance(broker_case.account_id)
    assert isinstance(balance, Balance)
    assert balance.account_id == broker_case.account_id
    assert balance.cash > 0
    assert balance.buying_power > 0
    assert balance.account_value > 0
    assert balance.currency == "USD"
    assert_normalized(balance)


def test_it_quotes_one_symbol(broker_case: BrokerCase) -> None:
    [quote] = broker_case.broker.get_quotes([broker_case.symbol])
    assert isinstance(quote, Quote)
    assert quote.symbol == broker_case.symbol
    assert 0 < quote.bid < quote.ask
    assert quote.last > 0
    assert quote.volume >= 0
    assert_normalized(quote)


def test_it_quotes_25_symbols_in_the_order_asked(broker_case: BrokerCase) -> None:
    asked = list(reversed(broker_case.symbols[:25]))
    quotes = broker_case.broker.get_quotes(asked)
    assert [quote.symbol for quote in quotes] == asked
    assert_normalized(quotes)


def test_it_refuses_more_than_25_symbols(broker_case: BrokerCase) -> None:
    with pytest.raises(BrokerError) as refused:
        broker_case.broker.get_quotes(broker_case.symbols[:26])
    assert refused.value.code == BrokerErrorCode.INVALID_ORDER


def test_it_names_an_unknown_symbol(broker_case: BrokerCase) -> None:
    with pytest.raises(BrokerError) as refused:
        broker_case.broker.get_quotes([broker_case.symbol, broker_case.unknown_symbol])
    assert refused.value.code == BrokerErrorCode.INVALID_SYMBOL
    assert broker_case.unknown_symbol in refused.value.broker_message


def test_it_raises_typed_errors(broker_case: BrokerCase) -> None:
    with pytest.raises(BrokerError) as refused:
        broker_case.broker.get_quotes([broker_case.unknown_symbol])
    error = refused.value
    assert isinstance(error.code, BrokerErrorCode)
    assert error.transient is False
    assert isinstance(error.broker_message, str)
    assert error.broker_message


# ---- Orders ------------------------------------------------------------------------------


def test_it_previews_without_placing(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    orders_before = broker.list_orders(account_id)
    preview = broker.preview_order(account_id, broker_case.request(quantity=2))
    assert isinstance(preview, Preview)
    assert preview.preview_id
    assert preview.estimated_total > 0
    assert preview.estimated_price > 0
    assert preview.commission >= 0
    assert_normalized(preview)
    assert broker.list_orders(account_id) == orders_before
    assert broker_case.position() is None


def test_it_refuses_a_malformed_order(broker_case: BrokerCase) -> None:
    with pytest.raises(BrokerError) as refused:
        broker_case.broker.preview_order(broker_case.account_id, broker_case.request(quantity=0))
    assert refused.value.code == BrokerErrorCode.INVALID_ORDER


def test_it_fills_a_market_buy_and_opens_a_position(broker_case: BrokerCase) -> None:
    placement = broker_case.place(broker_case.request(quantity=2))
    assert placement.status == OrderStatus.FILLED
    order = broker_case.broker.get_order(broker_case.account_id, placement.order_id)
    assert order.status == OrderStatus.FILLED
    assert order.filled_quantity == 2
    assert order.fills
    assert sum(fill.quantity for fill in order.fills) == 2
    assert order.average_fill_price is not None
    assert_normalized(order)
    position = broker_case.position()
    assert position is not None
    assert position.quantity == 2
    assert_normalized(position)


def test_it_places_once_per_client_order_id(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    request = broker_case.request(quantity=3)
    preview = broker.preview_order(account_id, request)
    client_order_id = new_client_order_id()
    first = broker.place_order(account_id, request, client_order_id, preview)
    again = broker.place_order(account_id, request, client_order_id, preview)
    assert again.order_id == first.order_id
    placed = [o for o in broker.list_orders(account_id) if o.client_order_id == client_order_id]
    assert len(placed) == 1
    position = broker_case.position()
    assert position is not None
    assert position.quantity == 3


def test_it_reduces_the_position_on_a_sell(broker_case: BrokerCase) -> None:
    broker_case.place(broker_case.request(quantity=5))
    sold = broker_case.place(broker_case.request(Side.SELL, quantity=2))
    assert sold.status == OrderStatus.FILLED
    position = broker_case.position()
    assert position is not None
    assert position.quantity == 3


def test_it_refuses_to_cancel_a_filled_order(broker_case: BrokerCase) -> None:
    placement = broker_case.place(broker_case.request())
    with pytest.raises(BrokerError) as refused:
        broker_case.broker.cancel_order(broker_case.account_id, placement.order_id)
    assert refused.value.code == BrokerErrorCode.ORDER_NOT_CANCELLABLE


def test_it_cancels_a_resting_limit_order(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    [quote] = broker.get_quotes([broker_case.symbol])
    far_below = (quote.bid / 2).quantize(Decimal("0.01"))
    request = broker_case.request(
        order_type=OrderType.LIMIT, limit_price=far_below, time_in_force=TimeInForce.GTC
    )
    placement = broker_case.place(request)
    assert placement.status == OrderStatus.OPEN
    assert broker.get_order(account_id, placement.order_id).status == OrderStatus.OPEN
    cancelled = broker.cancel_order(account_id, placement.order_id)
    assert cancelled.status == OrderStatus.CANCELLED
    assert broker.get_order(account_id, placement.order_id).status == OrderStatus.CANCELLED
    assert [o.order_id for o in broker.list_orders(account_id, status=OrderStatus.CANCELLED)] == [
        placement.order_id
    ]
    assert broker.list_orders(account_id, status=OrderStatus.OPEN) == []
    assert_normalized(cancelled)


def test_it_refuses_an_order_beyond_buying_power(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    buying_power = broker.get_balance(account_id).buying_power
    [quote] = broker.get_quotes([broker_case.symbol])
    too_many = int((buying_power / quote.ask).to_integral_value(ROUND_CEILING)) + 10
    with pytest.raises(BrokerError) as refused:
        broker_case.place(broker_case.request(quantity=too_many))
    assert refused.value.code == BrokerErrorCode.INSUFFICIENT_FUNDS
    assert broker.list_orders(account_id) == []


def test_it_refuses_orders_while_the_market_is_closed(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    request = broker_case.request()
    preview = broker.preview_order(account_id, request)
    with broker_case.market_closed(), pytest.raises(BrokerError) as refused:
        broker.place_order(account_id, request, new_client_order_id(), preview)
    assert refused.value.code == BrokerErrorCode.MARKET_CLOSED
    assert broker.list_orders(account_id) == []


def test_it_hides_accounts_of_other_connections(broker_case: BrokerCase) -> None:
    broker, request = broker_case.broker, broker_case.request()
    calls: list[Callable[[str], object]] = [
        broker.get_balance,
        broker.get_positions,
        broker.list_orders,
        broker.list_transactions,
        lambda account_id: broker.get_order(account_id, "1001"),
        lambda account_id: broker.cancel_order(account_id, "1001"),
        lambda account_id: broker.preview_order(account_id, request),
    ]
    for account_id in (broker_case.foreign_account_id, "NO-SUCH-ACCOUNT"):
        for call in calls:
            with pytest.raises(BrokerError) as refused:
                call(account_id)
            assert refused.value.code == BrokerErrorCode.ACCOUNT_NOT_FOUND


def test_it_reports_an_unknown_order(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    for call in (broker.get_order, broker.cancel_order):
        with pytest.raises(BrokerError) as refused:
            call(account_id, "987654321")
        assert refused.value.code == BrokerErrorCode.ORDER_NOT_FOUND


def test_it_finds_an_order_by_client_order_id(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    client_order_id = new_client_order_id()
    placement = broker_case.place(broker_case.request(), client_order_id)
    try:
        found = broker.find_order_by_client_order_id(account_id, client_order_id)
    except BrokerError as refused:
        # Allowed: a broker that cannot look orders up this way says so, and only so.
        if refused.code != BrokerErrorCode.UNSUPPORTED:
            raise
        return
    assert isinstance(found, Order)
    assert found.order_id == placement.order_id
    assert found.client_order_id == client_order_id
    assert broker.find_order_by_client_order_id(account_id, new_client_order_id()) is None


def test_it_lists_fills_as_transactions(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    placement = broker_case.place(broker_case.request(quantity=3))
    order = broker.get_order(account_id, placement.order_id)
    transactions = broker.list_transactions(account_id)
    assert all(isinstance(entry, Transaction) for entry in transactions)
    assert [entry.time for entry in transactions] == sorted(
        (entry.time for entry in transactions), reverse=True
    )
    bought = [entry for entry in transactions if entry.order_id == placement.order_id]
    assert bought
    assert all(entry.transaction_type == TransactionType.BUY for entry in bought)
    assert all(entry.symbol == broker_case.symbol for entry in bought)
    assert all(entry.amount < 0 for entry in bought)
    assert sum(entry.quantity or 0 for entry in bought) == 3
    assert_normalized(transactions)

    day = timedelta(days=1)
    around = broker.list_transactions(
        account_id, start=order.created_at - day, end=order.created_at + day
    )
    assert placement.order_id in {entry.order_id for entry in around}
    before = broker.list_transactions(account_id, end=order.created_at - day)
    assert placement.order_id not in {entry.order_id for entry in before}
    assert len(broker.list_transactions(account_id, limit=1)) == 1


def test_it_returns_no_floats_anywhere(broker_case: BrokerCase) -> None:
    broker, account_id = broker_case.broker, broker_case.account_id
    placement = broker_case.place(broker_case.request(quantity=2))
    assert_normalized(
        [
            broker.list_accounts(),
            broker.get_balance(account_id),
            broker.get_positions(account_id),
            broker.get_quotes(broker_case.symbols[:5]),
            broker.list_orders(account_id),
            broker.get_order(account_id, placement.order_id),
            broker.list_transactions(account_id),
            broker.preview_order(account_id, broker_case.request()),
            placement,
        ]
    )
