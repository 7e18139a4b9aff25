"""The ASGI application served by uvicorn: /mcp goes to the MCP server, everything else to
Django. Django cannot run the ASGI lifespan the MCP session manager needs, so this router
owns it (and starts the manager lazily under servers that send no lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from django.core.asgi import get_asgi_application
from starlette.types import Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

django_app = get_asgi_application()  # sets Django up before the MCP bridge imports models

from mcp_bridge.http import McpHttpGuard  # noqa: E402
from mcp_bridge.server import build_app, build_server  # noqa: E402

mcp_server = build_server()
mcp_app = McpHttpGuard(build_app(mcp_server))

_stack: contextlib.AsyncExitStack | None = None
_lazy_lock = asyncio.Lock()
_lazy_task: asyncio.Task[None] | None = None


def _is_mcp(path: str) -> bool:
    return path == "/mcp" or path.startswith("/mcp/")


async def _lifespan(receive: Receive, send: Send) -> None:
    global _stack
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                _stack = contextlib.AsyncExitStack()
                await _stack.enter_async_context(mcp_server.session_manager.run())
            except Exception as exc:  # startup must report failure, not hang
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _stack is not None:
                await _stack.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _ensure_session_manager() -> None:
    """For servers that never send lifespan: run the manager in a task on this loop."""
    global _lazy_task
    if _stack is not None or _lazy_task is not None:
        return
    async with _lazy_lock:
        if _lazy_task is not None:
            return
        ready = asyncio.Event()

        async def hold() -> None:
            async with mcp_server.session_manager.run():
                ready.set()
                await asyncio.Event().wait()

        _lazy_task = asyncio.get_running_loop().create_task(hold())
        await ready.wait()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and _is_mcp(scope.get("path", "")):
        await _ensure_session_manager()
        await mcp_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)  # type: ignore[arg-type]
