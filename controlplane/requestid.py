"""A request id for every request: taken from X-Request-ID when sane, else generated.

It is carried in a context variable so logs and audit rows written anywhere during the
request (views, services, MCP tools) name the same id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

current_request_id: ContextVar[str] = ContextVar("current_request_id", default="")

_INCOMING = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def new_request_id() -> str:
    return secrets.token_hex(12)


def accept_request_id(incoming: str | None) -> str:
    if incoming and _INCOMING.match(incoming):
        return incoming
    return new_request_id()


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = accept_request_id(request.headers.get("X-Request-ID"))
        # Not reset afterwards: Django logs the response after the middleware returns, and
        # each request already runs in a context of its own.
        current_request_id.set(request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
