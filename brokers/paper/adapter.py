"""The paper broker behind the common adapter interface: it looks up the connection's own
accounts, settles their resting orders before every read, calls the paper services, and
turns rows into the normalized types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from brokers.base import (
    MAX_QUOTE_SYMBOLS,
    Account,
    Balance,
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Fill,
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
from brokers.paper import prices, services
from brokers.paper.capacity import buying_power
from brokers.paper.models import (
    PaperAccount,
    PaperFill,
    PaperOrder,
    PaperPosition,
    PaperTransaction,
)
from brokers.paper.money import cents, four_places, whole
from brokers.paper.prices import PriceBook
from brokers.paper.universe import UNIVERSE, instrument

MAX_LIST_LIMIT = 500


class PaperBroker(BrokerAdapter):
    key = "paper"
    label = "Paper trading"

    # ---- Connection lifecycle ------------------------------------------------------------
    # Nothing to authorize: the accounts open at once. There are no credentials either, so
    # complete_authorization, renew and revoke keep the base class's no-ops.

    def start_authorization(self) -> None:
        services.open_paper_accounts(self.connection)
        return None

    # ---- Accounts ----------------------------------------------------------------------

    def list_accounts(self) -> list[Account]:
        return [
            _account(each)
            for each in PaperAccount.objects.filter(connection=self.connection).order_by("slot")
        ]

    def get_balance(self, account_id: str) -> Balance:
        account = self._settled_account(account_id)
        book = PriceBook(timezone.now())
        holdings = sum(
            (p.quantity * book.quote(p.symbol).last for p in _open_positions(account)),
            start=account.cash,
        )
        return Balance(
            account_id=account.account_key,
            cash=cents(account.cash),
            buying_power=cents(buying_power(account, book)),
            account_value=cents(holdings),
            as_of=book.at,
        )

    def get_positions(self, account_id: str) -> list[Position]:
        account = self._settled_account(account_id)
        book = PriceBook(timezone.now())
        return [_position(each, book.quote(each.symbol)) for each in _open_positions(account)]

    def get_quotes(self, symbols: list[str]) -> list[Quote]:
        # Asked order, duplicates (after normalizing case) collapsed.
        wanted = list(dict.fromkeys(symbol.strip().upper() for symbol in symbols))
        if not 1 <= len(wanted) <= MAX_QUOTE_SYMBOLS:
            raise BrokerError(
                BrokerErrorCode.INVALID_ORDER,
                f"ask for 1 to {MAX_QUOTE_SYMBOLS} symbols at a time, not {len(wanted)}",
            )
        unknown = [symbol for symbol in wanted if symbol not in UNIVERSE]
        if unknown:
            raise BrokerError(
                BrokerErrorCode.INVALID_SYMBOL,
                f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            )
        now = timezone.now()
        return [prices.quote(instrument(symbol), now) for symbol in wanted]

    # ---- Orders ------------------------------------------------------------------------

    def list_orders(
        self, account_id: str, *, status: OrderStatus | None = None, limit: int = 50
    ) -> list[Order]:
        account = self._settled_account(account_id)
        orders = account.orders.order_by("-created_at", "-pk").prefetch_related("fills")
        if status is not None:
            orders = orders.filter(status=status)
        return [_order(each, each.fills.all()) for each in orders[: _clamp(limit)]]

    def get_order(self, account_id: str, order_id: str) -> Order:
        account = self._settled_account(account_id)
        order = services.find_paper_order(account, order_id)
        return _order(order, order.fills.all())

    def find_order_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        account = self._settled_account(account_id)
        order = account.orders.filter(client_order_id=client_order_id).first()
        return None if order is None else _order(order, order.fills.all())

    def preview_order(self, account_id: str, request: OrderRequest) -> Preview:
        account = self._settled_account(account_id)
        return services.preview_paper_order(account, request)

    def place_order(
        self, account_id: str, request: OrderRequest, client_order_id: str, preview: Preview
    ) -> Placement:
        order = services.place_paper_order(
            self._account(account_id),
            request,
            client_order_id=client_order_id,
            preview_id=preview.preview_id,
        )
        return Placement(order_id=order.order_id, status=OrderStatus(order.status))

    def cancel_order(self, account_id: str, order_id: str) -> Order:
        order = services.cancel_paper_order(self._account(account_id), order_id)
        return _order(order, order.fills.all())

    # ---- Activity ----------------------------------------------------------------------

    def list_transactions(
        self,
        account_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 50,
    ) -> list[Transaction]:
        account = self._settled_account(account_id)
        entries = account.transactions.order_by("-time", "-pk")
        if start is not None:
            entries = entries.filter(time__gte=start)
        if end is not None:
            entries = entries.filter(time__lt=end)
        return [_transaction(each) for each in entries[: _clamp(limit)]]

    # ---- Access ------------------------------------------------------------------------

    def _account(self, account_id: str) -> PaperAccount:
        """Only this connection's accounts exist here; any other id is simply not found."""
        account = PaperAccount.objects.filter(
            connection=self.connection, account_key=account_id
        ).first()
        if account is None:
            raise BrokerError(
                BrokerErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id} on this connection"
            )
        return account

    def _settled_account(self, account_id: str) -> PaperAccount:
        """The account after its resting orders met the market of this instant."""
        account = self._account(account_id)
        if services.evaluate_open_orders(account):
            account.refresh_from_db()
        return account


def _clamp(limit: int) -> int:
    return max(1, min(limit, MAX_LIST_LIMIT))


def _open_positions(account: PaperAccount) -> list[PaperPosition]:
    return list(account.positions.exclude(quantity=0).order_by("symbol"))


def _account(account: PaperAccount) -> Account:
    return Account(
        account_id=account.account_key,
        name=account.name,
        account_type="MARGIN" if account.allow_short_selling else "CASH",
        number_masked=f"****{account.account_key[-4:]}",
    )


def _position(position: PaperPosition, quote: Quote) -> Position:
    quantity = whole(position.quantity)
    cost_basis = quantity * position.average_cost
    market_value = quantity * quote.last
    return Position(
        symbol=position.symbol,
        quantity=quantity,
        average_cost=four_places(position.average_cost),
        cost_basis=cents(cost_basis),
        market_price=quote.last,
        market_value=cents(market_value),
        unrealized_pnl=cents(market_value - cost_basis),
        realized_pnl=four_places(position.realized_pnl),
    )


def _order(order: PaperOrder, fills: Iterable[PaperFill]) -> Order:
    return Order(
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=Side(order.side),
        quantity=whole(order.quantity),
        order_type=OrderType(order.order_type),
        status=OrderStatus(order.status),
        time_in_force=TimeInForce(order.time_in_force),
        created_at=order.created_at,
        updated_at=order.updated_at,
        limit_price=_price(order.limit_price),
        stop_price=_price(order.stop_price),
        extended_hours=order.extended_hours,
        filled_quantity=whole(order.filled_quantity),
        average_fill_price=(
            None if order.average_fill_price is None else four_places(order.average_fill_price)
        ),
        fills=tuple(_fill(each) for each in fills),
        reason=order.reason,
    )


def _fill(fill: PaperFill) -> Fill:
    return Fill(
        fill_id=fill.fill_id, quantity=whole(fill.quantity), price=_tick(fill.price), time=fill.time
    )


def _transaction(entry: PaperTransaction) -> Transaction:
    return Transaction(
        transaction_id=entry.transaction_id,
        transaction_type=TransactionType(entry.type),
        time=entry.time,
        amount=cents(entry.amount),
        description=entry.description,
        symbol=entry.symbol,
        quantity=None if entry.quantity is None else whole(entry.quantity),
        price=_price(entry.price),
        order_id=entry.order_id,
    )


def _price(value: Decimal | None) -> Decimal | None:
    return None if value is None else _tick(value)


def _tick(value: Decimal) -> Decimal:
    """Order and fill prices are whole cents from $1 up, finer below (as on US exchanges)."""
    return cents(value) if value >= 1 else four_places(value)
