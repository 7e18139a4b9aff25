"""HTTP rules in front of the MCP app that the SDK leaves to us."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

from django.conf import settings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_PARAMETERS = frozenset({"access_token", "token", "bearer", "authorization"})


async def _refuse(
    send: Send,
    status: int,
    error: str,
    description: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _challenge(value: bytes, sent_credentials: bool) -> bytes:
    """Name the scopes; and with no credentials at all, no error code (RFC 6750 §3.1)."""
    if not sent_credentials:
        metadata = re.search(rb'resource_metadata="[^"]*"', value)
        value = b"Bearer " + (metadata.group(0) if metadata else b"")
    if b"scope=" not in value:
        value += b', scope="read trade"'
    return value


class McpHttpGuard:
    """Refuses tokens in the URL, refuses oversized bodies before reading them, and names
    the scopes in every 401 challenge (the SDK's challenge has no `scope`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if TOKEN_PARAMETERS & {name.lower() for name in query}:
            await _refuse(
                send,
                400,
                "invalid_request",
                "Send the access token in the Authorization header, never in the URL.",
            )
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            await _refuse(
                send,
                413,
                "request_too_large",
                f"Bodies are limited to {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
            )
            return

        sent_credentials = b"authorization" in headers

        async def send_with_scope(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                message["headers"] = [
                    (name, _challenge(value, sent_credentials))
                    if name.lower() == b"www-authenticate"
                    else (name, value)
                    for name, value in message["headers"]
                ]
            await send(message)

        await self.app(scope, receive, send_with_scope)
