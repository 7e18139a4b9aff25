"""The person confirms a trade in their own MCP client's dialog (form elicitation).

A client that declares form elicitation is shown the trade's summary with a yes/no
question; "accept" counts as the person's confirmation and goes through
`trading.confirm_trade(elicited=True)`, the same atomic pending -> submitting transition as
the `confirm_trade` tool, with every server-side check run again. A decline ends the trade.
Clients without elicitation keep the two-step flow.

How the question travels depends on the protocol era:
- 2026-07-28 clients, in every server mode: the first round creates the trade and answers
  `InputRequiredResult` with the confirmation id in `request_state` (sealed by the SDK and
  bound to the caller); the client's retry carries the answer.
- Earlier clients: a push `elicitation/create` in the middle of the call, which needs a
  stateful session with a back-channel; without one the two-step flow stands.

Elicitation is a convenience for the person, never the authorization of the trade: risk,
permission, halt and expiry are decided by the service whichever way the yes arrives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from mcp.server.elicitation import AcceptedElicitation, render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
)
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field, ValidationError

from controlplane.accesstokens import Principal
from controlplane.errors import ControlPlaneError, InvalidArgument
from controlplane.models import PendingTrade
from controlplane.services import trading
from mcp_bridge.auth import current_principal, run_in_db_thread
from mcp_bridge.errors import tool_error

# The first protocol revision that carries elicitation inside InputRequiredResult.
MULTI_ROUND_TRIP_VERSION = "2026-07-28"
QUESTION_KEY = "confirm_trade"

Propose = Callable[[Principal, bool], PendingTrade]
Render = Callable[[PendingTrade], CallToolResult]


class ConfirmTrade(BaseModel):
    confirm: bool = Field(title="Send this trade?", description="Yes sends it to the broker now.")


def uses_multi_round_trip(ctx: Context[Any, Any]) -> bool:
    version = ctx.protocol_version
    return version is not None and is_version_at_least(version, MULTI_ROUND_TRIP_VERSION)


def can_elicit(ctx: Context[Any, Any]) -> bool:
    """Whether this call can put a form dialog in front of the person."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    # A bare `elicitation: {}` (from before modes existed) means form; url-only does not.
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return False
    if uses_multi_round_trip(ctx):
        return True
    push_possible = not (settings.TRADEPLANE_MCP_STATELESS or settings.TRADEPLANE_MCP_JSON_RESPONSE)
    return push_possible


def question(trade: PendingTrade) -> str:
    return f"Send this trade to the broker now?\n{trade.summary}"


async def propose_and_ask(
    ctx: Context[Any, Any],
    propose: Propose,
    is_same_call: Callable[[PendingTrade], bool],
    render: Render,
) -> CallToolResult | InputRequiredResult:
    """Run `propose` (create or look up the trade); when it leaves a trade pending and the
    client can show a dialog, ask the person and settle the trade by their answer."""
    principal = current_principal()
    if ctx.request_state is not None:
        return await _settle_retry(ctx, principal, is_same_call, render)
    elicit = can_elicit(ctx)

    def proposed() -> tuple[PendingTrade, CallToolResult]:
        trade = propose(principal, elicit)
        return trade, render(trade)  # rendering may load related rows: in this thread

    try:
        trade, rendered = await run_in_db_thread(proposed)
    except ControlPlaneError as exc:
        return tool_error(exc.code, exc.message)
    if not elicit or trade.status != PendingTrade.Status.PENDING:
        return rendered
    if uses_multi_round_trip(ctx):
        form = ElicitRequestFormParams(
            message=question(trade),
            requested_schema=render_elicitation_schema(ConfirmTrade),
        )
        return InputRequiredResult(
            input_requests={QUESTION_KEY: ElicitRequest(params=form)},
            request_state=json.dumps({"confirmation_id": trade.confirmation_id}),
        )
    try:
        outcome = await ctx.elicit(question(trade), ConfirmTrade)
    except MCPError:
        # No back-channel after all, or the client failed the request: nothing was decided,
        # so the trade stays pending for the two-step flow.
        return rendered
    accepted = isinstance(outcome, AcceptedElicitation) and outcome.data.confirm
    return await _settle(principal, trade.confirmation_id, accepted, render)


async def _settle_retry(
    ctx: Context[Any, Any],
    principal: Principal,
    is_same_call: Callable[[PendingTrade], bool],
    render: Render,
) -> CallToolResult:
    """The 2026-07-28 retry: the sealed state names the trade, the responses the answer."""
    try:
        confirmation_id = str(json.loads(ctx.request_state or "")["confirmation_id"])
        answer = (ctx.input_responses or {}).get(QUESTION_KEY)
        if not isinstance(answer, ElicitResult):
            raise InvalidArgument("the answer to the confirmation question is missing")
        accepted = (
            answer.action == "accept" and ConfirmTrade.model_validate(answer.content or {}).confirm
        )
        trade = await run_in_db_thread(trading.own_trade, principal, confirmation_id)
        if not is_same_call(trade):
            raise InvalidArgument("the retried call does not match the trade it confirms")
    except (ValueError, KeyError, ValidationError) as exc:
        return tool_error("invalid_argument", f"malformed confirmation answer: {exc}")
    except ControlPlaneError as exc:
        return tool_error(exc.code, exc.message)
    return await _settle(principal, confirmation_id, accepted, render)


async def _settle(
    principal: Principal, confirmation_id: str, accepted: bool, render: Render
) -> CallToolResult:
    def settle() -> CallToolResult:
        if accepted:
            return render(trading.confirm_trade(principal, confirmation_id, elicited=True))
        return render(trading.decline_trade(principal, confirmation_id))

    try:
        # Shielded: once submission starts it runs to a recorded outcome even if the
        # client goes away.
        return await asyncio.shield(run_in_db_thread(settle))
    except ControlPlaneError as exc:
        return tool_error(exc.code, exc.message)
