"""Health probes, the operator commands and the admin console."""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from audit.models import AuditEvent
from controlplane.accesstokens import verify_access_token
from controlplane.models import BrokerConnection, EndUser, IssuedToken, Platform
from controlplane.redis_client import get_redis
from controlplane.services.tokens import issue_token
from tests.conftest import OPERATOR, UserCreds


def run(*args: str) -> Any:
    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_healthz_answers(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_and_redis(client: Client, db: None) -> None:
    response = client.get("/readyz")
    assert response.status_code == HTTPStatus.OK
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_when_redis_is_unreachable(client: Client, db: None, settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        settings.REDIS_URL = None
        get_redis.cache_clear()
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["checks"]["redis"].startswith("error")


def test_every_response_carries_a_request_id(client: Client) -> None:
    assert len(client.get("/healthz")["X-Request-ID"]) == 24
    echoed = client.get("/healthz", headers={"X-Request-ID": "abcdefgh-1234"})
    assert echoed["X-Request-ID"] == "abcdefgh-1234"
    assert (
        client.get("/healthz", headers={"X-Request-ID": "<script>"})["X-Request-ID"] != "<script>"
    )


def test_create_platform_user_and_mint_from_the_command_line(db: None) -> None:
    platform = run("create_platform", "Initech", "--scopes", "read")
    assert platform["client_secret"].startswith("tp_cs_")
    user = run("create_end_user", "--platform", platform["client_id"], "--user-id", "peter")
    assert user == {"user_id": "peter", "user_secret": user["user_secret"]}
    token = run("mint_token", "--user-id", "peter", "--scopes", "read")
    assert verify_access_token(token["access_token"]).user_id == "peter"
    with pytest.raises(CommandError, match="trade"):
        run("mint_token", "--user-id", "peter", "--scopes", "read,trade")
    with pytest.raises(CommandError, match="no platform"):
        run("create_end_user", "--platform", "tp_ci_missing")
    with pytest.raises(CommandError, match="--scopes"):
        run("create_platform", "Bad", "--scopes", "root")


def test_revoke_token_command(alice: UserCreds) -> None:
    minted = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    assert run("revoke_token", minted.jti)["jti"] == minted.jti
    assert IssuedToken.objects.get(jti=minted.jti).is_revoked
    with pytest.raises(CommandError):
        run("revoke_token", "does-not-exist-0000")


def test_quickstart_is_idempotent_and_regenerates_the_demo_secrets(db: None) -> None:
    first, second = run("quickstart"), run("quickstart")
    assert first["client_id"] == second["client_id"] == "tp_ci_demo"
    assert first["user_id"] == second["user_id"] == "demo-user"
    assert first["connection_id"] == second["connection_id"]
    assert Platform.objects.count() == 1
    assert EndUser.objects.count() == 1
    connection = BrokerConnection.objects.get()
    assert (connection.broker, connection.status, connection.trading_enabled) == (
        "paper",
        "active",
        True,
    )
    assert first["client_secret"] != second["client_secret"]
    assert first["user_secret"] != second["user_secret"]
    assert verify_access_token(second["access_token"]).scopes == {"read", "trade"}
    assert second["mcp_url"].endswith("/mcp")
    for name in ("claude_code", "cursor", "windsurf", "vscode", "codex_cli"):
        assert second["access_token"] in second["configs"][name]
        assert second["mcp_url"] in second["configs"][name]
    assert second["configs"]["claude_code"].startswith("claude mcp add --transport http ")
    from controlplane.models import Watchlist

    assert Watchlist.objects.get(name="default").symbols[:2] == ["SPY", "QQQ"]
    assert "mcp-remote" in second["configs"]["codex_cli"]


def test_quickstart_secrets_work_against_the_api(db: None, client: Client) -> None:
    demo = run("quickstart")
    response = client.post(
        "/auth/tokens/user",
        {"scopes": ["read", "trade"]},
        content_type="application/json",
        headers={
            "client-id": demo["client_id"],
            "client-secret": demo["client_secret"],
            "user-id": demo["user_id"],
            "user-secret": demo["user_secret"],
        },
    )
    assert response.status_code == HTTPStatus.OK
    listed = client.get(
        f"/v1/users/{demo['user_id']}/connections",
        headers={"client-id": demo["client_id"], "client-secret": demo["client_secret"]},
    ).json()
    assert [c["id"] for c in listed] == [demo["connection_id"]]


def test_rotate_signing_key_keeps_old_tokens_valid(alice: UserCreds, settings, tmp_path) -> None:
    from controlplane import accesstokens
    from controlplane.config import EmbeddedSecrets, format_keyring

    settings.VAR_DIR = tmp_path
    store = EmbeddedSecrets(tmp_path / "secrets.json")
    values = store.load()
    values["TRADEPLANE_JWT_KEYS"] = format_keyring(settings.TRADEPLANE_JWT_KEYS)
    store.save(values)
    old = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    try:
        new_kid = run("rotate_signing_key")["signing_kid"]
        new = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
        assert IssuedToken.objects.get(jti=new.jti).key_id == new_kid
        assert verify_access_token(old.access_token).jti == old.jti
        assert verify_access_token(new.access_token).jti == new.jti
        assert AuditEvent.objects.filter(action="key.signing_rotated").count() == 1
    finally:
        accesstokens.reset_key_cache()


@pytest.fixture
def operator_client(db: None) -> Client:
    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    client = Client()
    client.login(username="ops", password="correct horse battery")
    return client


def test_admin_pages_render_without_secrets(operator_client: Client, alice: UserCreds) -> None:
    connection = BrokerConnection.objects.create(
        end_user=alice.user, broker="paper", environment="paper"
    )
    connection.set_credentials({"token": "canary-broker-token"})
    connection.save()
    issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    pages = [
        "/admin/",
        "/admin/controlplane/platform/",
        f"/admin/controlplane/platform/{alice.platform.platform.pk}/change/",
        "/admin/controlplane/enduser/",
        f"/admin/controlplane/enduser/{alice.user.pk}/change/",
        "/admin/controlplane/brokerconnection/",
        f"/admin/controlplane/brokerconnection/{connection.pk}/change/",
        "/admin/controlplane/issuedtoken/",
        "/admin/controlplane/riskpolicy/",
        "/admin/audit/auditevent/",
        "/admin/audit/auditevent/?action=token.minted",
    ]
    for page in pages:
        response = operator_client.get(page)
        assert response.status_code == HTTPStatus.OK, page
        html = response.content.decode()
        for secret in (
            alice.user.user_secret_digest,
            alice.platform.platform.client_secret_digest,
            connection.credentials_ciphertext,
            "canary-broker-token",
        ):
            assert secret not in html, page


def test_audit_events_are_read_only_in_the_admin(operator_client: Client, alice: UserCreds) -> None:
    event = AuditEvent.objects.first()
    assert event is not None
    assert operator_client.get("/admin/audit/auditevent/add/").status_code == HTTPStatus.FORBIDDEN
    response = operator_client.get(f"/admin/audit/auditevent/{event.pk}/delete/")
    assert response.status_code == HTTPStatus.FORBIDDEN
    response = operator_client.post(
        f"/admin/audit/auditevent/{event.pk}/change/", {"outcome": "forged"}
    )
    assert response.status_code == HTTPStatus.FORBIDDEN


def admin_action(client: Client, model: str, action: str, pk: object) -> None:
    response = client.post(
        f"/admin/controlplane/{model}/", {"action": action, "_selected_action": [str(pk)]}
    )
    assert response.status_code == HTTPStatus.FOUND


def test_operator_actions_change_state_and_are_audited(
    operator_client: Client, alice: UserCreds
) -> None:
    platform = alice.platform.platform
    minted = issue_token(platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    connection = BrokerConnection.objects.create(
        end_user=alice.user, broker="paper", environment="paper", trading_requested=True
    )
    admin_action(operator_client, "platform", "halt_trading", platform.pk)
    admin_action(operator_client, "brokerconnection", "grant_trading", connection.pk)
    admin_action(operator_client, "enduser", "deactivate", alice.user.pk)
    admin_action(
        operator_client, "issuedtoken", "revoke", IssuedToken.objects.get(jti=minted.jti).pk
    )
    platform.refresh_from_db()
    connection.refresh_from_db()
    alice.user.refresh_from_db()
    assert platform.trading_halted
    assert connection.trading_enabled
    assert not alice.user.is_active
    assert IssuedToken.objects.get(jti=minted.jti).is_revoked
    by_operator = AuditEvent.objects.filter(actor_kind="operator", actor_id="ops")
    assert set(by_operator.values_list("action", flat=True)) == {
        "platform.trading_halted",
        "connection.trading_granted",
        "user.deactivated",
        "token.revoked",
    }
    admin_action(operator_client, "platform", "resume_trading", platform.pk)
    admin_action(operator_client, "brokerconnection", "revoke_trading", connection.pk)
    admin_action(operator_client, "enduser", "reactivate", alice.user.pk)
    admin_action(operator_client, "platform", "deactivate", platform.pk)
    assert by_operator.count() == 8


def test_adding_a_platform_in_the_admin_shows_the_secret_once(operator_client: Client) -> None:
    response = operator_client.post(
        "/admin/controlplane/platform/add/",
        {"name": "Hooli", "allowed_scopes": "read"},
        follow=True,
    )
    assert response.status_code == HTTPStatus.OK
    platform = Platform.objects.get(name="Hooli")
    messages = [str(m) for m in response.context["messages"]]
    assert any("tp_cs_" in m for m in messages)
    assert (
        AuditEvent.objects.filter(
            action="platform.created", platform=platform.client_id, actor_id="ops"
        ).count()
        == 1
    )


def test_redis_url_is_really_used() -> None:
    client = get_redis()
    assert isinstance(client, redis.Redis)
    assert client.ping()
