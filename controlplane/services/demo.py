"""The demo that `make run` and `manage.py quickstart` set up: one platform, one end user
with a paper connection that may trade, and everything an MCP client needs to connect."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from audit.events import Actor
from controlplane.models import ALL_SCOPES, BrokerConnection, EndUser, Platform, Watchlist
from controlplane.services.connections import create_connection, set_trading_enabled
from controlplane.services.platforms import create_platform, regenerate_client_secret
from controlplane.services.tokens import issue_token
from controlplane.services.users import create_end_user, regenerate_user_secret

DEMO_CLIENT_ID = "tp_ci_demo"
DEMO_USER_ID = "demo-user"
SERVER_NAME = "tradeplane"
DEMO_WATCHLIST = ["SPY", "QQQ", "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META"]


@dataclass(frozen=True)
class Demo:
    mcp_url: str
    access_token: str
    client_id: str
    client_secret: str
    user_id: str
    user_secret: str
    connection_id: str


def set_up_demo(*, actor: Actor) -> Demo:
    """Idempotent: creates what is missing, then issues fresh secrets and a fresh token
    (the old secrets are not stored anywhere, so they cannot be shown again)."""
    with transaction.atomic():
        platform = Platform.objects.select_for_update().filter(client_id=DEMO_CLIENT_ID).first()
        if platform is None:
            platform = create_platform(
                "Demo platform", scopes=ALL_SCOPES, actor=actor, client_id=DEMO_CLIENT_ID
            ).platform
        user = EndUser.objects.live().filter(platform=platform, user_id=DEMO_USER_ID).first()
        if user is None:
            user = create_end_user(platform, user_id=DEMO_USER_ID, actor=actor).end_user
    connection = (
        BrokerConnection.objects.filter(end_user=user, broker="paper")
        .exclude(status=BrokerConnection.Status.REVOKED)
        .first()
    )
    if connection is None:
        connection = create_connection(
            user, broker="paper", environment=None, trading_requested=True, actor=actor
        )
    set_trading_enabled(connection, True, actor=actor)
    Watchlist.objects.get_or_create(
        end_user=user, name="default", defaults={"symbols": DEMO_WATCHLIST}
    )
    client_secret = regenerate_client_secret(platform, actor=actor)
    user_secret = regenerate_user_secret(user, actor=actor)
    minted = issue_token(platform, user, ALL_SCOPES, actor=actor)
    return Demo(
        mcp_url=settings.TRADEPLANE_MCP_URL,
        access_token=minted.access_token,
        client_id=platform.client_id,
        client_secret=client_secret,
        user_id=user.user_id,
        user_secret=user_secret,
        connection_id=str(connection.pk),
    )


def client_configs(mcp_url: str, token: str) -> dict[str, str]:
    """Ready-to-paste configuration for the common MCP clients."""
    header = f"Authorization: Bearer {token}"
    headers = {"Authorization": f"Bearer {token}"}
    remote_args = ["-y", "mcp-remote", mcp_url, "--header", header]
    return {
        "claude_code": (
            f"claude mcp add --transport http {SERVER_NAME} {mcp_url} "
            f"--header {shlex.quote(header)}"
        ),
        "cursor": json.dumps(
            {"mcpServers": {SERVER_NAME: {"url": mcp_url, "headers": headers}}}, indent=2
        ),
        "windsurf": json.dumps(
            {"mcpServers": {SERVER_NAME: {"serverUrl": mcp_url, "headers": headers}}}, indent=2
        ),
        "vscode": json.dumps(
            {"servers": {SERVER_NAME: {"type": "http", "url": mcp_url, "headers": headers}}},
            indent=2,
        ),
        "codex_cli": (
            f'[mcp_servers.{SERVER_NAME}]\ncommand = "npx"\nargs = {json.dumps(remote_args)}'
        ),
    }
