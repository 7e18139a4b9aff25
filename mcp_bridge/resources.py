"""MCP resources: the same reads as the tools, addressable by URI."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from controlplane.accesstokens import Principal
from controlplane.errors import ControlPlaneError
from controlplane.services import portfolio
from mcp_bridge.auth import current_principal, run_in_db_thread
from mcp_bridge.outputs import UNTRUSTED, plain

JSON = "application/json"


async def _read(build: Callable[[Principal], dict[str, Any]]) -> str:
    try:
        data = await run_in_db_thread(build, current_principal())
    except ControlPlaneError as exc:
        if exc.code == "not_found":
            raise ResourceNotFoundError(f"{exc.code}: {exc.message}") from exc
        raise ResourceError(f"{exc.code}: {exc.message}") from exc
    return json.dumps(data, default=str)


def register_resources(mcp: MCPServer) -> None:
    @mcp.resource("account://{account_id}/summary", mime_type=JSON, title="Account summary")
    async def account_summary(account_id: str) -> str:
        """Balance and positions of one account."""

        def build(principal: Principal) -> dict[str, Any]:
            resolved, balance = portfolio.get_balance(principal, account_id)
            _, positions = portfolio.get_positions(principal, account_id)
            return {
                "account_id": account_id,
                "environment": resolved.connection.environment,
                "trust": UNTRUSTED,
                # The broker's own account key stays inside Tradeplane.
                "balance": {k: v for k, v in plain(balance).items() if k != "account_id"},
                "positions": plain(positions),
            }

        return await _read(build)

    @mcp.resource("portfolio://{account_id}/positions", mime_type=JSON, title="Positions")
    async def positions(account_id: str) -> str:
        """Open positions of one account."""

        def build(principal: Principal) -> dict[str, Any]:
            resolved, rows = portfolio.get_positions(principal, account_id)
            return {
                "account_id": account_id,
                "environment": resolved.connection.environment,
                "trust": UNTRUSTED,
                "positions": plain(rows),
            }

        return await _read(build)

    @mcp.resource("orders://{account_id}/recent", mime_type=JSON, title="Recent orders")
    async def recent_orders(account_id: str) -> str:
        """The 20 most recent orders of one account."""

        def build(principal: Principal) -> dict[str, Any]:
            resolved, orders = portfolio.list_orders(principal, account_id, None, 20)
            return {
                "account_id": account_id,
                "environment": resolved.connection.environment,
                "trust": UNTRUSTED,
                "orders": plain(orders),
            }

        return await _read(build)

    @mcp.resource("market://watchlist/{name}", mime_type=JSON, title="Watchlist with quotes")
    async def watchlist(name: str) -> str:
        """One of the user's watchlists with a fresh quote for each symbol."""

        def build(principal: Principal) -> dict[str, Any]:
            found = portfolio.get_watchlist(principal, name)
            quotes: list[Any] = []
            environment = None
            if found.symbols:
                connection, quotes = portfolio.get_quotes(principal, found.symbols[:25])
                environment = connection.environment
            return {
                "name": found.name,
                "symbols": found.symbols,
                "environment": environment,
                "trust": UNTRUSTED,
                "quotes": plain(quotes),
            }

        return await _read(build)
