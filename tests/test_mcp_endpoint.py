"""The MCP endpoint through a real uvicorn process and the SDK's Streamable HTTP client:
authentication at the HTTP level, every tool against the paper broker, refusals, rate
limits (also across two processes) and the audit row of every call."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from audit.models import AuditEvent
from brokers.paper.models import PaperPreview
from controlplane.models import ALL_SCOPES, BrokerAccount, BrokerConnection
from controlplane.services.connections import create_connection
from controlplane.services.platforms import set_platform_active
from controlplane.services.tokens import issue_token, revoke_token_by_jti
from controlplane.services.users import set_end_user_active
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user
from tests.mcp_harness import (
    McpServer,
    call,
    call_tool,
    first_account,
    raw_post,
    run_server,
    text_of,
    token_for,
)

TRADE_TOOLS = {"create_order", "cancel_order", "confirm_trade"}
READ_TOOLS = {
    "whoami",
    "list_accounts",
    "get_account_balance",
    "get_positions",
    "get_position_details",
    "get_quotes",
    "list_orders",
    "get_order",
    "list_transactions",
    "preview_order",
    "list_pending_trades",
    "add_to_watchlist",
    "remove_from_watchlist",
}


# ---- HTTP-level authentication ---------------------------------------------------------------


def test_no_token_is_401_with_a_challenge_naming_the_metadata(
    server: McpServer, committed_db: None
) -> None:
    response = raw_post(server.mcp_url, {})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (
        f'resource_metadata="{server.public_url}/.well-known/oauth-protected-resource' in challenge
    )
    assert 'scope="read trade"' in challenge
    assert "error=" not in challenge  # no credentials sent: no error code (RFC 6750 §3.1)
    bad = raw_post(server.mcp_url, {"authorization": "Bearer nope"}).headers["www-authenticate"]
    assert 'error="invalid_token"' in bad
    assert 'scope="read trade"' in bad


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"]
)
def test_the_protected_resource_metadata_is_served(
    server: McpServer, committed_db: None, path: str
) -> None:
    document = httpx.get(f"{server.base_url}{path}").json()
    assert document["resource"] == f"{server.public_url}/mcp"
    assert document["authorization_servers"] == [server.public_url]
    assert document["scopes_supported"] == ["read", "trade"]
    assert document["bearer_methods_supported"] == ["header"]


def test_bad_tokens_are_401(server: McpServer, trader: UserCreds) -> None:
    good = token_for(server, trader)
    header, payload, signature = good.split(".")
    forged = [
        "garbage",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        jwt.encode({"sub": "alice"}, "s" * 32, algorithm="HS256"),
        # Minted for another audience (this process's default public URL, not the server's).
        issue_token(trader.platform.platform, trader.user, ALL_SCOPES, actor=OPERATOR).access_token,
    ]
    for token in forged:
        response = raw_post(server.mcp_url, {"authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
    assert raw_post(server.mcp_url, {"authorization": f"Bearer {good}"}).status_code == 200


def test_an_expired_token_is_401(server: McpServer, trader: UserCreds) -> None:
    import time_machine

    with time_machine.travel(time.time() - 7200, tick=False):
        old = token_for(server, trader)
    assert raw_post(server.mcp_url, {"authorization": f"Bearer {old}"}).status_code == 401


def test_revocation_and_deactivation_apply_to_the_next_request(
    server: McpServer, trader: UserCreds
) -> None:
    token = token_for(server, trader)
    auth = {"authorization": f"Bearer {token}"}
    assert raw_post(server.mcp_url, auth).status_code == 200
    revoke_token_by_jti(
        jwt.decode(token, options={"verify_signature": False})["jti"], reason="test", actor=OPERATOR
    )
    assert raw_post(server.mcp_url, auth).status_code == 401

    token = token_for(server, trader)
    auth = {"authorization": f"Bearer {token}"}
    set_end_user_active(trader.user, False, actor=OPERATOR)
    assert raw_post(server.mcp_url, auth).status_code == 401
    set_end_user_active(trader.user, True, actor=OPERATOR)
    assert raw_post(server.mcp_url, auth).status_code == 200
    set_platform_active(trader.platform.platform, False, actor=OPERATOR)
    assert raw_post(server.mcp_url, auth).status_code == 401


def test_a_token_in_the_query_string_or_a_cookie_is_refused(
    server: McpServer, trader: UserCreds
) -> None:
    token = token_for(server, trader)
    response = raw_post(f"{server.mcp_url}?access_token={token}", {})
    assert response.status_code == 400
    assert "Authorization header" in response.json()["error_description"]
    response = raw_post(server.mcp_url, {"cookie": f"access_token={token}"})
    assert response.status_code == 401


def test_a_foreign_origin_is_403_and_no_origin_is_served(
    server: McpServer, trader: UserCreds
) -> None:
    auth = {"authorization": f"Bearer {token_for(server, trader)}"}
    assert raw_post(server.mcp_url, {**auth, "origin": "https://evil.example"}).status_code == 403
    assert raw_post(server.mcp_url, {**auth, "origin": server.base_url}).status_code == 200
    assert raw_post(server.mcp_url, auth).status_code == 200


def test_an_oversized_body_is_refused_before_any_tool_runs(
    server: McpServer, trader: UserCreds
) -> None:
    auth = {"authorization": f"Bearer {token_for(server, trader)}"}
    before = AuditEvent.objects.filter(action="tool.call").count()
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "whoami", "arguments": {"pad": "x" * 300_000}},
    }
    response = raw_post(server.mcp_url, auth, body)
    assert response.status_code == 413
    assert AuditEvent.objects.filter(action="tool.call").count() == before


def test_an_unsupported_protocol_version_is_400(server: McpServer, trader: UserCreds) -> None:
    auth = {"authorization": f"Bearer {token_for(server, trader)}"}
    response = raw_post(server.mcp_url, {**auth, "mcp-protocol-version": "1999-01-01"})
    assert response.status_code == 400


# ---- Tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_every_read_tool_works_against_the_paper_broker(
    server: McpServer, trader: UserCreds, mode: str
) -> None:
    token = token_for(server, trader)

    async def work(client: Any) -> dict[str, Any]:
        results: dict[str, Any] = {}
        listed = await client.list_tools()
        results["tools"] = {tool.name: tool for tool in listed.tools}
        accounts = await client.call_tool("list_accounts", {})
        account_id = accounts.structured_content["accounts"][0]["account_id"]
        results["list_accounts"] = accounts
        for name, arguments in [
            ("whoami", {}),
            ("get_account_balance", {"account_id": account_id}),
            ("get_positions", {"account_id": account_id}),
            ("get_quotes", {"symbols": ["AAPL", "msft", "SPY"]}),
            ("list_orders", {"account_id": account_id, "limit": 5}),
            ("list_transactions", {"account_id": account_id}),
            (
                "preview_order",
                {
                    "account_id": account_id,
                    "symbol": "AAPL",
                    "side": "BUY",
                    "quantity": 3,
                    "order_type": "LIMIT",
                    "limit_price": "150.00",
                },
            ),
            ("list_pending_trades", {}),
            ("add_to_watchlist", {"symbols": ["NVDA", "TSLA"], "name": "tech"}),
            ("remove_from_watchlist", {"symbols": ["TSLA"], "name": "tech"}),
        ]:
            results[name] = await client.call_tool(name, arguments)
        watchlist = await client.read_resource("market://watchlist/tech")
        results["watchlist"] = watchlist.contents[0].text
        summary = await client.read_resource(f"account://{account_id}/summary")
        results["summary"] = summary.contents[0].text
        prompt = await client.get_prompt("portfolio_analysis", {"account_id": account_id})
        results["prompt"] = prompt.messages[0].content.text
        return results

    results = call(server.mcp_url, token, work, mode=mode)
    assert set(results["tools"]) == READ_TOOLS | TRADE_TOOLS
    assert results["tools"]["confirm_trade"].annotations.destructive_hint is True
    assert results["tools"]["confirm_trade"].annotations.idempotent_hint is False
    assert results["tools"]["get_quotes"].annotations.read_only_hint is True
    assert results["tools"]["get_quotes"].input_schema["additionalProperties"] is False
    assert results["tools"]["get_quotes"].output_schema is not None
    for name, result in results.items():
        if hasattr(result, "is_error"):
            assert not result.is_error, f"{name}: {text_of(result)}"
    balance = results["get_account_balance"].structured_content
    assert balance["environment"] == "paper"
    assert balance["trust"] == "untrusted_broker_data"
    assert Decimal(balance["data"]["cash"]) == Decimal("100000")
    quotes = results["get_quotes"].structured_content["data"]
    assert [q["symbol"] for q in quotes] == ["AAPL", "MSFT", "SPY"]
    assert results["get_quotes"].content[0].text.startswith("[untrusted broker data]")
    preview = results["preview_order"].structured_content
    assert Decimal(preview["data"]["estimated_total"]) > 0
    assert results["remove_from_watchlist"].structured_content["symbols"] == ["NVDA"]
    assert '"symbols": ["NVDA"]' in results["watchlist"]
    assert "get_positions" in results["prompt"]
    broker_key = BrokerAccount.objects.get(connection__end_user=trader.user).broker_account_key
    assert broker_key not in results["summary"]


def test_orders_and_positions_after_a_fill(server: McpServer, trader: UserCreds) -> None:
    """Reads reflect the broker's state: an order placed at the broker shows up everywhere."""
    from brokers.base import OrderRequest, OrderType, Side
    from brokers.registry import get_adapter

    token = token_for(server, trader)
    account_id = first_account(server, token)
    account = BrokerAccount.objects.get(id=account_id)
    adapter = get_adapter(account.connection)
    request = OrderRequest(
        symbol="AAPL", side=Side.BUY, quantity=Decimal(2), order_type=OrderType.MARKET
    )
    preview = adapter.preview_order(account.broker_account_key, request)
    placement = adapter.place_order(account.broker_account_key, request, "T1", preview)

    order = call_tool(
        server.mcp_url,
        token,
        "get_order",
        {"account_id": account_id, "order_id": placement.order_id},
    )
    assert not order.is_error, text_of(order)
    assert order.structured_content["data"]["status"] == "FILLED"
    assert len(order.structured_content["data"]["fills"]) == 1
    details = call_tool(
        server.mcp_url, token, "get_position_details", {"account_id": account_id, "symbol": "aapl"}
    )
    assert not details.is_error, text_of(details)
    assert Decimal(details.structured_content["data"]["position"]["quantity"]) == 2
    missing = call_tool(
        server.mcp_url, token, "get_order", {"account_id": account_id, "order_id": "999999"}
    )
    assert text_of(missing).startswith("not_found:")


def test_another_users_account_looks_exactly_like_a_missing_one(
    server: McpServer, trader: UserCreds
) -> None:
    mallory = make_user(make_platform("Globex"), "mallory")
    create_connection(
        mallory.user, broker="paper", environment=None, trading_requested=False, actor=OPERATOR
    )
    alices_account = first_account(server, token_for(server, trader))
    mallory_token = token_for(server, mallory)
    foreign = call_tool(
        server.mcp_url, mallory_token, "get_account_balance", {"account_id": alices_account}
    )
    missing = call_tool(
        server.mcp_url,
        mallory_token,
        "get_account_balance",
        {"account_id": "acct_0123456789abcdef"},
    )
    assert foreign.is_error
    assert missing.is_error
    assert text_of(foreign).replace(alices_account, "X") == text_of(missing).replace(
        "acct_0123456789abcdef", "X"
    )
    assert text_of(foreign).startswith("not_found:")


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("get_quotes", {"symbols": ["AAPL"], "unexpected": True}),
        ("get_quotes", {"symbols": []}),
        ("get_quotes", {"symbols": [f"S{i}" for i in range(26)]}),
        ("get_quotes", {"symbols": ["A" * 11]}),
        ("get_quotes", {"symbols": ["AAPL; DROP TABLE"]}),
        ("get_account_balance", {"account_id": "../../etc"}),
        (
            "preview_order",
            {"symbol": "AAPL", "side": "BUY", "quantity": -1, "order_type": "MARKET"},
        ),
        ("preview_order", {"symbol": "AAPL", "side": "BUY", "quantity": 0, "order_type": "MARKET"}),
        (
            "preview_order",
            {"symbol": "AAPL", "side": "BUY", "quantity": "NaN", "order_type": "MARKET"},
        ),
        (
            "preview_order",
            {"symbol": "AAPL", "side": "BUY", "quantity": "Infinity", "order_type": "MARKET"},
        ),
        (
            "preview_order",
            {"symbol": "AAPL", "side": "BUY", "quantity": 1.5, "order_type": "MARKET"},
        ),
        (
            "preview_order",
            {"symbol": "AAPL", "side": "HOLD", "quantity": 1, "order_type": "MARKET"},
        ),
        ("preview_order", {"symbol": "AAPL", "side": "BUY", "quantity": 1, "order_type": "LIMIT"}),
        (
            "preview_order",
            {
                "symbol": "AAPL",
                "side": "BUY",
                "quantity": 1,
                "order_type": "MARKET",
                "limit_price": "-3",
            },
        ),
        ("list_orders", {"limit": 100000}),
        ("list_transactions", {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
    ],
)
def test_invalid_arguments_are_refused_before_any_broker_call(
    server: McpServer, trader: UserCreds, name: str, arguments: dict[str, Any]
) -> None:
    token = token_for(server, trader)
    account_id = first_account(server, token)
    if name != "get_quotes":
        arguments = {"account_id": account_id, **arguments}
    previews = PaperPreview.objects.count()
    result = call_tool(server.mcp_url, token, name, arguments)
    assert result.is_error
    assert text_of(result).startswith("invalid_argument:"), text_of(result)
    assert PaperPreview.objects.count() == previews


def test_tools_are_listed_and_refused_by_scope(server: McpServer, trader: UserCreds) -> None:
    trade_only = token_for(server, trader, frozenset({"trade"}))

    async def work(client: Any) -> tuple[Any, Any]:
        return await client.list_tools(), await client.call_tool("whoami", {})

    listed, refused = call(server.mcp_url, trade_only, work)
    assert {tool.name for tool in listed.tools} == TRADE_TOOLS
    assert refused.is_error
    assert text_of(refused).startswith("forbidden_scope:")
    event = AuditEvent.objects.filter(action="tool.call", target="tool:whoami").last()
    assert event is not None
    assert event.outcome == "forbidden_scope"


def test_every_call_writes_one_audit_row(server: McpServer, trader: UserCreds) -> None:
    token = token_for(server, trader)
    before = AuditEvent.objects.filter(action="tool.call").count()

    async def work(client: Any) -> None:
        await client.call_tool("whoami", {})
        await client.call_tool("get_quotes", {"symbols": ["AAPL"]})
        await client.call_tool("get_quotes", {"symbols": ["NOPE1"]})
        await client.call_tool("get_quotes", {"symbols": ["AAPL"], "x": 1})
        await client.call_tool("get_account_balance", {"account_id": "acct_0123456789abcdef"})

    call(server.mcp_url, token, work)
    rows = list(AuditEvent.objects.filter(action="tool.call").order_by("seq")[before:])
    assert [(r.target, r.outcome) for r in rows] == [
        ("tool:whoami", "ok"),
        ("tool:get_quotes", "ok"),
        ("tool:get_quotes", "broker_error"),
        ("tool:get_quotes", "invalid_argument"),
        ("tool:get_account_balance", "not_found"),
    ]
    principal_jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    for row in rows:
        assert (row.actor_kind, row.actor_id, row.jti) == ("end_user", "alice", principal_jti)
        assert row.latency_ms is not None
        assert row.latency_ms >= 0
        assert row.platform == trader.platform.client_id
    assert rows[1].detail == {"tool": "get_quotes", "arguments": {"symbols": ["AAPL"]}}


# ---- Rate limits ------------------------------------------------------------------------------


def _count_limited(url: str, token: str, calls: int) -> tuple[int, list[str]]:
    async def work(client: Any) -> list[Any]:
        return [await client.call_tool("whoami", {}) for _ in range(calls)]

    results = call(url, token, work)
    refusals = [text_of(r) for r in results if r.is_error]
    return calls - len(refusals), refusals


def test_the_61st_call_in_a_minute_is_rate_limited(server: McpServer, trader: UserCreds) -> None:
    accepted, refusals = _count_limited(server.mcp_url, token_for(server, trader), 62)
    assert accepted == 60
    assert len(refusals) == 2
    assert all(r.startswith("rate_limited:") and "retry after" in r for r in refusals)
    seconds = float(refusals[0].split("retry after ")[1].split(" ")[0])
    assert 0 < seconds <= 60


def test_the_limit_holds_across_two_server_processes(
    server: McpServer, trader: UserCreds, tmp_path: Path
) -> None:
    token = token_for(server, trader)
    with run_server(tmp_path, public_url=server.public_url) as second:
        totals: list[int] = []

        def hammer(url: str) -> None:
            totals.append(_count_limited(url, token, 50)[0])

        threads = [
            threading.Thread(target=hammer, args=(url,)) for url in (server.mcp_url, second.mcp_url)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sum(totals) == 60, totals


def test_platform_overrides_apply(server: McpServer, trader: UserCreds) -> None:
    platform = trader.platform.platform
    platform.rate_limit_per_minute = 5
    platform.save(update_fields=["rate_limit_per_minute"])
    accepted, _ = _count_limited(server.mcp_url, token_for(server, trader), 8)
    assert accepted == 5


def test_with_redis_down_calls_fail_closed_within_the_bound(
    trader: UserCreds, tmp_path: Path
) -> None:
    dead_redis = "redis://127.0.0.1:1/0"
    with run_server(tmp_path, env={"REDIS_URL": dead_redis}) as broken:
        token = token_for(broken, trader)
        started = time.monotonic()
        result = call_tool(broken.mcp_url, token, "whoami", {})
        elapsed = time.monotonic() - started
    assert result.is_error
    assert text_of(result).startswith("broker_unavailable:")
    assert elapsed < 5
    assert BrokerConnection.objects.filter(end_user=trader.user).exists()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_stateless_json_mode_serves_both_eras(trader: UserCreds, tmp_path: Path, mode: str) -> None:
    """Any process can answer any request: no session is kept between calls."""
    env = {"TRADEPLANE_MCP_STATELESS": "true", "TRADEPLANE_MCP_JSON_RESPONSE": "true"}
    with run_server(tmp_path, env=env) as stateless:
        token = token_for(stateless, trader)
        result = call_tool(stateless.mcp_url, token, "get_quotes", {"symbols": ["SPY"]}, mode=mode)
        session = raw_post(stateless.mcp_url, {"authorization": f"Bearer {token}"})
    assert not result.is_error, text_of(result)
    assert result.structured_content["data"][0]["symbol"] == "SPY"
    assert "mcp-session-id" not in session.headers


def test_preview_order_names_the_risk_checks_it_would_fail(
    server: McpServer, trader: UserCreds
) -> None:
    from controlplane.models import RiskPolicy

    RiskPolicy.objects.create(
        platform=trader.platform.platform, max_order_value=Decimal(1000), symbol_denylist=["TSLA"]
    )
    token = token_for(server, trader)
    account_id = first_account(server, token)
    arguments = {
        "account_id": account_id,
        "side": "BUY",
        "quantity": 10,
        "order_type": "LIMIT",
        "limit_price": "150.00",
    }
    small = call_tool(
        server.mcp_url, token, "preview_order", {**arguments, "symbol": "AAPL", "quantity": 5}
    )
    large = call_tool(server.mcp_url, token, "preview_order", {**arguments, "symbol": "TSLA"})
    assert not small.is_error, text_of(small)
    assert small.structured_content["risk"]["failed"] == []
    assert "max_order_value" in {c["name"] for c in small.structured_content["risk"]["passed"]}
    failed = {c["name"]: c for c in large.structured_content["risk"]["failed"]}
    assert set(failed) == {"max_order_value", "symbol_lists"}
    assert (failed["max_order_value"]["limit"], failed["max_order_value"]["value"]) == (
        "1000.0000",
        "1500.00",
    )
    assert "would fail risk checks" in text_of(large)


def test_protocol_errors_for_unknown_names_are_invalid_params(
    server: McpServer, trader: UserCreds
) -> None:
    from mcp.shared.exceptions import MCPError

    token = token_for(server, trader)

    async def work(client: Any) -> list[int]:
        codes = []
        for attempt in (
            lambda: client.call_tool("no_such_tool", {}),
            lambda: client.get_prompt("no_such_prompt", {}),
            lambda: client.get_prompt("portfolio_analysis", {"account_id": "bad"}),
            lambda: client.read_resource("account://acct_0123456789abcdef/summary"),
        ):
            try:
                await attempt()
            except MCPError as exc:
                codes.append(exc.error.code)
        return codes

    assert call(server.mcp_url, token, work) == [-32602] * 4


def test_the_full_scope_tools_list_stays_under_20_kb(server: McpServer, trader: UserCreds) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    response = raw_post(
        server.mcp_url,
        {
            "authorization": f"Bearer {token_for(server, trader)}",
            "mcp-method": "tools/list",
            "mcp-name": "",
        },
        body,
    )
    assert response.status_code == 200
    assert len(response.json()["result"]["tools"]) == len(READ_TOOLS | TRADE_TOOLS)
    assert len(response.content) <= 20 * 1024
