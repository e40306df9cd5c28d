"""Exact money: integer nano-units, never a float.

The ledger stores nanos in a Postgres ``bigint``; every amount that enters is checked
against that range here, so that no sum can overflow in the database.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, Inexact, InvalidOperation, localcontext

NANOS_PER_UNIT = 1_000_000_000
# A bigint holds ±9.22e18 nanos. Single amounts are capped at a trillion units' worth of nanos
# below that, and running sums are checked against INT64_MAX, so a sum never wraps.
INT64_MAX = 2**63 - 1
MAX_AMOUNT_NANOS = 10**18  # one billion units per single amount or limit
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"[+-]?([0-9]+)(?:\.([0-9]+))?")


class MoneyError(ValueError):
    """A malformed amount; ``reason`` is the stable error reason."""

    def __init__(self, message: str, reason: str = "INVALID_FIELD") -> None:
        super().__init__(message)
        self.reason = reason


def check_currency(code: str) -> str:
    if not _CURRENCY.fullmatch(code):
        raise MoneyError(f"currency must be an ISO 4217 code of three capital letters, got {code!r}")
    return code


def from_parts(units: int, nanos: int) -> int:
    """``google.type.Money`` units + nanos to total nanos, with the message's own rules."""
    if not -999_999_999 <= nanos <= 999_999_999:
        raise MoneyError(f"nanos must be within ±999,999,999, got {nanos}")
    if (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
        raise MoneyError("units and nanos must have the same sign")
    total = units * NANOS_PER_UNIT + nanos
    if abs(total) > MAX_AMOUNT_NANOS:
        raise MoneyError(f"amount exceeds the largest allowed ({format_nanos(MAX_AMOUNT_NANOS)})", "AMOUNT_OVERFLOW")
    return total


def to_parts(total: int) -> tuple[int, int]:
    """Total nanos to (units, nanos) with the same sign, as ``google.type.Money`` wants."""
    sign = -1 if total < 0 else 1
    units, nanos = divmod(abs(total), NANOS_PER_UNIT)
    return sign * units, sign * nanos


def parse_decimal(text: str) -> int:
    """A decimal string such as ``"12.50"`` to nanos; more than nine decimals is an error."""
    match = _DECIMAL.fullmatch(text.strip())
    if not match:
        raise MoneyError(f"not a decimal amount: {text!r}")
    whole, frac = match.group(1).lstrip("0") or "0", match.group(2) or ""
    if len(frac) > 9:
        raise MoneyError(f"more precision than a nano (1e-9): {text!r}")
    if len(whole) > 19:
        raise MoneyError(f"amount too large: {text!r}", "AMOUNT_OVERFLOW")
    total = int(whole) * NANOS_PER_UNIT + int(frac.ljust(9, "0"))
    if text.strip().startswith("-"):
        total = -total
    if abs(total) > MAX_AMOUNT_NANOS:
        raise MoneyError(f"amount exceeds the largest allowed: {text!r}", "AMOUNT_OVERFLOW")
    return total


def format_nanos(total: int, min_decimals: int = 2) -> str:
    """Nanos to the shortest exact decimal string with at least ``min_decimals`` decimals."""
    sign = "-" if total < 0 else ""
    units, nanos = divmod(abs(total), NANOS_PER_UNIT)
    frac = f"{nanos:09d}".rstrip("0").ljust(min_decimals, "0")
    return f"{sign}{units}.{frac}" if frac else f"{sign}{units}"


def ceil_nanos(amount: Decimal) -> int:
    """A Decimal amount in units to nanos, rounded up (costs computed from prices round up)."""
    if not amount.is_finite():
        raise MoneyError(f"not a finite amount: {amount}")
    # Exact: the default 28-digit context would round before the ceiling.
    with localcontext() as ctx:
        ctx.prec = len(amount.as_tuple().digits) + 30
        ctx.traps[Inexact] = True
        try:
            scaled = (amount * NANOS_PER_UNIT).to_integral_value(rounding=ROUND_CEILING)
        except InvalidOperation as exc:
            raise MoneyError(f"not a usable amount: {amount}") from exc
    return int(scaled)


def checked_sum(*terms: int) -> int:
    """A sum that must still fit a bigint column."""
    total = sum(terms)
    if not -INT64_MAX <= total <= INT64_MAX:
        raise MoneyError("the sum would overflow the ledger's exact range", "AMOUNT_OVERFLOW")
    return total


def ratio_reached(part: int, whole: int, ppm: int) -> bool:
    """Exactly: part >= ppm/1e6 of whole (a zero whole is reached by anything positive or zero)."""
    return part * 1_000_000 >= ppm * whole
