"""Tool errors as the agent reads them: `<code>: <what happened>. <what to do next>`."""

from __future__ import annotations

from mcp.types import CallToolResult, TextContent

NEXT_STEP = {
    "unauthorized": "The token is no longer valid; the platform must mint a new one.",
    "forbidden_scope": "This token's scopes do not allow it; ask the platform for a token "
    "with the needed scope.",
    "invalid_argument": "Correct the arguments and call again.",
    "not_found": "Check the id: list_accounts and list_orders give valid ones.",
    "rate_limited": "Wait that long before the next call.",
    "broker_error": "The broker refused; tell the person its reason. Do not retry unchanged.",
    "broker_unavailable": "The broker is unreachable or busy; try again in a minute.",
    "trading_disabled": "Trading is not enabled for this connection; an operator must grant it.",
    "trading_halted": "Trading is halted by an operator; no orders can be placed now.",
    "elicitation_required": "This account only trades after the person confirms in the "
    "client's own confirmation dialog; use an MCP client that supports elicitation.",
    "internal_error": "Something failed on the server; try again, and report it if it persists.",
}


def tool_error(code: str, message: str) -> CallToolResult:
    text = f"{code}: {message.rstrip('.')}."
    if code in NEXT_STEP:
        text += f" {NEXT_STEP[code]}"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def error_code(text: str) -> str:
    """The code a tool error text starts with (every error we produce starts with one)."""
    head, sep, _ = text.partition(":")
    return head if sep and head.replace("_", "").isalpha() and head.islower() else "error"
