"""E*TRADE end to end: the OAuth connect flow through the REST API, then trading through a
real MCP server process whose adapter talks to the fake E*TRADE over HTTP, including an
answer lost after E*TRADE accepted the order, and a token that expires at midnight."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import time_machine
from django.test import Client, override_settings
from django.utils import timezone

from audit.models import AuditEvent
from controlplane import tasks
from controlplane.models import BrokerAccount, BrokerConnection, PendingTrade
from controlplane.services.connections import set_trading_enabled
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user
from tests.fake_etrade import VERIFIER_IN_PAGE, FakeETrade, Fault
from tests.mcp_harness import McpServer, call, call_tool, run_server, text_of, token_for
from tests.test_trading import audit_actions

pytestmark = pytest.mark.usefixtures("committed_db")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeETrade]:
    with FakeETrade() as running:
        yield running


def fake_settings(fake: FakeETrade) -> dict[str, str]:
    return {
        "ETRADE_CONSUMER_KEY": fake.consumer_key,
        "ETRADE_CONSUMER_SECRET": fake.consumer_secret,
        "ETRADE_API_BASE_URL": fake.base_url,
        "ETRADE_AUTHORIZE_URL": fake.authorize_url,
        "ETRADE_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture(autouse=True)
def _pointed_at_the_fake(fake: FakeETrade) -> Iterator[None]:
    values: dict[str, Any] = fake_settings(fake)
    values["ETRADE_TIMEOUT_SECONDS"] = 3
    fake.clear_faults()
    with override_settings(**values, ETRADE_OAUTH_BASE_URL=""):
        yield


@pytest.fixture(scope="module")
def etrade_server(
    fake: FakeETrade,
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[McpServer]:
    with run_server(Path(tmp_path_factory.mktemp("etrade")), env=fake_settings(fake)) as server:
        yield server


def post(client: Client, path: str, body: object, headers: dict[str, str]) -> Any:
    return client.post(path, body, content_type="application/json", headers=headers)


def connect(client: Client, user: UserCreds) -> dict[str, Any]:
    """The platform starts the connection; the person approves on the authorize page and
    the platform sends back the verifier they were shown."""
    headers = user.platform.headers()
    started = post(
        client,
        f"/v1/users/{user.user_id}/connections",
        {"broker": "etrade", "environment": "sandbox", "trading_requested": True},
        headers,
    )
    assert started.status_code == 201, started.content
    connection = started.json()
    assert connection["status"] == "pending_authorization"
    # The fake's authorize page takes who logs in as a query parameter.
    page = requests.get(f"{connection['authorize_url']}&user={user.user_id}", timeout=5)
    found = VERIFIER_IN_PAGE.search(page.text)
    assert found, page.text
    completed = post(
        client,
        f"/v1/connections/{connection['id']}/complete",
        {"verifier": found.group(1)},
        headers,
    )
    assert completed.status_code == 200, completed.content
    done: dict[str, Any] = completed.json()
    return done


def trading_user(client: Client, name: str) -> UserCreds:
    user = make_user(make_platform(f"P-{name}"), name)
    connected = connect(client, user)
    set_trading_enabled(BrokerConnection.objects.get(pk=connected["id"]), True, actor=OPERATOR)
    return user


def test_the_oauth_flow_through_the_rest_api(client: Client, fake: FakeETrade) -> None:
    user = make_user(make_platform("Acme"), "alice")
    done = connect(client, user)
    assert done["status"] == "active"
    assert done["authorize_url"] is None
    connection = BrokerConnection.objects.get(pk=done["id"])
    credentials = connection.get_credentials()
    assert set(credentials) >= {"access_token", "access_token_secret"}
    # Encrypted at rest: the token is not in the stored text.
    assert credentials["access_token"] not in connection.credentials_ciphertext
    assert connection.token_expires_at is not None
    assert BrokerAccount.objects.filter(connection=connection).exists()
    assert list(
        AuditEvent.objects.filter(target=f"connection:{connection.pk}")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["connection.created", "connection.authorized"]
    # A verifier is good once.
    again = post(
        client, f"/v1/connections/{done['id']}/complete", {"verifier": "x"}, user.platform.headers()
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_a_wrong_verifier_changes_nothing(client: Client) -> None:
    user = make_user(make_platform("Acme"), "bob")
    headers = user.platform.headers()
    started = post(
        client, f"/v1/users/{user.user_id}/connections", {"broker": "etrade"}, headers
    ).json()
    wrong = post(
        client, f"/v1/connections/{started['id']}/complete", {"verifier": "WRONG"}, headers
    )
    assert wrong.status_code == 502
    assert wrong.json()["error"]["code"] == "broker_error"
    assert BrokerConnection.objects.get(pk=started["id"]).status == "pending_authorization"
    # Another platform cannot complete it.
    other = make_platform("Globex")
    foreign = post(
        client, f"/v1/connections/{started['id']}/complete", {"verifier": "X"}, other.headers()
    )
    assert foreign.status_code == 404


def test_an_authorization_left_too_long_must_start_again(client: Client, fake: FakeETrade) -> None:
    user = make_user(make_platform("Acme"), "carol")
    headers = user.platform.headers()
    started = post(
        client, f"/v1/users/{user.user_id}/connections", {"broker": "etrade"}, headers
    ).json()
    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        late = post(client, f"/v1/connections/{started['id']}/complete", {"verifier": "V"}, headers)
    assert late.status_code == 409
    assert "start a new connection" in late.json()["error"]["message"]


def order(account_id: str, symbol: str = "AAPL", side: str = "BUY") -> dict[str, Any]:
    return {
        "account_id": account_id,
        "symbol": symbol,
        "side": side,
        "quantity": 2,
        "order_type": "MARKET",
    }


def etrade_account(server: McpServer, token: str) -> str:
    listed = call_tool(server.mcp_url, token, "list_accounts", {})
    assert not listed.is_error, text_of(listed)
    (account,) = [a for a in listed.structured_content["accounts"] if a["broker"] == "etrade"][:1]
    account_id: str = account["account_id"]
    return account_id


def test_create_confirm_and_fill_through_mcp(
    client: Client, etrade_server: McpServer, fake: FakeETrade
) -> None:
    user = trading_user(client, "dave")
    token = token_for(etrade_server, user)
    account_id = etrade_account(etrade_server, token)
    places_before = fake.calls["orders.place"]

    async def work(mcp: Any) -> dict[str, Any]:
        created = await mcp.call_tool("create_order", order(account_id))
        confirmation_id = created.structured_content["confirmation_id"]
        confirmed = await mcp.call_tool("confirm_trade", {"confirmation_id": confirmation_id})
        broker_order_id = confirmed.structured_content["broker_order_id"]
        detail = await mcp.call_tool(
            "get_order", {"account_id": account_id, "order_id": broker_order_id}
        )
        positions = await mcp.call_tool("get_positions", {"account_id": account_id})
        return {
            "created": created,
            "confirmed": confirmed,
            "detail": detail,
            "positions": positions,
        }

    seen = call(etrade_server.mcp_url, token, work)
    assert seen["created"].structured_content["status"] == "pending", text_of(seen["created"])
    assert seen["confirmed"].structured_content["status"] == "submitted", text_of(seen["confirmed"])
    assert seen["detail"].structured_content["data"]["status"] == "FILLED", text_of(seen["detail"])
    held = {p["symbol"]: p["quantity"] for p in seen["positions"].structured_content["data"]}
    assert held.get("AAPL") not in (None, "0")
    assert fake.calls["orders.place"] == places_before + 1


def test_an_answer_lost_after_etrade_accepted_leaves_the_trade_unknown_and_never_resends(
    client: Client, etrade_server: McpServer, fake: FakeETrade
) -> None:
    user = trading_user(client, "erin")
    token = token_for(etrade_server, user)
    account_id = etrade_account(etrade_server, token)
    created = call_tool(etrade_server.mcp_url, token, "create_order", order(account_id, "MSFT"))
    confirmation_id = created.structured_content["confirmation_id"]
    trade = PendingTrade.objects.get(confirmation_id=confirmation_id)
    places_before = fake.calls["orders.place"]
    fake.fail("orders.place", Fault.DROP)

    lost = call_tool(
        etrade_server.mcp_url, token, "confirm_trade", {"confirmation_id": confirmation_id}
    )
    assert text_of(lost).startswith("broker_unavailable:"), text_of(lost)
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.UNKNOWN
    again = call_tool(
        etrade_server.mcp_url, token, "confirm_trade", {"confirmation_id": confirmation_id}
    )
    assert text_of(again).startswith("confirmation_used:")
    # The place call was made once, and E*TRADE holds exactly one order under the id.
    assert fake.calls["orders.place"] == places_before + 1
    with fake.lock:
        held = [
            o
            for account in fake.brokerage.accounts_of(user.user_id)
            for o in account.orders.values()
            if o.client_order_id == trade.client_order_id
        ]
    assert len(held) == 1
    assert audit_actions(trade) == ["trade.created", "trade.confirmed", "trade.unknown"]

    # Reconciliation finds E*TRADE's order by the client order id, and places nothing.
    tasks.reconcile_unknown_trades.apply().get()
    tasks.reconcile_unknown_trades.apply().get()  # a second run changes nothing
    trade.refresh_from_db()
    assert trade.status == PendingTrade.Status.SUBMITTED
    assert trade.broker_order_id == str(held[0].order_id)
    assert fake.calls["orders.place"] == places_before + 1
    assert audit_actions(trade) == [
        "trade.created",
        "trade.confirmed",
        "trade.unknown",
        "trade.reconciled",
    ]


def test_a_token_past_midnight_asks_the_person_to_reconnect(
    client: Client, etrade_server: McpServer, fake: FakeETrade
) -> None:
    user = trading_user(client, "frank")
    token = token_for(etrade_server, user)
    account_id = etrade_account(etrade_server, token)
    fake.advance(hours=25)  # past midnight US Eastern: the access token is dead
    try:
        refused = call_tool(
            etrade_server.mcp_url, token, "get_account_balance", {"account_id": account_id}
        )
        assert refused.is_error
        assert "reconnect" in text_of(refused), text_of(refused)
        connection = BrokerConnection.objects.get(end_user=user.user)
        assert connection.status == BrokerConnection.Status.NEEDS_REAUTH
        # Every later call says the same without asking E*TRADE again.
        calls_before = sum(fake.calls.values())
        later = call_tool(etrade_server.mcp_url, token, "get_positions", {"account_id": account_id})
        assert "reconnect" in text_of(later)
        assert sum(fake.calls.values()) == calls_before
    finally:
        fake.advance(hours=-25)


def test_deleting_the_connection_revokes_the_token_at_etrade(
    client: Client, fake: FakeETrade
) -> None:
    user = make_user(make_platform("Acme"), "gina")
    done = connect(client, user)
    revokes_before = fake.calls["oauth.revoke_access_token"]
    deleted = client.delete(f"/v1/connections/{done['id']}", headers=user.platform.headers())
    assert deleted.status_code == 204
    assert fake.calls["oauth.revoke_access_token"] == revokes_before + 1
    connection = BrokerConnection.objects.get(pk=done["id"])
    assert connection.status == BrokerConnection.Status.REVOKED
    assert connection.credentials_ciphertext == ""


def test_the_renewal_task_keeps_an_idle_token_alive_and_retires_it_at_midnight(
    client: Client, fake: FakeETrade
) -> None:
    user = make_user(make_platform("Acme"), "hana")
    done = connect(client, user)
    connection = BrokerConnection.objects.get(pk=done["id"])
    renews_before = fake.calls["oauth.renew_access_token"]
    tasks.renew_broker_tokens.apply().get()
    assert fake.calls["oauth.renew_access_token"] == renews_before  # fresh: nothing to do

    idle = timezone.now() + timedelta(minutes=91)
    fake.advance(91 * 60)
    try:
        with time_machine.travel(idle, tick=False):
            tasks.renew_broker_tokens.apply().get()
            tasks.renew_broker_tokens.apply().get()  # renewed already: one upstream call
        assert fake.calls["oauth.renew_access_token"] == renews_before + 1
        connection.refresh_from_db()
        assert connection.status == BrokerConnection.Status.ACTIVE
        assert connection.token_renewed_at is not None

        assert connection.token_expires_at is not None
        past_midnight = connection.token_expires_at + timedelta(minutes=1)
        with time_machine.travel(past_midnight, tick=False):
            tasks.renew_broker_tokens.apply().get()
        connection.refresh_from_db()
        assert connection.status == BrokerConnection.Status.NEEDS_REAUTH
        assert fake.calls["oauth.renew_access_token"] == renews_before + 1
    finally:
        fake.advance(-91 * 60)


def test_an_operator_reconnects_and_completes_in_the_admin(
    client: Client, fake: FakeETrade
) -> None:
    from django.contrib.auth.models import User

    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    browser = Client()
    browser.login(username="ops", password="correct horse battery")
    user = make_user(make_platform("Acme"), "ivan")
    old = BrokerConnection.objects.get(pk=connect(client, user)["id"])
    url = "/admin/controlplane/brokerconnection/"

    started = browser.post(
        url, {"action": "reconnect", "_selected_action": [old.pk]}, follow=True
    ).content.decode()
    new = BrokerConnection.objects.filter(end_user=user.user).exclude(pk=old.pk).get()
    assert new.status == BrokerConnection.Status.PENDING_AUTHORIZATION
    assert f"{fake.authorize_url}?key=" in started
    request_token = new.get_credentials()["request_token"]
    verifier = fake.approve(request_token, user=user.user_id)

    browser.post(
        url,
        {"action": "complete_authorization", "_selected_action": [new.pk], "verifier": verifier},
    )
    new.refresh_from_db()
    assert new.status == BrokerConnection.Status.ACTIVE
    assert AuditEvent.objects.filter(
        action="connection.authorized", actor_id="ops", target=f"connection:{new.pk}"
    ).exists()
