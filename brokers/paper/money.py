"""Rounding rules for the paper broker's amounts, in one place.

Cash moves by whole shares times cent prices, so it is exact at two places. Averages (cost,
fill price) are kept to six places in the database and reported to four; realized P&L is
derived from them and reported to four, so `(price - average) * quantity` checks exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")
SIX_PLACES = Decimal("0.000001")
WHOLE = Decimal(1)


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def four_places(value: Decimal) -> Decimal:
    return value.quantize(FOUR_PLACES, rounding=ROUND_HALF_EVEN)


def six_places(value: Decimal) -> Decimal:
    return value.quantize(SIX_PLACES, rounding=ROUND_HALF_EVEN)


def whole(value: Decimal) -> Decimal:
    """Quantities are whole shares; the database keeps four places."""
    return value.quantize(WHOLE, rounding=ROUND_HALF_EVEN)


def plain(value: Decimal) -> str:
    """A number for messages: `10`, not `10.0000` or `1E+1`."""
    return format(value.normalize(), "f")


def dollars(value: Decimal) -> str:
    return f"${cents(value):,.2f}"
