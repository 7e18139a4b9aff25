"""Real MCP servers for the tests: uvicorn processes serving controlplane.asgi against the
test database and Redis, driven by the SDK's Streamable HTTP client or raw HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from django.conf import settings
from django.test import override_settings
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from controlplane.models import ALL_SCOPES
from controlplane.services.connections import create_connection
from controlplane.services.tokens import issue_token
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class McpServer:
    base_url: str
    public_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_server(
    tmp_dir: Path, *, public_url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[McpServer]:
    """One uvicorn process on a free port, sharing this process's database, Redis and keys."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    database = settings.DATABASES["default"]
    child_env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL or "",
        "TRADEPLANE_VAR_DIR": str(settings.VAR_DIR),
        "TRADEPLANE_PUBLIC_URL": public_url or base_url,
        "TRADEPLANE_DB_POOL_SIZE": "10",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    log = tmp_dir / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "controlplane.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = McpServer(base_url, public_url or base_url, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MCP server did not start:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def call(
    url: str,
    token: str,
    work: Callable[[Client], Awaitable[Any]],
    *,
    mode: str = "auto",
    elicitation_callback: Any = None,
) -> Any:
    """Run `work` with a connected SDK client (mode "auto" = 2026-07-28, "legacy" = 2025-11-25);
    an `elicitation_callback` makes the client declare elicitation and answer with it."""

    async def main() -> Any:
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60)
            ) as http,
            Client(
                streamable_http_client(url, http_client=http),
                mode=mode,
                elicitation_callback=elicitation_callback,
            ) as client,
        ):
            return await work(client)

    return asyncio.run(main())


def call_tool(
    url: str, token: str, name: str, arguments: dict[str, Any], *, mode: str = "auto"
) -> Any:
    async def work(client: Client) -> Any:
        return await client.call_tool(name, arguments)

    return call(url, token, work, mode=mode)


def raw_post(url: str, headers: dict[str, str], body: Any = None, **kwargs: Any) -> httpx.Response:
    """A raw 2026-07-28 style tools/call, for checks below the SDK client."""
    payload = (
        body
        if body is not None
        else {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "whoami",
                "arguments": {},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    )
    base = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "whoami",
    }
    kwargs.setdefault("timeout", 10)
    return httpx.post(url, headers={**base, **headers}, json=payload, **kwargs)


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# ---- Fixtures and helpers shared by the MCP test modules -------------------------------------


@pytest.fixture(scope="module")
def server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[McpServer]:
    with run_server(tmp_path_factory.mktemp("mcp")) as running:
        yield running


@pytest.fixture
def trader(committed_db: None) -> UserCreds:
    user = make_user(make_platform("Acme"), "alice")
    create_connection(
        user.user, broker="paper", environment=None, trading_requested=True, actor=OPERATOR
    )
    return user


def token_for(server: McpServer, user: UserCreds, scopes: frozenset[str] = ALL_SCOPES) -> str:
    with override_settings(
        TRADEPLANE_PUBLIC_URL=server.public_url, TRADEPLANE_MCP_URL=f"{server.public_url}/mcp"
    ):
        return issue_token(user.platform.platform, user.user, scopes, actor=OPERATOR).access_token


def first_account(server: McpServer, token: str) -> str:
    result = call_tool(server.mcp_url, token, "list_accounts", {})
    assert not result.is_error, text_of(result)
    account_id: str = result.structured_content["accounts"][0]["account_id"]
    return account_id
