"""Liveness and readiness probes, and the public metadata of the MCP resource."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from controlplane.redis_client import get_redis


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving; says nothing about its dependencies."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and (if configured) Redis answer."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    client = get_redis()
    if client is not None:
        try:
            client.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


@require_GET
def protected_resource_metadata(request: HttpRequest) -> JsonResponse:
    """RFC 9728 metadata for /mcp, at the root and the path-suffixed well-known URL."""
    return JsonResponse(
        {
            "resource": settings.TRADEPLANE_MCP_URL,
            "authorization_servers": [settings.TRADEPLANE_PUBLIC_URL],
            "scopes_supported": ["read", "trade"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Tradeplane",
            "resource_documentation": f"{settings.TRADEPLANE_PUBLIC_URL}/api/docs",
        }
    )
