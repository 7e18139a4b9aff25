"""POST /auth/tokens/user: the happy path and every refusal."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client, override_settings

from audit.models import AuditEvent
from controlplane.accesstokens import verify_access_token
from controlplane.models import IssuedToken
from controlplane.services.platforms import set_platform_active
from controlplane.services.users import delete_end_user, set_end_user_active
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user

MINT = "/auth/tokens/user"


def mint(client: Client, headers: dict[str, str], scopes: object = ("read",)) -> Any:
    body = {"scopes": list(scopes)} if isinstance(scopes, tuple | list) else scopes
    return client.post(MINT, body, content_type="application/json", headers=headers)


def test_it_mints_a_token_for_exactly_the_scopes_asked(client: Client, alice: UserCreds) -> None:
    response = mint(client, alice.mint_headers(), ("read", "trade"))
    assert response.status_code == HTTPStatus.OK
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scopes"] == ["read", "trade"]
    principal = verify_access_token(body["access_token"])
    assert principal.user_id == "alice"
    assert principal.client_id == alice.platform.client_id
    assert principal.scopes == {"read", "trade"}
    issued = IssuedToken.objects.get(jti=principal.jti)
    assert issued.end_user == alice.user
    event = AuditEvent.objects.get(action="token.minted", jti=principal.jti)
    assert (event.actor_kind, event.actor_id) == ("platform", alice.platform.client_id)
    assert event.end_user == "alice"
    assert body["access_token"] not in str(event.detail)


def test_it_mints_a_read_only_token(client: Client, alice: UserCreds) -> None:
    response = mint(client, alice.mint_headers(), ("read",))
    assert response.status_code == HTTPStatus.OK
    assert verify_access_token(response.json()["access_token"]).scopes == {"read"}


def test_each_token_has_its_own_jti(client: Client, alice: UserCreds) -> None:
    tokens = {mint(client, alice.mint_headers()).json()["access_token"] for _ in range(5)}
    assert len({verify_access_token(t).jti for t in tokens}) == 5


def _bad_credentials(alice: UserCreds, bob: UserCreds, mallory: UserCreds) -> dict[str, dict]:
    good = alice.mint_headers()
    return {
        "unknown platform": {**good, "client-id": "tp_ci_doesnotexist"},
        "wrong client secret": {**good, "client-secret": alice.platform.client_secret + "x"},
        "unknown user": {**good, "user-id": "carol"},
        "wrong user secret": {**good, "user-secret": bob.user_secret},
        "user of another platform": {
            **good,
            "user-id": "mallory",
            "user-secret": mallory.user_secret,
        },
        "other platform's secret": {**good, "client-secret": mallory.platform.client_secret},
        "missing client id": {k: v for k, v in good.items() if k != "client-id"},
        "missing user secret": {k: v for k, v in good.items() if k != "user-secret"},
        "empty everything": {
            "client-id": "",
            "client-secret": "",
            "user-id": "",
            "user-secret": "",
        },
    }


def test_every_bad_credential_gets_the_same_401(
    client: Client, alice: UserCreds, bob: UserCreds, mallory: UserCreds
) -> None:
    bodies = set()
    for case, headers in _bad_credentials(alice, bob, mallory).items():
        response = mint(client, headers)
        assert response.status_code == HTTPStatus.UNAUTHORIZED, case
        bodies.add(response.content)
    assert bodies == {
        b'{"error": {"code": "invalid_credentials", "message": "The credentials are not valid."}}'
    }
    assert not IssuedToken.objects.exists()


def test_inactive_user_and_platform_get_the_same_401(client: Client, alice: UserCreds) -> None:
    reference = mint(client, {**alice.mint_headers(), "user-secret": "wrong"}).content
    set_end_user_active(alice.user, False, actor=OPERATOR)
    response = mint(client, alice.mint_headers())
    assert (response.status_code, response.content) == (HTTPStatus.UNAUTHORIZED, reference)
    set_end_user_active(alice.user, True, actor=OPERATOR)
    set_platform_active(alice.platform.platform, False, actor=OPERATOR)
    response = mint(client, alice.mint_headers())
    assert (response.status_code, response.content) == (HTTPStatus.UNAUTHORIZED, reference)


def test_a_deleted_user_cannot_mint(client: Client, alice: UserCreds) -> None:
    delete_end_user(alice.user, actor=OPERATOR)
    assert mint(client, alice.mint_headers()).status_code == HTTPStatus.UNAUTHORIZED


def test_failed_attempts_are_audited(client: Client, alice: UserCreds) -> None:
    mint(client, {**alice.mint_headers(), "user-secret": "canary-guess-123"})
    event = AuditEvent.objects.get(action="token.mint_refused")
    assert event.outcome == "invalid_credentials"
    assert event.platform == alice.platform.client_id
    assert event.end_user == "alice"
    assert "canary-guess-123" not in str(event.canonical_fields())


@pytest.mark.parametrize(
    ("platform_scopes", "user_scopes", "asked", "refused"),
    [
        ({"read"}, None, ("read", "trade"), "trade"),
        ({"read", "trade"}, {"read"}, ("read", "trade"), "trade"),
        ({"read", "trade"}, {"read"}, ("trade",), "trade"),
        ({"trade"}, None, ("read",), "read"),
    ],
)
def test_a_scope_not_allowed_is_refused_by_name(
    client: Client, db: None, platform_scopes, user_scopes, asked, refused
) -> None:
    platform = make_platform("Narrow", frozenset(platform_scopes))
    user = make_user(platform, "u1", frozenset(user_scopes) if user_scopes else None)
    response = mint(client, user.mint_headers(), asked)
    assert response.status_code == HTTPStatus.FORBIDDEN
    error = response.json()["error"]
    assert error["code"] == "forbidden_scope"
    assert repr(refused) in error["message"]
    assert not IssuedToken.objects.exists()
    assert AuditEvent.objects.filter(
        action="token.mint_refused", outcome="forbidden_scope"
    ).exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"scopes": []},
        {"scopes": ["admin"]},
        {"scopes": "read"},
        {"scopes": ["read", "trade", "read"]},
        {"scopes": ["read"], "extra": 1},
        {"scopes": [None]},
    ],
)
def test_a_malformed_body_is_422(client: Client, alice: UserCreds, body: dict) -> None:
    response = mint(client, alice.mint_headers(), body)
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["error"]["code"] == "invalid_argument"
    assert not IssuedToken.objects.exists()


def test_a_body_that_is_not_json_is_422(client: Client, alice: UserCreds) -> None:
    response = client.post(
        MINT, "scopes=read", content_type="application/json", headers=alice.mint_headers()
    )
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


@override_settings(TRADEPLANE_AUTH_FAILURE_LIMIT=3, TRADEPLANE_AUTH_FAILURE_WINDOW_SECONDS=60)
def test_failures_are_throttled_per_client_id(
    client: Client, alice: UserCreds, mallory: UserCreds
) -> None:
    bad = {**alice.mint_headers(), "user-secret": "wrong"}
    for _ in range(3):
        assert mint(client, bad).status_code == HTTPStatus.UNAUTHORIZED
    # Even the right credentials wait now: the guesser must not learn when it hits.
    response = mint(client, alice.mint_headers())
    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["error"]["code"] == "rate_limited"
    assert (
        AuditEvent.objects.filter(
            action="auth.throttled", platform=alice.platform.client_id
        ).count()
        == 1
    )
    # Another platform is not affected.
    assert mint(client, mallory.mint_headers()).status_code == HTTPStatus.OK


@override_settings(TRADEPLANE_AUTH_FAILURE_LIMIT=2)
def test_successes_do_not_count_towards_the_throttle(client: Client, alice: UserCreds) -> None:
    for _ in range(5):
        assert mint(client, alice.mint_headers()).status_code == HTTPStatus.OK


def test_the_throttle_key_always_has_a_ttl(client: Client, alice: UserCreds) -> None:
    from controlplane.redis_client import get_redis

    mint(client, {**alice.mint_headers(), "user-secret": "wrong"})
    redis = get_redis()
    assert redis is not None
    keys = list(redis.scan_iter("tp:authfail:*"))
    assert keys
    assert all(redis.pttl(key) > 0 for key in keys)


def test_the_openapi_document_describes_the_endpoint(client: Client, db: None) -> None:
    schema = client.get("/api/openapi.json").json()
    assert "/auth/tokens/user" in schema["paths"]
    assert client.get("/api/docs").status_code == HTTPStatus.OK
