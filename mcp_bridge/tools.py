"""The MCP tools. Each one is thin: typed arguments in, one controlplane service call in a
database thread, a structured result (with a short text) or a coded error out.

Scopes, unknown-argument refusal, rate limits and the audit row of every call live in
mcp_bridge.policy, around all tools alike.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import Field, WithJsonSchema

from brokers.base import OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from controlplane.accesstokens import Principal
from controlplane.errors import ControlPlaneError, ElicitationRequired, InvalidArgument, NotFound
from controlplane.models import Scope
from controlplane.services import portfolio, trading
from mcp_bridge import confirmation, outputs
from mcp_bridge.auth import current_principal, run_in_db_thread
from mcp_bridge.errors import tool_error

AccountId = Annotated[
    str,
    Field(
        pattern=r"^acct_[0-9a-f]{16}$",
        description="An account_id from list_accounts",
    ),
]
Symbol = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z][A-Za-z0-9.\-]{0,9}$",
        description="Ticker symbol, e.g. AAPL or BRK.B",
    ),
]
# Validated by pydantic as exact decimals; published compactly as "a number or a string".
Quantity = Annotated[
    Decimal,
    Field(gt=0, le=10_000_000, allow_inf_nan=False),
    WithJsonSchema({"type": ["number", "string"], "description": "Whole shares, > 0"}),
]
Price = Annotated[
    Decimal,
    Field(gt=0, le=10_000_000, allow_inf_nan=False),
    WithJsonSchema({"type": ["number", "string"], "description": "USD, > 0"}),
]
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Limit = Annotated[int, Field(ge=1, le=200, description="Most recent first, at most this many")]
WatchlistName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Watchlist name, e.g. default")
]

# Hints other than readOnlyHint mean nothing on a read-only tool, and openWorldHint
# defaults to true: leaving them out keeps tools/list small.
READ_ONLY = ToolAnnotations(read_only_hint=True)
TRADES = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
)
WRITES_OWN_DATA = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Awaitable[CallToolResult]]
    scope: str
    title: str
    annotations: ToolAnnotations
    parameters: tuple[str, ...]


TOOLS: dict[str, ToolSpec] = {}


def tool(scope: str, title: str, annotations: ToolAnnotations = READ_ONLY) -> Callable[..., Any]:
    def register(fn: Callable[..., Awaitable[CallToolResult]]) -> Callable[..., Any]:
        # The SDK injects the Context; it is not an argument a client may pass.
        parameters = tuple(
            name
            for name, parameter in inspect.signature(fn).parameters.items()
            if parameter.annotation not in ("Context[Any, Any]", Context)
        )
        TOOLS[fn.__name__] = ToolSpec(fn, scope, title, annotations, parameters)
        return fn

    return register


async def respond(build: Callable[[Principal], outputs.Result]) -> CallToolResult:
    principal = current_principal()
    try:
        result = await run_in_db_thread(build, principal)
    except ControlPlaneError as exc:
        return tool_error(exc.code, exc.message)
    return call_result(result)


def call_result(result: outputs.Result) -> CallToolResult:
    text = result.describe()
    if getattr(result, "trust", None) == outputs.UNTRUSTED:
        text = f"[untrusted broker data] {text}"
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=result.model_dump(mode="json"),
    )


def _account_fields(resolved: portfolio.ResolvedAccount) -> dict[str, Any]:
    return {
        "account_id": resolved.account.id,
        "environment": resolved.connection.environment,
        "broker": resolved.connection.broker,
    }


@tool(Scope.READ, "Who am I")
async def whoami() -> Annotated[CallToolResult, outputs.WhoAmI]:
    """Who this token acts for: user, platform, scopes and the broker connections with their
    status. Call this first to see what is connected and whether trading is enabled."""

    def build(principal: Principal) -> outputs.WhoAmI:
        return outputs.WhoAmI(
            user_id=principal.user_id,
            platform=principal.client_id,
            scopes=sorted(principal.scopes),
            token_expires_at=principal.expires_at,
            connections=[
                outputs.ConnectionInfo(
                    connection_id=str(c.pk),
                    broker=c.broker,
                    environment=c.environment,  # type: ignore[arg-type]
                    status=c.status,
                    trading_enabled=c.trading_enabled,
                )
                for c in portfolio.live_connections(principal)
            ],
        )

    return await respond(build)


@tool(Scope.READ, "List accounts")
async def list_accounts() -> Annotated[CallToolResult, outputs.AccountList]:
    """Every brokerage account across the user's active connections, with the account_id the
    other tools take and whether it is paper, sandbox or production (real money)."""

    def build(principal: Principal) -> outputs.AccountList:
        return outputs.AccountList(
            accounts=[
                outputs.AccountInfo(
                    account_id=account.id,
                    name=account.name,
                    account_type=account.account_type,
                    currency=account.currency,
                    broker=connection.broker,
                    environment=connection.environment,  # type: ignore[arg-type]
                )
                for account, connection in portfolio.list_accounts(principal)
            ]
        )

    return await respond(build)


@tool(Scope.READ, "Get account balance")
async def get_account_balance(
    account_id: AccountId,
) -> Annotated[CallToolResult, outputs.BalanceResult]:
    """Cash, buying power and total account value of one account."""

    def build(principal: Principal) -> outputs.BalanceResult:
        resolved, balance = portfolio.get_balance(principal, account_id)
        return outputs.BalanceResult(**_account_fields(resolved), data=outputs.plain(balance))

    return await respond(build)


@tool(Scope.READ, "Get positions")
async def get_positions(
    account_id: AccountId,
) -> Annotated[CallToolResult, outputs.PositionsResult]:
    """Open positions of one account: quantity (negative when short), average cost, cost basis,
    market value and unrealized and realized P&L."""

    def build(principal: Principal) -> outputs.PositionsResult:
        resolved, positions = portfolio.get_positions(principal, account_id)
        return outputs.PositionsResult(**_account_fields(resolved), data=outputs.plain(positions))

    return await respond(build)


@tool(Scope.READ, "Get position details")
async def get_position_details(
    account_id: AccountId, symbol: Symbol
) -> Annotated[CallToolResult, outputs.PositionDetailsResult]:
    """One position in depth: the position, a fresh quote, its weight in the account and its
    P&L in percent."""
    wanted = symbol.upper()

    def build(principal: Principal) -> outputs.PositionDetailsResult:
        resolved, positions = portfolio.get_positions(principal, account_id)
        position = next((p for p in positions if p.symbol == wanted), None)
        if position is None:
            raise NotFound(f"no {wanted} position in {account_id}; see get_positions")
        _, balance = portfolio.get_balance(principal, account_id)
        _, (quote,) = portfolio.get_quotes(principal, [wanted], account_id)
        value = balance.account_value or Decimal(1)
        basis = abs(position.cost_basis) or Decimal(1)
        return outputs.PositionDetailsResult(
            **_account_fields(resolved),
            data=outputs.PositionDetailsData(
                position=outputs.plain(position),
                quote=outputs.plain(quote),
                weight_pct=(abs(position.market_value) / value * 100).quantize(Decimal("0.01")),
                unrealized_pnl_pct=(position.unrealized_pnl / basis * 100).quantize(
                    Decimal("0.01")
                ),
            ),
        )

    return await respond(build)


@tool(Scope.READ, "Get quotes")
async def get_quotes(
    symbols: Annotated[
        list[Symbol], Field(min_length=1, max_length=25, description="1 to 25 ticker symbols")
    ],
    account_id: Annotated[
        AccountId | None, Field(description="Quote through this account's broker (optional)")
    ] = None,
) -> Annotated[CallToolResult, outputs.QuotesResult]:
    """Last, bid, ask, change, volume and time for 1 to 25 symbols."""
    wanted = list(dict.fromkeys(s.upper() for s in symbols))

    def build(principal: Principal) -> outputs.QuotesResult:
        connection, quotes = portfolio.get_quotes(principal, wanted, account_id)
        return outputs.QuotesResult(
            environment=connection.environment,  # type: ignore[arg-type]
            broker=connection.broker,
            data=outputs.plain(quotes),
        )

    return await respond(build)


@tool(Scope.READ, "List orders")
async def list_orders(
    account_id: AccountId,
    status: Annotated[
        Literal["OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "EXPIRED"] | None,
        Field(description="Only orders in this status"),
    ] = None,
    limit: Limit = 50,
) -> Annotated[CallToolResult, outputs.OrdersResult]:
    """Recent orders of one account, newest first, optionally only one status."""

    def build(principal: Principal) -> outputs.OrdersResult:
        resolved, orders = portfolio.list_orders(
            principal, account_id, OrderStatus(status) if status else None, limit
        )
        return outputs.OrdersResult(**_account_fields(resolved), data=outputs.plain(orders))

    return await respond(build)


@tool(Scope.READ, "Get order")
async def get_order(
    account_id: AccountId, order_id: OrderId
) -> Annotated[CallToolResult, outputs.OrderResult]:
    """One order with its fills."""

    def build(principal: Principal) -> outputs.OrderResult:
        resolved, order = portfolio.get_order(principal, account_id, order_id)
        return outputs.OrderResult(**_account_fields(resolved), data=outputs.plain(order))

    return await respond(build)


@tool(Scope.READ, "List transactions")
async def list_transactions(
    account_id: AccountId,
    start: Annotated[datetime | None, Field(description="From this time (ISO 8601)")] = None,
    end: Annotated[datetime | None, Field(description="Before this time (ISO 8601)")] = None,
    limit: Limit = 50,
) -> Annotated[CallToolResult, outputs.TransactionsResult]:
    """Cash and trade activity of one account (deposits, fills, fees), newest first."""
    if start and end and start >= end:
        return tool_error("invalid_argument", "start must be before end")

    def build(principal: Principal) -> outputs.TransactionsResult:
        resolved, rows = portfolio.list_transactions(principal, account_id, start, end, limit)
        return outputs.TransactionsResult(**_account_fields(resolved), data=outputs.plain(rows))

    return await respond(build)


def order_request(
    symbol: str,
    side: str,
    quantity: Decimal,
    order_type: str,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: str,
    extended_hours: bool,
) -> OrderRequest:
    request = OrderRequest(
        symbol=symbol.upper(),
        side=Side(side),
        quantity=quantity,
        order_type=OrderType(order_type),
        limit_price=limit_price,
        stop_price=stop_price,
        time_in_force=TimeInForce(time_in_force),
        extended_hours=extended_hours,
    )
    problems = request.problems()
    if problems:
        raise InvalidArgument("; ".join(problems))
    return request


SideArg = Annotated[
    Literal["BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER"],
    Field(description="SELL closes a long position; SELL_SHORT opens a short one"),
]
OrderTypeArg = Annotated[
    Literal["MARKET", "LIMIT", "STOP", "STOP_LIMIT"],
    Field(description="LIMIT needs limit_price, STOP needs stop_price, STOP_LIMIT both"),
]
TimeInForceArg = Annotated[
    Literal["DAY", "GTC", "IOC", "FOK"], Field(description="IOC and FOK for limit orders only")
]


@tool(Scope.READ, "Preview order")
async def preview_order(
    account_id: AccountId,
    symbol: Symbol,
    side: SideArg,
    quantity: Quantity,
    order_type: OrderTypeArg,
    limit_price: Price | None = None,
    stop_price: Price | None = None,
    time_in_force: TimeInForceArg = "DAY",
    extended_hours: bool = False,
) -> Annotated[CallToolResult, outputs.PreviewResult]:
    """What an order would cost (estimate and commission) and the broker's warnings.
    Creates nothing and sends nothing: to trade, use create_order."""

    def build(principal: Principal) -> outputs.PreviewResult:
        request = order_request(
            symbol,
            side,
            quantity,
            order_type,
            limit_price,
            stop_price,
            time_in_force,
            extended_hours,
        )
        resolved, preview, checks = portfolio.preview_order(principal, account_id, request)
        return outputs.PreviewResult(
            **_account_fields(resolved),
            order={k: str(v) for k, v in outputs.plain(request).items() if v is not None},
            data=outputs.plain(preview),
            risk=outputs.risk_summary(checks),
        )

    return await respond(build)


@tool(Scope.READ, "List pending trades")
async def list_pending_trades() -> Annotated[CallToolResult, outputs.PendingTradesResult]:
    """Trades proposed with create_order that still await the person's confirmation."""

    def build(principal: Principal) -> outputs.PendingTradesResult:
        return outputs.PendingTradesResult(
            pending=[
                outputs.PendingTradeInfo(
                    confirmation_id=t.confirmation_id,
                    kind=t.kind,
                    status=t.status,
                    summary=t.summary,
                    expires_at=t.expires_at,
                )
                for t in trading.open_trades(principal)
            ]
        )

    return await respond(build)


@tool(Scope.READ, "Add to watchlist", WRITES_OWN_DATA)
async def add_to_watchlist(
    symbols: Annotated[list[Symbol], Field(min_length=1, max_length=25)],
    name: WatchlistName = "default",
) -> Annotated[CallToolResult, outputs.WatchlistResult]:
    """Add symbols to one of the user's watchlists (created when missing)."""
    wanted = [s.upper() for s in symbols]

    def build(principal: Principal) -> outputs.WatchlistResult:
        portfolio.get_quotes(principal, wanted)  # refuses unknown symbols
        watchlist = portfolio.change_watchlist(principal, name, add=wanted)
        return outputs.WatchlistResult(name=watchlist.name, symbols=watchlist.symbols)

    return await respond(build)


@tool(Scope.READ, "Remove from watchlist", WRITES_OWN_DATA)
async def remove_from_watchlist(
    symbols: Annotated[list[Symbol], Field(min_length=1, max_length=25)],
    name: WatchlistName = "default",
) -> Annotated[CallToolResult, outputs.WatchlistResult]:
    """Remove symbols from one of the user's watchlists."""
    unwanted = [s.upper() for s in symbols]

    def build(principal: Principal) -> outputs.WatchlistResult:
        portfolio.get_watchlist(principal, name)
        watchlist = portfolio.change_watchlist(principal, name, remove=unwanted)
        return outputs.WatchlistResult(name=watchlist.name, symbols=watchlist.symbols)

    return await respond(build)


NEXT_STEP = {
    "pending": "Show the person this summary; call confirm_trade only after they say yes.",
    "awaiting_approval": "An operator must approve it first; confirm_trade answers "
    "awaiting_approval until then.",
    "submitted": "Sent to the broker; follow it with get_order.",
    "rejected": "Not sent. Propose it again only if the person asks for it.",
}


def trade_result(trade: Any) -> outputs.TradeResult:
    return outputs.TradeResult(
        confirmation_id=trade.confirmation_id,
        kind=trade.kind,
        status=trade.status,
        summary=trade.summary,
        account_id=trade.account_id,
        environment=trade.connection.environment,
        expires_at=trade.expires_at,
        estimate=trade.estimate,
        risk=trade.risk,
        broker_order_id=trade.broker_order_id,
        next_step=NEXT_STEP.get(trade.status, ""),
    )


def render_trade(trade: Any) -> CallToolResult:
    return call_result(trade_result(trade))


@tool(Scope.TRADE, "Create order (needs confirmation)", TRADES)
async def create_order(
    ctx: Context[Any, Any],
    account_id: AccountId,
    symbol: Symbol,
    side: SideArg,
    quantity: Quantity,
    order_type: OrderTypeArg,
    limit_price: Price | None = None,
    stop_price: Price | None = None,
    time_in_force: TimeInForceArg = "DAY",
    extended_hours: bool = False,
) -> Annotated[CallToolResult, outputs.TradeResult] | InputRequiredResult:
    """Propose an order: risk checks and a broker preview, then a confirmation_id valid for
    2 minutes. Nothing is sent. Show the person the summary; only confirm_trade sends it.
    Clients with elicitation show the person a confirm dialog instead."""

    def request() -> OrderRequest:
        return order_request(
            symbol,
            side,
            quantity,
            order_type,
            limit_price,
            stop_price,
            time_in_force,
            extended_hours,
        )

    def propose(principal: Principal, can_elicit: bool) -> Any:
        return trading.create_order(principal, account_id, request(), can_elicit=can_elicit)

    def is_same_call(trade: Any) -> bool:
        return trading.matches_order(trade, account_id, request())

    return await confirmation.propose_and_ask(ctx, propose, is_same_call, render_trade)


@tool(Scope.TRADE, "Cancel order (needs confirmation)", TRADES)
async def cancel_order(
    account_id: AccountId, order_id: OrderId
) -> Annotated[CallToolResult, outputs.TradeResult]:
    """Propose cancelling an open order; returns a confirmation_id that confirm_trade sends."""

    def build(principal: Principal) -> outputs.TradeResult:
        return trade_result(trading.create_cancel(principal, account_id, order_id))

    return await respond(build)


@tool(Scope.TRADE, "Confirm trade", TRADES)
async def confirm_trade(
    ctx: Context[Any, Any],
    confirmation_id: Annotated[
        str,
        Field(pattern=r"^cf_[A-Za-z0-9_-]{32}$", description="From create_order or cancel_order"),
    ],
) -> Annotated[CallToolResult, outputs.TradeResult] | InputRequiredResult:
    """Send a proposed order or cancel to the broker, once. Only after the person has
    explicitly said yes to its summary; never on your own initiative."""

    def confirm(principal: Principal, can_elicit: bool) -> Any:
        try:
            return trading.confirm_trade(principal, confirmation_id)
        except ElicitationRequired:
            if not can_elicit:
                raise
            # Still pending: the person is asked in their client's dialog instead.
            return trading.own_trade(principal, confirmation_id)

    def is_same_call(trade: Any) -> bool:
        return bool(trade.confirmation_id == confirmation_id)

    # Shielded: once submission starts it runs to a recorded outcome even if the client
    # goes away (the worker thread finishes regardless).
    return await asyncio.shield(
        confirmation.propose_and_ask(ctx, confirm, is_same_call, render_trade)
    )
