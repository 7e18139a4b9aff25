"""E*TRADE's JSON to the normalized types and back.

Readers are lenient where the sources disagree or are silent (each such place says
UNCONFIRMED): a single item may come as an object instead of a list, numbers may come as
strings, and a field may be missing. Money is Decimal throughout; the JSON was parsed with
`parse_float=Decimal`, and anything else is converted from its text, never through float.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from brokers.base import (
    Account,
    Balance,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Preview,
    Quote,
    Side,
    TimeInForce,
    Transaction,
    TransactionType,
)

Json = Mapping[str, Any]
ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.0001")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PRICE_TYPES = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP: "STOP",
    OrderType.STOP_LIMIT: "STOP_LIMIT",
}
ORDER_TERMS = {
    TimeInForce.DAY: "GOOD_FOR_DAY",
    TimeInForce.GTC: "GOOD_UNTIL_CANCEL",
    TimeInForce.IOC: "IMMEDIATE_OR_CANCEL",
    TimeInForce.FOK: "FILL_OR_KILL",
}
# List Orders' `status` filter for each normalized status. E*TRADE has no filter for
# partial fills (whether OPEN includes them is UNCONFIRMED), so those are filtered here.
STATUS_FILTERS = {
    OrderStatus.OPEN: "OPEN",
    OrderStatus.PARTIALLY_FILLED: "OPEN",
    OrderStatus.FILLED: "EXECUTED",
    OrderStatus.CANCELLED: "CANCELLED",
    OrderStatus.REJECTED: "REJECTED",
    OrderStatus.EXPIRED: "EXPIRED",
}

_STATUSES = {
    "OPEN": OrderStatus.OPEN,
    # Still working until E*TRADE confirms the cancel.
    "CANCEL_REQUESTED": OrderStatus.OPEN,
    "PARTIAL": OrderStatus.PARTIALLY_FILLED,
    "INDIVIDUAL_FILLS": OrderStatus.PARTIALLY_FILLED,
    "EXECUTED": OrderStatus.FILLED,
    "DONE_TRADE_EXECUTED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.EXPIRED,
    "REJECTED": OrderStatus.REJECTED,
}
# Trailing and hidden stops (and anything else) read as STOP: they trigger on a price.
_PRICE_TYPES = {
    "MARKET": OrderType.MARKET,
    "MARKET_ON_OPEN": OrderType.MARKET,
    "MARKET_ON_CLOSE": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "LIMIT_ON_OPEN": OrderType.LIMIT,
    "LIMIT_ON_CLOSE": OrderType.LIMIT,
    "STOP_LIMIT": OrderType.STOP_LIMIT,
}
_TERMS = {
    "GOOD_FOR_DAY": TimeInForce.DAY,
    "GOOD_UNTIL_CANCEL": TimeInForce.GTC,
    # The nearest normalized term; the date itself is not kept.
    "GOOD_TILL_DATE": TimeInForce.GTC,
    "IMMEDIATE_OR_CANCEL": TimeInForce.IOC,
    "FILL_OR_KILL": TimeInForce.FOK,
}
_SIDES = {
    "BUY": Side.BUY,
    "SELL": Side.SELL,
    "SELL_SHORT": Side.SELL_SHORT,
    "BUY_TO_COVER": Side.BUY_TO_COVER,
    "BUY_OPEN": Side.BUY,
    "BUY_CLOSE": Side.BUY_TO_COVER,
    "SELL_OPEN": Side.SELL_SHORT,
    "SELL_CLOSE": Side.SELL,
}
# Only "Bought" and "Sold" are seen in a real capture; the rest are UNCONFIRMED spellings,
# matched as lower-case prefixes in this order (longer prefixes first).
_TRANSACTION_TYPES = (
    ("bought to cover", TransactionType.BUY_TO_COVER),
    ("sold short", TransactionType.SELL_SHORT),
    ("bought", TransactionType.BUY),
    ("sold", TransactionType.SELL),
    ("qualified dividend", TransactionType.DIVIDEND),
    ("dividend", TransactionType.DIVIDEND),
    ("deposit", TransactionType.DEPOSIT),
    ("withdrawal", TransactionType.WITHDRAWAL),
    ("service fee", TransactionType.FEE),
    ("fee", TransactionType.FEE),
)


# ---- Primitives --------------------------------------------------------------------------


def items(value: Any) -> list[Json]:
    """A list of objects from an array, a single object (an XML-to-JSON habit) or nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, Mapping):
        return [value]
    return [each for each in value if isinstance(each, Mapping)]


def decimal(value: Any, default: Decimal | None = None) -> Decimal:
    """A Decimal from a JSON number or its text; `default` (if given) for empty values."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, int):
        return Decimal(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is None:
            raise ValueError("a required number is missing")
        return default
    try:
        # str() keeps a stray float's shortest text rather than its binary expansion.
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def optional_decimal(value: Any) -> Decimal | None:
    return None if value is None or value == "" else decimal(value)


def moment(value: Any) -> datetime | None:
    """E*TRADE's epoch times: milliseconds for order and account fields, seconds for quote
    fields. Told apart by size, so a field in the other unit still reads right."""
    if value is None or value == "":
        return None
    number = int(decimal(value))
    if number <= 0:
        return None
    if number > 100_000_000_000:
        return EPOCH + timedelta(milliseconds=number)
    return EPOCH + timedelta(seconds=number)


def text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def message_texts(*containers: Json) -> tuple[str, ...]:
    """The descriptions of `Messages.Message[]`, spelled `Messages` or `messages` (sources
    differ, UNCONFIRMED), from each container."""
    found: list[str] = []
    for container in containers:
        for key in ("Messages", "messages", "messageList", "MessageList"):
            holder = container.get(key)
            if isinstance(holder, Mapping):
                found += [text(m.get("description")) for m in items(holder.get("Message"))]
    return tuple(each for each in found if each)


def digits(value: Any) -> str:
    """An integer id as text (E*TRADE's ids are JSON integers)."""
    number = decimal(value)
    if number != number.to_integral_value() or number < 0:
        raise ValueError(f"expected a whole id, got {value!r}")
    return str(int(number))


# ---- Accounts ----------------------------------------------------------------------------


def account(raw: Json) -> Account:
    number = text(raw.get("accountId"))
    mode = text(raw.get("accountMode")).upper()
    return Account(
        account_id=text(raw["accountIdKey"]),
        name=text(raw.get("accountName")) or text(raw.get("accountDesc")) or number,
        # CASH or MARGIN, as the paper broker reports; else E*TRADE's own account type.
        account_type=mode if mode in ("CASH", "MARGIN") else text(raw.get("accountType")),
        number_masked=f"****{number[-4:]}" if number else "",
    )


def is_open_account(raw: Json) -> bool:
    return text(raw.get("accountStatus")).upper() != "CLOSED"


def balance(account_id: str, raw: Json, now: datetime) -> Balance:
    computed = raw.get("Computed") or {}
    real_time = computed.get("RealTimeValues") or {}
    cash = _first(computed, "cashBalance", "netCash", "accountBalance")
    if cash is None:
        raise ValueError("the balance has no cash figure")
    # Which buying power applies depends on the account mode; fields vary by account type
    # and environment (margin fields appear only in production), so fall back in order.
    if text(raw.get("accountMode")).upper() == "MARGIN":
        power_fields = ("marginBuyingPower", "cashBuyingPower", "cashAvailableForInvestment")
    else:
        power_fields = ("cashBuyingPower", "cashAvailableForInvestment", "marginBuyingPower")
    buying_power = _first(computed, *power_fields)
    value = _first(real_time, "totalAccountValue")
    return Balance(
        account_id=account_id,
        cash=cash,
        buying_power=cash if buying_power is None else buying_power,
        account_value=cash if value is None else value,
        as_of=moment(raw.get("asOfDate")) or now,
    )


def _first(container: Json, *names: str) -> Decimal | None:
    for name in names:
        if container.get(name) not in (None, ""):
            return decimal(container[name])
    return None


def position(raw: Json) -> Position:
    product = raw.get("Product") or {}
    quantity = decimal(raw["quantity"])
    if text(raw.get("positionType")).upper() == "SHORT":
        quantity = -abs(quantity)
    market_value = decimal(raw.get("marketValue"), ZERO)
    last = optional_decimal((raw.get("Quick") or {}).get("lastTrade"))
    if last is None:
        last = abs(market_value / quantity).quantize(PRICE_PLACES) if quantity else ZERO
    average_cost = optional_decimal(raw.get("costPerShare")) or decimal(raw.get("pricePaid"), ZERO)
    cost_basis = optional_decimal(raw.get("totalCost"))
    if cost_basis is None:
        cost_basis = average_cost * abs(quantity)
    gain = optional_decimal(raw.get("totalGain"))
    return Position(
        symbol=text(product.get("symbol")) or text(raw.get("symbolDescription")),
        quantity=quantity,
        average_cost=average_cost,
        cost_basis=cost_basis,
        market_price=last,
        market_value=market_value,
        unrealized_pnl=market_value - cost_basis if gain is None else gain,
    )


# ---- Quotes ------------------------------------------------------------------------------


def quote(raw: Json, now: datetime) -> Quote:
    detail = raw.get("All") or raw.get("Intraday") or {}
    return Quote(
        symbol=text((raw.get("Product") or {}).get("symbol")),
        last=decimal(detail["lastTrade"]),
        bid=decimal(detail.get("bid"), ZERO),
        ask=decimal(detail.get("ask"), ZERO),
        change=decimal(detail.get("changeClose"), ZERO),
        change_pct=decimal(detail.get("changeClosePercentage"), ZERO),
        volume=int(decimal(detail.get("totalVolume"), ZERO)),
        time=moment(raw.get("dateTimeUTC")) or moment(detail.get("timeOfLastTrade")) or now,
        name=text(detail.get("companyName")) or text(detail.get("symbolDescription")),
    )


# ---- Orders ------------------------------------------------------------------------------


def order_request_body(
    wrapper: str, request: OrderRequest, client_order_id: str, preview_id: str = ""
) -> dict[str, Any]:
    """A PreviewOrderRequest or PlaceOrderRequest for one equity order.

    Prices go as text, as a production client sends them ("" when unused), so no float
    is ever involved."""
    body: dict[str, Any] = {
        "orderType": "EQ",
        "clientOrderId": client_order_id,
        "Order": [
            {
                "allOrNone": False,
                "priceType": PRICE_TYPES[request.order_type],
                "orderTerm": ORDER_TERMS[request.time_in_force],
                "marketSession": "EXTENDED" if request.extended_hours else "REGULAR",
                "limitPrice": _price_text(request.limit_price),
                "stopPrice": _price_text(request.stop_price),
                "Instrument": [
                    {
                        "Product": {"securityType": "EQ", "symbol": request.symbol},
                        "orderAction": request.side.value,
                        "quantityType": "QUANTITY",
                        "quantity": int(request.quantity),
                    }
                ],
            }
        ],
    }
    if preview_id:
        body["PreviewIds"] = [
            {"previewId": int(preview_id) if preview_id.isdigit() else preview_id}
        ]
    return {wrapper: body}


def _price_text(price: Decimal | None) -> str:
    return "" if price is None else format(price, "f")


def preview(raw: Json, request: OrderRequest) -> Preview:
    body = raw["PreviewOrderResponse"]
    [first_id, *_] = items(body.get("PreviewIds"))
    orders = items(body.get("Order"))
    # totalOrderValue is negative for a sell in a real capture; the sign for a buy is
    # UNCONFIRMED, so magnitudes are used and the direction comes from the side.
    value = abs(decimal(body.get("totalOrderValue"), ZERO))
    commission = optional_decimal(body.get("totalCommission"))
    if commission is None:
        commission = sum(
            (
                decimal(each.get("estimatedCommission"), ZERO)
                + decimal(each.get("estimatedFees"), ZERO)
                for each in orders
            ),
            start=ZERO,
        )
    stated_total = optional_decimal(orders[0].get("estimatedTotalAmount")) if orders else None
    if stated_total is not None:
        total = abs(stated_total)
    else:
        total = value + commission if request.side.is_buy else value - commission
    if value:
        price = (value / request.quantity).quantize(PRICE_PLACES)
    else:
        price = request.limit_price or request.stop_price or ZERO
    return Preview(
        estimated_total=total,
        commission=commission,
        estimated_price=price,
        preview_id=digits(first_id["previewId"]),
        warnings=message_texts(body, *orders),
    )


def placed_order_id(raw: Json) -> str:
    body = raw["PlaceOrderResponse"]
    # The sandbox puts the id only in OrderIds[0]; some production answers also carry a
    # top-level orderId.
    ids = items(body.get("OrderIds"))
    return digits(ids[0]["orderId"] if ids else body["orderId"])


def client_order_id_of(raw: Json) -> str | None:
    """The clientOrderId an order carries, or None when E*TRADE did not say.

    UNCONFIRMED: a real List Orders capture carries no clientOrderId; the v1 data model
    has it on preview and place answers only. It is read from the order or its detail."""
    for container in (raw, *items(raw.get("OrderDetail"))):
        value = container.get("clientOrderId")
        if value not in (None, ""):
            return text(value)
    return None


def order(raw: Json) -> Order:
    order_id = digits(raw["orderId"])
    [detail, *_] = items(raw.get("OrderDetail"))
    # Multi-leg orders are not placed through this interface; the first leg describes it.
    [instrument, *_] = items(detail.get("Instrument"))
    quantity = decimal(instrument.get("orderedQuantity", instrument.get("quantity")))
    filled = decimal(instrument.get("filledQuantity"), ZERO)
    average = optional_decimal(instrument.get("averageExecutionPrice"))
    placed = moment(detail.get("placedTime")) or moment(detail.get("previewTime"))
    if placed is None:
        raise ValueError(f"order {order_id} has no placed time")
    executed = moment(detail.get("executedTime"))
    raw_status = text(detail.get("status")).upper()
    status = _STATUSES.get(raw_status)
    reason = ""
    if status is None:
        # An unknown status is treated as still working, so reconciliation keeps watching.
        status, reason = OrderStatus.OPEN, f"E*TRADE status {raw_status or 'missing'}"
    if status == OrderStatus.OPEN and filled > 0:
        status = OrderStatus.PARTIALLY_FILLED
    price_type = text(detail.get("priceType")).upper()
    order_type = _PRICE_TYPES.get(price_type, OrderType.STOP)
    fills: tuple[Fill, ...] = ()
    if filled > 0 and average is not None:
        # E*TRADE reports executions per order, not per fill: one aggregate fill.
        fills = (
            Fill(fill_id=f"{order_id}-1", quantity=filled, price=average, time=executed or placed),
        )
    return Order(
        order_id=order_id,
        client_order_id=client_order_id_of(raw) or "",
        symbol=text((instrument.get("Product") or {}).get("symbol")),
        side=_SIDES[text(instrument.get("orderAction")).upper()],
        quantity=quantity,
        order_type=order_type,
        status=status,
        time_in_force=_TERMS.get(text(detail.get("orderTerm")).upper(), TimeInForce.DAY),
        created_at=placed,
        updated_at=executed or placed,
        limit_price=_used_price(detail.get("limitPrice"))
        if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        else None,
        stop_price=_used_price(detail.get("stopPrice"))
        if order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        else None,
        extended_hours=text(detail.get("marketSession")).upper() == "EXTENDED",
        filled_quantity=filled,
        average_fill_price=average if filled > 0 else None,
        fills=fills,
        reason=reason,
    )


def _used_price(value: Any) -> Decimal | None:
    # E*TRADE writes 0 for a price the order does not use.
    price = optional_decimal(value)
    return price if price else None


# ---- Transactions ------------------------------------------------------------------------


def transaction(raw: Json) -> Transaction:
    # The real capture spells these `brokerage`/`product`; the v1 model capitalises them
    # and makes Product a list.
    brokerage = raw.get("brokerage") or raw.get("Brokerage") or {}
    products = items(brokerage.get("product") or brokerage.get("Product"))
    quantity = optional_decimal(brokerage.get("quantity"))
    price = optional_decimal(brokerage.get("price"))
    amount = decimal(raw.get("amount"), ZERO)
    order_number = brokerage.get("orderNo")  # UNCONFIRMED in list answers
    time = moment(raw.get("transactionDate"))
    if time is None:
        raise ValueError(f"transaction {raw.get('transactionId')} has no date")
    return Transaction(
        transaction_id=text(raw["transactionId"]),
        transaction_type=_transaction_type(text(raw.get("transactionType")), amount),
        time=time,
        amount=amount,
        description=text(raw.get("description")) or text(raw.get("transactionType")),
        symbol=text(products[0].get("symbol")) if products else "",
        # Sells carry a negative quantity at E*TRADE; the sign is in the type here.
        quantity=None if not quantity else abs(quantity),
        price=price or None,
        order_id=digits(order_number) if order_number not in (None, "", 0) else "",
    )


def _transaction_type(name: str, amount: Decimal) -> TransactionType:
    lowered = name.lower()
    for prefix, mapped in _TRANSACTION_TYPES:
        if lowered.startswith(prefix):
            return mapped
    if "transfer" in lowered:
        return TransactionType.DEPOSIT if amount > 0 else TransactionType.WITHDRAWAL
    return TransactionType.OTHER


def newest_first(entries: Iterable[Transaction]) -> list[Transaction]:
    return sorted(entries, key=lambda entry: entry.time, reverse=True)
