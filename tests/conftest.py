"""Shared fixtures. Tests run against real PostgreSQL (a fresh test database each run) and
real Redis (the REDIS_URL database, flushed before every test).

Personas: the platform `acme` with end users `alice` and `bob`; the platform `globex`
with `mallory`, who must never see acme's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.db import connection
from django.test import Client

from audit.events import Actor
from controlplane.models import ALL_SCOPES, EndUser, Platform
from controlplane.redis_client import get_redis
from controlplane.services.platforms import create_platform
from controlplane.services.users import create_end_user
from tests.fake_etrade.fixtures import fake_etrade  # noqa: F401

OPERATOR = Actor.operator("test-operator")


@dataclass
class PlatformCreds:
    platform: Platform
    client_id: str
    client_secret: str

    def headers(self) -> dict[str, str]:
        return {"client-id": self.client_id, "client-secret": self.client_secret}


@dataclass
class UserCreds:
    platform: PlatformCreds
    user: EndUser
    user_id: str
    user_secret: str

    def mint_headers(self) -> dict[str, str]:
        return {**self.platform.headers(), "user-id": self.user_id, "user-secret": self.user_secret}


def make_platform(name: str, scopes: frozenset[str] = ALL_SCOPES) -> PlatformCreds:
    created = create_platform(name, scopes=scopes, actor=OPERATOR)
    return PlatformCreds(created.platform, created.platform.client_id, created.client_secret)


def make_user(
    platform: PlatformCreds, user_id: str, scopes: frozenset[str] | None = None
) -> UserCreds:
    created = create_end_user(platform.platform, user_id=user_id, scopes=scopes, actor=OPERATOR)
    return UserCreds(platform, created.end_user, user_id, created.user_secret)


@pytest.fixture(autouse=True)
def _flush_redis() -> None:
    client = get_redis()
    assert client is not None, "tests run with REDIS_URL set"
    client.flushdb()


@pytest.fixture
def acme(db: None) -> PlatformCreds:
    return make_platform("Acme")


@pytest.fixture
def globex(db: None) -> PlatformCreds:
    return make_platform("Globex")


@pytest.fixture
def alice(acme: PlatformCreds) -> UserCreds:
    return make_user(acme, "alice")


@pytest.fixture
def bob(acme: PlatformCreds) -> UserCreds:
    return make_user(acme, "bob")


@pytest.fixture
def mallory(globex: PlatformCreds) -> UserCreds:
    return make_user(globex, "mallory")


@pytest.fixture
def client() -> Client:
    return Client()


def allow_audit_flush() -> None:
    """Let Django's end-of-test flush empty the append-only audit table.

    The triggers refuse TRUNCATE for everyone; a superuser session in `replica` mode skips
    triggers. Only the test harness does this, on its own connection, after the test."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")


@pytest.fixture
def _fresh_connection_after(django_db_blocker: pytest.FixtureRequest) -> Iterator[None]:
    """Set up before, so torn down after, the flush: the next test gets a new connection."""
    yield
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        # Pooled connections keep session settings: put the triggers back on first.
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")
        connection.close()


@pytest.fixture
def committed_db(_fresh_connection_after: None, transactional_db: None) -> Iterator[None]:
    """A database whose writes really commit (for threads, processes and servers)."""
    yield
    allow_audit_flush()


# The real-MCP-server fixtures, for every test module that asks for them.
from tests.mcp_harness import server, trader  # noqa: E402, F401
