"""The simulated price of every symbol at every instant: deterministic, so tests can pin the
clock and get the same quote, yet moving, so resting orders have something to wait for.

The log price is the reference price's plus a sum of noise at 16 time scales, from one
minute to about three weeks (each twice the last). At each scale an independent standard
normal value sits on every bucket edge, seeded by a stable hash of (symbol, scale, bucket),
and the path interpolates linearly between edges, so it is continuous and costs 32 hashes
however far from anything else it is asked for. Scale k is weighted by sqrt(width_k): over
a span shorter than the widest scale the variance of a change then grows about linearly with
the span, as in a random walk, reaching the symbol's daily volatility over a day; beyond the
widest scale it stops growing, so prices wander around the reference instead of drifting
away from it over weeks.

Floats are used only to draw the noise; every returned amount is a Decimal.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from statistics import NormalDist

from brokers.base import Quote
from brokers.paper import market_hours
from brokers.paper.money import CENT, cents
from brokers.paper.universe import Instrument, instrument

STEP_SECONDS = 60
SCALES = 16  # 1 minute to 2**15 minutes (about 23 days)
SECONDS_PER_DAY = 86_400
# Weights are sqrt(width_k / (VARIANCE_PER_UNIT * day)). Scales narrower than a span each
# add about their squared weight to the variance of a change over it, wider ones a share
# falling with (span / width)**2; both sums are geometric, so the total is proportional to
# the span. The constant was measured (over many symbols and start times) so that a day's
# change has unit variance: one day's volatility.
VARIANCE_PER_UNIT = 3.8
_WEIGHTS = tuple(
    math.sqrt(STEP_SECONDS * 2**k / (VARIANCE_PER_UNIT * SECONDS_PER_DAY)) for k in range(SCALES)
)
_STANDARD_NORMAL = NormalDist()

# Spread in basis points of the price (half on each side), at least a cent a side.
STOCK_SPREAD_BPS = Decimal(4)
ETF_SPREAD_BPS = Decimal(2)

# How a day's volume accumulates over the US Eastern clock: (minute of day, share of volume).
# A trickle in extended hours, the bulk in the regular session.
_VOLUME_CURVE = ((4 * 60, 0.0), (9 * 60 + 30, 0.04), (16 * 60, 0.96), (20 * 60, 1.0))


def _unit_hash(*parts: object) -> float:
    """A stable value in (0, 1) for the given parts; unlike hash(), the same in every process."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


@lru_cache(maxsize=65_536)
def _edge_noise(symbol: str, scale: int, bucket: int) -> float:
    return _STANDARD_NORMAL.inv_cdf(_unit_hash("price", symbol, scale, bucket))


def _log_offset(symbol: str, at: datetime) -> float:
    """The path's departure from the reference, in standard deviations of a day's change."""
    seconds = at.timestamp()
    total = 0.0
    for scale, weight in enumerate(_WEIGHTS):
        position = seconds / (STEP_SECONDS * 2**scale)
        bucket = math.floor(position)
        left = _edge_noise(symbol, scale, bucket)
        right = _edge_noise(symbol, scale, bucket + 1)
        total += weight * (left + (right - left) * (position - bucket))
    return total


def last_price(item: Instrument, at: datetime) -> Decimal:
    offset = _log_offset(item.symbol, at) * float(item.daily_volatility)
    factor = Decimal(str(round(math.exp(offset), 8)))
    return max(CENT, cents(item.reference_price * factor))


def _half_spread(item: Instrument, last: Decimal) -> Decimal:
    bps = ETF_SPREAD_BPS if item.is_etf else STOCK_SPREAD_BPS
    return max(CENT, cents(last * bps / 2 / 10_000))


def _day_volume(item: Instrument, at: datetime) -> int:
    """Shares traded so far in the US Eastern day of `at`: deterministic and never falling."""
    local = at.astimezone(market_hours.EASTERN)
    # A typical day for the symbol (1 to 30 million shares), and this day's share of it.
    typical = 10 ** (6 + 1.5 * _unit_hash("volume", item.symbol))
    today = 0.6 + 0.8 * _unit_hash("volume", item.symbol, local.date().isoformat())
    minute = local.hour * 60 + local.minute + local.second / 60
    return int(typical * today * _elapsed_share(minute))


def _elapsed_share(minute: float) -> float:
    if minute <= _VOLUME_CURVE[0][0]:
        return 0.0
    for (start, low), (end, high) in pairwise(_VOLUME_CURVE):
        if minute < end:
            return low + (high - low) * (minute - start) / (end - start)
    return 1.0


def touch_depth(symbol: str, at: datetime) -> Decimal:
    """Shares shown at the best bid and at the best ask during the minute of `at` (100 to
    2,000): how much a limit order can take at once."""
    minute = math.floor(at.timestamp() / 60)
    return Decimal(100 * (1 + int(_unit_hash("depth", symbol, minute) * 20)))


def quote(item: Instrument, at: datetime) -> Quote:
    last = last_price(item, at)
    half_spread = _half_spread(item, last)
    previous = last_price(item, market_hours.previous_close(at))
    change = last - previous
    return Quote(
        symbol=item.symbol,
        last=last,
        bid=max(CENT, last - half_spread),
        ask=last + half_spread,
        change=change,
        change_pct=cents(change * 100 / previous),
        volume=_day_volume(item, at),
        time=at,
        name=item.name,
    )


class PriceBook:
    """Quotes at one instant, each computed once: what an evaluation or a valuation reads."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self._quotes: dict[str, Quote] = {}

    def quote(self, symbol: str) -> Quote:
        if symbol not in self._quotes:
            self._quotes[symbol] = quote(instrument(symbol), self.at)
        return self._quotes[symbol]
