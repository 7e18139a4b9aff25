"""E*TRADE's refusals turned into BrokerErrors.

Only a few E*TRADE error codes are documented (account key codes, 101 for a place that lost
its preview, 5001 for an order that cannot be cancelled). For insufficient funds, market
closed, invalid symbol, unknown order and a reused clientOrderId no source gave a code or
text, so those are recognised by words in the message (UNCONFIRMED: adjust the patterns
once real responses are seen). Whatever the mapping, E*TRADE's own message is kept in
`broker_message`.
"""

from __future__ import annotations

import html
import json
import re
from decimal import Decimal
from enum import StrEnum
from typing import Any

import requests

from brokers.base import BrokerError, BrokerErrorCode


class Operation(StrEnum):
    """What a call was for; it decides what an otherwise unexplained refusal means."""

    OAUTH = "oauth"
    ACCOUNTS = "accounts"  # account-scoped reads
    MARKET = "market"
    ORDER_LOOKUP = "order_lookup"  # order detail and cancel: the order id must exist
    ORDER_ENTRY = "order_entry"  # preview and place


# Documented codes (reference §6.3).
ACCOUNT_CODES = frozenset({100, 102, 253, 7001})
PREVIEW_LINK_LOST_CODE = 101
NOT_CANCELLABLE_CODES = frozenset({5001})
# "Not enough available shares": 1037 per one source, 167 per another (UNCONFIRMED).
SHARES_UNAVAILABLE_CODES = frozenset({1037, 167})

RATE_LIMIT_TEXT = "exceeded the rate limit"
OAUTH_PROBLEM = re.compile(r"oauth_problem=([A-Za-z_]+)")
# Token problems a new login (or a renew, for an idle token) cures.
TOKEN_PROBLEMS = frozenset(
    {"token_expired", "token_rejected", "token_revoked", "token_used", "permission_denied"}
)

# UNCONFIRMED wording: matched case-insensitively against E*TRADE's message.
MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], BrokerErrorCode], ...] = (
    (re.compile(r"enough available shares", re.I), BrokerErrorCode.REJECTED),
    (
        re.compile(r"insufficient|buying power|not enough (cash|funds)|exceeds your avail", re.I),
        BrokerErrorCode.INSUFFICIENT_FUNDS,
    ),
    (
        re.compile(r"market (is )?(currently )?(closed|not open)|outside (of )?market hours", re.I),
        BrokerErrorCode.MARKET_CLOSED,
    ),
    (
        re.compile(r"invalid symbol|unknown symbol|symbol \S+ (is )?not (found|valid)", re.I),
        BrokerErrorCode.INVALID_SYMBOL,
    ),
    (re.compile(r"account key", re.I), BrokerErrorCode.ACCOUNT_NOT_FOUND),
)
ORDER_MISSING = re.compile(r"order (number|id)|no such order|order \S* ?not found", re.I)
MAX_MESSAGE_LENGTH = 300


def parse_json(text: str) -> Any:
    """E*TRADE's JSON with every fractional number as a Decimal, never a float."""
    return json.loads(text, parse_float=Decimal, parse_constant=_not_a_number)


def _not_a_number(name: str) -> Any:
    # NaN and Infinity would otherwise arrive as floats.
    raise ValueError(f"E*TRADE sent {name} where a number belongs")


def is_rate_limited(response: requests.Response) -> bool:
    # Documented: HTTP 400 with an HTML page. Some clients also see 429.
    return response.status_code == 429 or (
        response.status_code == 400 and RATE_LIMIT_TEXT in response.text.lower()
    )


def error_code_and_message(response: requests.Response) -> tuple[int | None, str]:
    """E*TRADE's `Error{code, message}` if the body has one, else its text without markup."""
    try:
        body = parse_json(response.text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("Error"), dict):
        error = body["Error"]
        raw_code = str(error.get("code", ""))  # `code` may be missing
        message = str(error.get("message") or "").strip()
        if message:
            return (int(raw_code) if raw_code.isdigit() else None), message
    text = html.unescape(re.sub(r"<[^>]+>", " ", response.text))
    text = " ".join(text.split())
    return None, (text[:MAX_MESSAGE_LENGTH] or f"HTTP {response.status_code}")


def refusal(response: requests.Response, operation: Operation) -> BrokerError:
    """The error for a definitive non-success answer (not 5xx, not a lost response)."""
    code, message = error_code_and_message(response)
    described = f"{message} [E*TRADE {code}]" if code is not None else message
    if is_rate_limited(response):
        return BrokerError(BrokerErrorCode.RATE_LIMITED, described)
    if response.status_code == 401:
        return auth_refusal(message)
    if response.status_code == 404:
        return BrokerError(_not_found(operation), described)
    return BrokerError(_classify(code, message, operation), described)


def auth_refusal(message: str) -> BrokerError:
    """A 401. Token problems need a renew or a new login; the rest is our configuration."""
    found = OAUTH_PROBLEM.search(message)
    problem = found.group(1) if found else ""
    if not problem or problem in TOKEN_PROBLEMS:
        # Unknown wording ("Invalid access token used", "Token is invalid, or has expired")
        # is a token problem too: a login is the only cure we can offer.
        return BrokerError(
            BrokerErrorCode.AUTH_EXPIRED, f"E*TRADE refused the access token: {message}"
        )
    transient = problem in ("nonce_used", "timestamp_refused")
    return BrokerError(
        BrokerErrorCode.UNAVAILABLE,
        f"E*TRADE refused the request signature ({message}); check the consumer key and "
        "secret and the server clock",
        transient=transient,
    )


def _classify(code: int | None, message: str, operation: Operation) -> BrokerErrorCode:
    if code in ACCOUNT_CODES:
        return BrokerErrorCode.ACCOUNT_NOT_FOUND
    if code in NOT_CANCELLABLE_CODES:
        return BrokerErrorCode.ORDER_NOT_CANCELLABLE
    if code in SHARES_UNAVAILABLE_CODES or code == PREVIEW_LINK_LOST_CODE:
        return BrokerErrorCode.REJECTED
    for pattern, mapped in MESSAGE_PATTERNS:
        if pattern.search(message):
            return mapped
    if operation == Operation.ORDER_LOOKUP and ORDER_MISSING.search(message):
        return BrokerErrorCode.ORDER_NOT_FOUND
    return BrokerErrorCode.REJECTED


def _not_found(operation: Operation) -> BrokerErrorCode:
    if operation == Operation.ORDER_LOOKUP:
        return BrokerErrorCode.ORDER_NOT_FOUND
    if operation == Operation.ACCOUNTS:
        return BrokerErrorCode.ACCOUNT_NOT_FOUND
    return BrokerErrorCode.REJECTED
