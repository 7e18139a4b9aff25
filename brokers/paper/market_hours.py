"""When the paper market trades.

PAPER_MARKET_HOURS="always" keeps it open around the clock (the demo works at night);
"regular" follows the NYSE: 9:30-16:00 US Eastern, Monday to Friday, with extended hours
4:00-9:30 and 16:00-20:00 for orders that ask for them. Exchange holidays are not modelled.
The setting is read on every call, so it can be changed (and overridden in tests) at will.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from django.conf import settings

from brokers.base import BrokerError, BrokerErrorCode

EASTERN = ZoneInfo("America/New_York")
PRE_MARKET_OPEN = time(4, 0)
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)
AFTER_HOURS_CLOSE = time(20, 0)


class Session(StrEnum):
    CLOSED = "closed"
    PRE_MARKET = "pre_market"
    REGULAR = "regular"
    AFTER_HOURS = "after_hours"

    @property
    def is_extended(self) -> bool:
        return self in (Session.PRE_MARKET, Session.AFTER_HOURS)


def follows_regular_hours() -> bool:
    return bool(settings.PAPER_MARKET_HOURS == "regular")


def session_at(at: datetime) -> Session:
    if not follows_regular_hours():
        return Session.REGULAR
    local = at.astimezone(EASTERN)
    if local.weekday() >= 5:
        return Session.CLOSED
    clock = local.time()
    if PRE_MARKET_OPEN <= clock < REGULAR_OPEN:
        return Session.PRE_MARKET
    if REGULAR_OPEN <= clock < REGULAR_CLOSE:
        return Session.REGULAR
    if REGULAR_CLOSE <= clock < AFTER_HOURS_CLOSE:
        return Session.AFTER_HOURS
    return Session.CLOSED


def trades_at(at: datetime, *, extended_hours: bool) -> bool:
    """Whether an order (with or without extended hours) may execute at `at`."""
    session = session_at(at)
    return session == Session.REGULAR or (extended_hours and session.is_extended)


def ensure_open(at: datetime, *, extended_hours: bool) -> None:
    if trades_at(at, extended_hours=extended_hours):
        return
    if session_at(at).is_extended:
        message = (
            "the market is in extended hours; set extended_hours to trade before 9:30 or "
            "after 16:00 US Eastern"
        )
    else:
        message = (
            "the market is closed; it trades 9:30-16:00 US Eastern, Monday to Friday "
            "(4:00-20:00 with extended hours)"
        )
    raise BrokerError(BrokerErrorCode.MARKET_CLOSED, message)


def day_order_expiry(created_at: datetime, *, extended_hours: bool) -> datetime:
    """When a DAY order placed at `created_at` expires.

    Under regular hours: at the close of its US Eastern trading day, 16:00, or 20:00 for an
    extended-hours order. Under "always" the market never closes, so a DAY order lasts to
    the end of its UTC day instead: a fixed, timezone-free boundary anyone can predict.
    """
    if not follows_regular_hours():
        next_day = created_at.astimezone(UTC).date() + timedelta(days=1)
        return datetime.combine(next_day, time(0), tzinfo=UTC)
    local = created_at.astimezone(EASTERN)
    close = AFTER_HOURS_CLOSE if extended_hours else REGULAR_CLOSE
    return datetime.combine(local.date(), close, tzinfo=EASTERN)


def previous_close(at: datetime) -> datetime:
    """The last weekday 16:00 US Eastern strictly before `at`: what "change" is measured from.

    Aware datetime arithmetic in one zone is wall-clock arithmetic, so stepping back a day
    keeps 16:00 across daylight-saving changes."""
    local = at.astimezone(EASTERN)
    close = datetime.combine(local.date(), REGULAR_CLOSE, tzinfo=EASTERN)
    if close >= local:
        close -= timedelta(days=1)
    while close.weekday() >= 5:
        close -= timedelta(days=1)
    return close
