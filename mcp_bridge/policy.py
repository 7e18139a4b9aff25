"""Around every tool call: the scope check, refusal of unknown arguments, the rate limits,
and one audit row per call whatever its outcome. Tools a token's scopes do not allow are
also left out of its tools/list."""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult
from mcp_types.methods import is_input_required

from audit.events import Actor, record
from controlplane.accesstokens import Principal
from controlplane.models import Scope
from controlplane.ratelimit import Bucket, LimiterUnavailable, get_limiter
from mcp_bridge.auth import current_principal, run_in_db_thread
from mcp_bridge.errors import error_code, tool_error
from mcp_bridge.tools import TOOLS

TOOL_CALL_ACTION = "tool.call"


async def policy_middleware(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    if ctx.method == "tools/list":
        return _only_allowed_tools(await call_next(ctx), current_principal())
    if ctx.method != "tools/call" or ctx.request_id is None:
        return await call_next(ctx)
    params = ctx.params or {}
    name = params.get("name")
    spec = TOOLS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise MCPError(INVALID_PARAMS, f"unknown tool {name!r}; tools/list names the tools")
    principal = current_principal()
    arguments = params.get("arguments") or {}
    started = time.perf_counter()
    result = await _guarded_call(ctx, call_next, principal, name, arguments)  # type: ignore[arg-type]
    latency_ms = (time.perf_counter() - started) * 1000
    if not isinstance(result, CallToolResult):
        outcome = "input_required"
    else:
        outcome = error_code(_text(result)) if result.is_error else "ok"
    await run_in_db_thread(
        record,
        TOOL_CALL_ACTION,
        actor=Actor.end_user(principal.user_id),
        outcome=outcome,
        platform=principal.client_id,
        end_user=principal.user_id,
        jti=principal.jti,
        target=f"tool:{name}",
        detail={"tool": name, "arguments": arguments if isinstance(arguments, dict) else {}},
        latency_ms=latency_ms,
    )
    return result


async def _guarded_call(
    ctx: ServerRequestContext[Any, Any],
    call_next: CallNext,
    principal: Principal,
    name: str,
    arguments: Any,
) -> HandlerResult:
    spec = TOOLS[name]
    if spec.scope not in principal.scopes:
        return tool_error("forbidden_scope", f"{name} needs the {spec.scope!r} scope")
    if not isinstance(arguments, dict):
        return tool_error("invalid_argument", "arguments must be an object")
    unknown = sorted(set(arguments) - set(spec.parameters))
    if unknown:
        return tool_error(
            "invalid_argument",
            f"unknown argument(s) {', '.join(unknown)}; {name} takes "
            f"{', '.join(spec.parameters) or 'no arguments'}",
        )
    limited = await sync_to_async(_consume_rate_limit, thread_sensitive=False)(
        principal, spec.scope
    )
    if limited is not None:
        return limited
    raw = await call_next(ctx)
    if is_input_required(raw):
        return raw  # the person is being asked; the client retries the same call
    result = raw if isinstance(raw, CallToolResult) else CallToolResult.model_validate(raw)
    if result.is_error:
        result = _normalized_error(name, _text(result))
    return result


def _consume_rate_limit(principal: Principal, scope: str) -> CallToolResult | None:
    """One atomic check-and-consume of the user's budgets (all tools; trade tools)."""
    key = f"tp:rl:{{{principal.client_id}:{principal.user_id}}}"
    per_minute = principal.rate_limit_per_minute or settings.TRADEPLANE_RATE_LIMIT_PER_MINUTE
    buckets = [Bucket(f"{key}:all", per_minute, 60)]
    if scope == Scope.TRADE:
        trade_per_minute = (
            principal.trade_rate_limit_per_minute or settings.TRADEPLANE_TRADE_RATE_LIMIT_PER_MINUTE
        )
        buckets.append(Bucket(f"{key}:trade", trade_per_minute, 60))
    try:
        decision = get_limiter().hit(buckets)
    except LimiterUnavailable:
        if scope == Scope.TRADE or settings.TRADEPLANE_READ_LIMIT_FAIL_CLOSED:
            return tool_error(
                "broker_unavailable",
                "the rate limiter is unreachable, so calls are refused for safety",
            )
        return None
    if decision.allowed:
        return None
    return tool_error(
        "rate_limited", f"too many calls; retry after {decision.retry_after:g} seconds"
    )


def _normalized_error(name: str, text: str) -> CallToolResult:
    """The SDK prefixes errors with 'Error executing tool <name>: '; ours already carry a
    code, and argument validation failures become invalid_argument."""
    prefix = f"Error executing tool {name}"
    body = text[len(prefix) :].lstrip(": ") if text.startswith(prefix) else text
    if error_code(body) != "error":
        return CallToolResult(content=[{"type": "text", "text": body}], is_error=True)  # type: ignore[list-item]
    if "validation error" in body:
        lines = [line.strip() for line in body.splitlines() if "errors.pydantic.dev" not in line]
        return tool_error("invalid_argument", " ".join(filter(None, lines)))
    return tool_error("internal_error", f"{name} failed")


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _only_allowed_tools(result: HandlerResult, principal: Principal) -> HandlerResult:
    if isinstance(result, dict) and "tools" in result:
        allowed = {n for n, spec in TOOLS.items() if spec.scope in principal.scopes}
        return {**result, "tools": [t for t in result["tools"] if t.get("name") in allowed]}
    return result
