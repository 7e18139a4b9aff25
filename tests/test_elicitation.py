"""Human confirmation by elicitation: a client that can show a dialog asks the person, and
"accept" submits exactly as confirm_trade would; clients without it keep the two-step flow.

Real server processes, the SDK's client in both protocol eras, the paper broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp.types import ElicitRequestParams, ElicitResult

from audit.models import AuditEvent
from brokers.paper.models import PaperOrder
from controlplane.models import BrokerConnection, PendingTrade, RiskPolicy
from controlplane.services.connections import set_trading_enabled
from tests.conftest import OPERATOR, UserCreds
from tests.mcp_harness import (
    McpServer,
    call,
    first_account,
    raw_post,
    run_server,
    text_of,
    token_for,
)
from tests.test_trading import audit_actions

pytestmark = pytest.mark.usefixtures("committed_db")


class Person:
    """Answers the client's confirmation dialog and remembers what it was shown."""

    def __init__(self, action: str = "accept", confirm: bool = True) -> None:
        self.action = action
        self.confirm = confirm
        self.asked: list[ElicitRequestParams] = []

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params)
        content = {"confirm": self.confirm} if self.action == "accept" else None
        return ElicitResult(action=self.action, content=content)  # type: ignore[arg-type]


def order(account_id: str, quantity: int = 3) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": quantity,
        "order_type": "MARKET",
    }


def granted(user: UserCreds) -> BrokerConnection:
    connection = BrokerConnection.objects.get(end_user=user.user)
    set_trading_enabled(connection, True, actor=OPERATOR)
    return connection


def create_order(
    server: McpServer, token: str, arguments: dict[str, Any], *, mode: str, person: Any
) -> Any:
    async def work(client: Any) -> Any:
        return await client.call_tool("create_order", arguments)

    return call(server.mcp_url, token, work, mode=mode, elicitation_callback=person)


def paper_orders(confirmation_id: str) -> int:
    trade = PendingTrade.objects.get(confirmation_id=confirmation_id)
    return PaperOrder.objects.filter(client_order_id=trade.client_order_id).count()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_accepting_the_dialog_submits_the_order_once(
    server: McpServer, trader: UserCreds, mode: str
) -> None:
    """2026-07-28 (multi-round-trip) and 2025-11-25 (push, stateful session) alike."""
    granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    person = Person()
    result = create_order(server, token, order(account_id), mode=mode, person=person)
    assert not result.is_error, text_of(result)
    trade = result.structured_content
    assert trade["status"] == "submitted"
    assert trade["broker_order_id"]
    [asked] = person.asked
    assert "BUY 3 AAPL MARKET" in asked.message
    assert trade["summary"] in asked.message
    assert paper_orders(trade["confirmation_id"]) == 1
    stored = PendingTrade.objects.get(confirmation_id=trade["confirmation_id"])
    assert audit_actions(stored) == ["trade.created", "trade.confirmed", "trade.submitted"]
    confirmed = stored_audit_detail(stored, "trade.confirmed")
    assert confirmed["via"] == "elicitation"


def stored_audit_detail(trade: PendingTrade, action: str) -> dict[str, Any]:
    event = AuditEvent.objects.get(target=f"trade:{trade.confirmation_id}", action=action)
    detail: dict[str, Any] = event.detail
    return detail


@pytest.mark.parametrize(("action", "confirm"), [("decline", True), ("accept", False)])
def test_saying_no_ends_the_trade_and_sends_nothing(
    server: McpServer, trader: UserCreds, action: str, confirm: bool
) -> None:
    granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    result = create_order(
        server, token, order(account_id), mode="auto", person=Person(action, confirm)
    )
    assert not result.is_error, text_of(result)
    trade = result.structured_content
    assert trade["status"] == "rejected"
    assert paper_orders(trade["confirmation_id"]) == 0
    stored = PendingTrade.objects.get(confirmation_id=trade["confirmation_id"])
    assert stored.status_reason == "declined by the person in the confirmation dialog"
    assert audit_actions(stored) == ["trade.created", "trade.rejected"]
    # The confirmation cannot be used afterwards either.
    again = call(
        server.mcp_url,
        token,
        lambda client: client.call_tool(
            "confirm_trade", {"confirmation_id": trade["confirmation_id"]}
        ),
    )
    assert text_of(again).startswith("risk_rejected:")
    assert paper_orders(trade["confirmation_id"]) == 0


def test_a_client_without_elicitation_gets_the_two_step_flow(
    server: McpServer, trader: UserCreds
) -> None:
    granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    result = create_order(server, token, order(account_id), mode="auto", person=None)
    assert result.structured_content["status"] == "pending"
    assert paper_orders(result.structured_content["confirmation_id"]) == 0


def test_a_policy_can_require_the_dialog(server: McpServer, trader: UserCreds) -> None:
    connection = granted(trader)
    RiskPolicy.objects.create(
        platform=trader.platform.platform, connection=connection, require_elicitation=True
    )
    token = token_for(server, trader)
    account_id = first_account(server, token)

    refused = create_order(server, token, order(account_id), mode="auto", person=None)
    assert text_of(refused).startswith("elicitation_required:")
    assert not PendingTrade.objects.exists()

    person = Person()
    accepted = create_order(server, token, order(account_id), mode="auto", person=person)
    assert accepted.structured_content["status"] == "submitted", text_of(accepted)
    assert len(person.asked) == 1


def test_confirm_trade_asks_the_person_when_the_policy_requires_it(
    server: McpServer, trader: UserCreds
) -> None:
    """A trade approved by an operator is confirmed later with confirm_trade; under a policy
    that requires the dialog, confirm_trade alone is refused and an eliciting client asks."""
    connection = granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    first = create_order(server, token, order(account_id), mode="auto", person=None)
    confirmation_id = first.structured_content["confirmation_id"]
    RiskPolicy.objects.create(
        platform=trader.platform.platform, connection=connection, require_elicitation=True
    )

    def confirm(client: Any) -> Any:
        return client.call_tool("confirm_trade", {"confirmation_id": confirmation_id})

    refused = call(server.mcp_url, token, confirm)
    assert text_of(refused).startswith("elicitation_required:")
    assert PendingTrade.objects.get(confirmation_id=confirmation_id).status == "pending"

    person = Person()
    confirmed = call(server.mcp_url, token, confirm, elicitation_callback=person)
    assert confirmed.structured_content["status"] == "submitted", text_of(confirmed)
    assert len(person.asked) == 1
    assert paper_orders(confirmation_id) == 1


def test_a_forged_request_state_is_refused(server: McpServer, trader: UserCreds) -> None:
    """The state naming the trade is sealed by the server; a client cannot make one up."""
    granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    response = raw_post(
        server.mcp_url,
        {"authorization": f"Bearer {token}", "mcp-name": "create_order"},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {
                "name": "create_order",
                "arguments": order(account_id),
                "requestState": '{"confirmation_id": "cf_' + "A" * 32 + '"}',
                "inputResponses": {
                    "confirm_trade": {"action": "accept", "content": {"confirm": True}}
                },
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
                },
            },
        },
    )
    assert "error" in response.text
    assert not PendingTrade.objects.exists()


@pytest.fixture(scope="module")
def stateless_server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    with run_server(
        Path(tmp_path_factory.mktemp("stateless")),
        env={"TRADEPLANE_MCP_STATELESS": "1", "TRADEPLANE_MCP_JSON_RESPONSE": "1"},
    ) as running:
        yield running


def test_stateless_mode_asks_2026_clients_and_leaves_older_ones_the_two_step_flow(
    stateless_server: McpServer, trader: UserCreds
) -> None:
    granted(trader)
    token = token_for(stateless_server, trader)
    account_id = first_account(stateless_server, token)

    modern = create_order(stateless_server, token, order(account_id), mode="auto", person=Person())
    assert modern.structured_content["status"] == "submitted", text_of(modern)

    person = Person()
    legacy = create_order(
        stateless_server, token, order(account_id, 2), mode="legacy", person=person
    )
    assert legacy.structured_content["status"] == "pending", text_of(legacy)
    assert person.asked == []  # no back-channel to push a question on


def test_the_dialog_is_audited_as_one_tool_call_per_round(
    server: McpServer, trader: UserCreds
) -> None:
    granted(trader)
    token = token_for(server, trader)
    account_id = first_account(server, token)
    create_order(server, token, order(account_id), mode="auto", person=Person())
    outcomes = list(
        AuditEvent.objects.filter(action="tool.call", target="tool:create_order")
        .order_by("seq")
        .values_list("outcome", flat=True)
    )
    assert outcomes == ["input_required", "ok"]
