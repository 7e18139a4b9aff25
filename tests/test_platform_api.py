"""The platform API under /v1 and token revocation under /auth/tokens/revoke."""

from __future__ import annotations

import uuid
from http import HTTPStatus

import pytest
from django.test import Client

from audit.models import AuditEvent
from controlplane.accesstokens import TokenRejected, verify_access_token
from controlplane.credentials import digest_secret
from controlplane.models import BrokerConnection, EndUser, IssuedToken
from controlplane.services.tokens import issue_token
from tests.conftest import OPERATOR, PlatformCreds, UserCreds


def post(client: Client, path: str, body: object, headers: dict[str, str]):
    return client.post(path, body, content_type="application/json", headers=headers)


def test_it_creates_a_user_and_shows_its_secret_once(client: Client, acme: PlatformCreds) -> None:
    response = post(client, "/v1/users", {"user_id": "carol", "scopes": ["read"]}, acme.headers())
    assert response.status_code == HTTPStatus.CREATED
    body = response.json()
    assert body["user_id"] == "carol"
    assert body["scopes"] == ["read"]
    assert body["user_secret"].startswith("tp_us_")
    user = EndUser.objects.get(user_id="carol")
    assert user.user_secret_digest == digest_secret(body["user_secret"])
    assert body["user_secret"] not in str(EndUser.objects.values())
    # Never again: GET shows no secret.
    again = client.get("/v1/users/carol", headers=acme.headers()).json()
    assert "user_secret" not in again
    assert AuditEvent.objects.filter(action="user.created", end_user="carol").count() == 1


def test_it_generates_a_user_id_when_none_is_given(client: Client, acme: PlatformCreds) -> None:
    response = post(client, "/v1/users", {}, acme.headers())
    assert response.status_code == HTTPStatus.CREATED
    assert response.json()["user_id"].startswith("user_")
    assert response.json()["scopes"] == ["read", "trade"]


def test_a_duplicate_user_id_is_409(client: Client, alice: UserCreds) -> None:
    response = post(client, "/v1/users", {"user_id": "alice"}, alice.platform.headers())
    assert response.status_code == HTTPStatus.CONFLICT
    assert EndUser.objects.filter(user_id="alice").count() == 1


def test_the_same_user_id_may_exist_on_two_platforms(
    client: Client, alice: UserCreds, globex: PlatformCreds
) -> None:
    response = post(client, "/v1/users", {"user_id": "alice"}, globex.headers())
    assert response.status_code == HTTPStatus.CREATED


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": ""},
        {"user_id": "a b"},
        {"user_id": "x" * 129},
        {"user_id": "-lead"},
        {"scopes": ["root"]},
        {"scopes": []},
        {"nickname": "x"},
    ],
)
def test_a_bad_user_body_is_422_and_creates_nothing(
    client: Client, acme: PlatformCreds, body: dict
) -> None:
    response = post(client, "/v1/users", body, acme.headers())
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["error"]["code"] == "invalid_argument"
    assert not EndUser.objects.exists()


def test_platform_credentials_are_required(client: Client, acme: PlatformCreds) -> None:
    for headers in ({}, {"client-id": acme.client_id}, {**acme.headers(), "client-secret": "x"}):
        response = post(client, "/v1/users", {}, headers)
        assert response.status_code == HTTPStatus.UNAUTHORIZED
        assert response.json()["error"]["code"] == "invalid_credentials"
    assert not EndUser.objects.exists()


def test_a_platform_cannot_see_another_platforms_user(
    client: Client, alice: UserCreds, globex: PlatformCreds
) -> None:
    assert client.get("/v1/users/alice", headers=globex.headers()).status_code == 404
    assert client.delete("/v1/users/alice", headers=globex.headers()).status_code == 404
    assert EndUser.objects.get(pk=alice.user.pk).is_active


def test_deleting_a_user_revokes_its_tokens_and_frees_the_id(
    client: Client, alice: UserCreds
) -> None:
    minted = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    response = client.delete("/v1/users/alice", headers=alice.platform.headers())
    assert response.status_code == HTTPStatus.NO_CONTENT
    with pytest.raises(TokenRejected):
        verify_access_token(minted.access_token)
    assert IssuedToken.objects.get(jti=minted.jti).is_revoked
    assert client.get("/v1/users/alice", headers=alice.platform.headers()).status_code == 404
    again = post(client, "/v1/users", {"user_id": "alice"}, alice.platform.headers())
    assert again.status_code == HTTPStatus.CREATED
    assert AuditEvent.objects.filter(action="user.deleted", end_user="alice").count() == 1


def test_an_unknown_broker_is_422_naming_the_available_ones(
    client: Client, alice: UserCreds
) -> None:
    response = post(
        client, "/v1/users/alice/connections", {"broker": "robinhood"}, alice.platform.headers()
    )
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    message = response.json()["error"]["message"]
    assert "robinhood" in message
    assert "available brokers" in message
    assert not BrokerConnection.objects.exists()


def test_connections_are_listed_per_user_and_deleted(client: Client, alice: UserCreds) -> None:
    connection = BrokerConnection.objects.create(
        end_user=alice.user,
        broker="paper",
        environment="paper",
        status=BrokerConnection.Status.ACTIVE,
    )
    connection.set_credentials({"token": "secret-oauth-token"})
    connection.save()
    listed = client.get("/v1/users/alice/connections", headers=alice.platform.headers()).json()
    assert [c["id"] for c in listed] == [str(connection.pk)]
    assert "secret-oauth-token" not in str(listed)
    response = client.delete(f"/v1/connections/{connection.pk}", headers=alice.platform.headers())
    assert response.status_code == HTTPStatus.NO_CONTENT
    connection.refresh_from_db()
    assert connection.status == BrokerConnection.Status.REVOKED
    assert connection.credentials_ciphertext == ""
    assert client.get("/v1/users/alice/connections", headers=alice.platform.headers()).json() == []
    assert AuditEvent.objects.filter(action="connection.deleted").count() == 1


def test_another_platforms_connection_looks_missing(
    client: Client, alice: UserCreds, globex: PlatformCreds
) -> None:
    connection = BrokerConnection.objects.create(
        end_user=alice.user, broker="paper", environment="paper"
    )
    for connection_id in (connection.pk, uuid.uuid4()):
        response = client.delete(f"/v1/connections/{connection_id}", headers=globex.headers())
        assert response.status_code == HTTPStatus.NOT_FOUND
    connection.refresh_from_db()
    assert connection.status != BrokerConnection.Status.REVOKED


def test_a_platform_revokes_its_token_by_jti(client: Client, alice: UserCreds) -> None:
    minted = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    response = post(client, "/auth/tokens/revoke", {"jti": minted.jti}, alice.platform.headers())
    assert response.status_code == HTTPStatus.OK
    assert response.json()["revoked"] is True
    with pytest.raises(TokenRejected):
        verify_access_token(minted.access_token)
    # Idempotent, and audited once.
    assert (
        post(
            client, "/auth/tokens/revoke", {"jti": minted.jti}, alice.platform.headers()
        ).status_code
        == HTTPStatus.OK
    )
    assert AuditEvent.objects.filter(action="token.revoked", jti=minted.jti).count() == 1


def test_a_platform_revokes_its_token_by_value(client: Client, alice: UserCreds) -> None:
    minted = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    response = post(
        client, "/auth/tokens/revoke", {"token": minted.access_token}, alice.platform.headers()
    )
    assert response.status_code == HTTPStatus.OK
    assert IssuedToken.objects.get(jti=minted.jti).is_revoked


def test_a_platform_cannot_revoke_another_platforms_token(
    client: Client, alice: UserCreds, mallory: UserCreds
) -> None:
    minted = issue_token(alice.platform.platform, alice.user, frozenset({"read"}), actor=OPERATOR)
    for body in ({"jti": minted.jti}, {"token": minted.access_token}, {"jti": "nope" * 5}):
        response = post(client, "/auth/tokens/revoke", body, mallory.platform.headers())
        assert response.status_code == HTTPStatus.NOT_FOUND
    assert verify_access_token(minted.access_token).jti == minted.jti


@pytest.mark.parametrize("body", [{}, {"jti": "a", "token": "b"}, {"jti": "a", "x": 1}])
def test_revoke_needs_exactly_one_of_jti_or_token(
    client: Client, acme: PlatformCreds, body: dict
) -> None:
    response = post(client, "/auth/tokens/revoke", body, acme.headers())
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


def test_a_paper_connection_is_active_at_once_with_its_accounts(
    client: Client, alice: UserCreds
) -> None:
    response = post(
        client,
        "/v1/users/alice/connections",
        {"broker": "paper", "trading_requested": True},
        alice.platform.headers(),
    )
    assert response.status_code == HTTPStatus.CREATED
    body = response.json()
    assert (body["broker"], body["environment"], body["status"]) == ("paper", "paper", "active")
    assert (body["trading_requested"], body["trading_enabled"]) == (True, False)
    connection = BrokerConnection.objects.get(pk=body["id"])
    from brokers.registry import get_adapter

    accounts = get_adapter(connection).list_accounts()
    assert accounts
    event = AuditEvent.objects.get(action="connection.created")
    assert event.detail["broker"] == "paper"


def test_the_paper_broker_has_no_sandbox(client: Client, alice: UserCreds) -> None:
    response = post(
        client,
        "/v1/users/alice/connections",
        {"broker": "paper", "environment": "sandbox"},
        alice.platform.headers(),
    )
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert not BrokerConnection.objects.exists()
