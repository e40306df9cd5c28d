"""Unit tests of ``agentbudget_server.money``: exact integer nanos, never a float."""

from __future__ import annotations

from decimal import Decimal

import pytest
from agentbudget_server.money import (
    INT64_MAX,
    MAX_AMOUNT_NANOS,
    NANOS_PER_UNIT,
    MoneyError,
    ceil_nanos,
    check_currency,
    checked_sum,
    format_nanos,
    from_parts,
    parse_decimal,
    ratio_reached,
    to_parts,
)
from hypothesis import given
from hypothesis import strategies as st

amounts = st.integers(min_value=-MAX_AMOUNT_NANOS, max_value=MAX_AMOUNT_NANOS)


def test_limits_are_consistent() -> None:
    """A single amount is one billion units, far enough below a bigint that sums of a few fit."""
    assert NANOS_PER_UNIT == 10**9
    assert MAX_AMOUNT_NANOS == 10**9 * NANOS_PER_UNIT
    assert INT64_MAX == 9_223_372_036_854_775_807
    assert MAX_AMOUNT_NANOS * 9 < INT64_MAX


def test_money_error_is_a_value_error_with_default_reason() -> None:
    """MoneyError is a ValueError, and a malformed amount's reason defaults to INVALID_FIELD."""
    err = MoneyError("bad")
    assert isinstance(err, ValueError)
    assert err.reason == "INVALID_FIELD"
    assert str(err) == "bad"


# --- from_parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "nanos", "total"),
    [
        (0, 0, 0),
        (12, 500_000_000, 12_500_000_000),
        (5, 0, 5_000_000_000),
        (0, 1, 1),
        (0, 999_999_999, 999_999_999),
        (0, -1, -1),
        (-3, -250_000_000, -3_250_000_000),
        (-7, 0, -7_000_000_000),
        (0, -999_999_999, -999_999_999),
    ],
)
def test_from_parts_combines_units_and_nanos(units: int, nanos: int, total: int) -> None:
    """units * 1e9 + nanos, for positive, negative and zero amounts."""
    assert from_parts(units, nanos) == total


@pytest.mark.parametrize("nanos", [1_000_000_000, -1_000_000_000, 10**12, -(10**12)])
def test_from_parts_rejects_nanos_out_of_range(nanos: int) -> None:
    """google.type.Money: nanos must be within ±999,999,999."""
    with pytest.raises(MoneyError) as exc:
        from_parts(0, nanos)
    assert exc.value.reason == "INVALID_FIELD"


@pytest.mark.parametrize(("units", "nanos"), [(1, -1), (-1, 1), (5, -500_000_000), (-5, 500_000_000)])
def test_from_parts_rejects_mixed_signs(units: int, nanos: int) -> None:
    """google.type.Money: a non-zero units and nanos must have the same sign."""
    with pytest.raises(MoneyError) as exc:
        from_parts(units, nanos)
    assert exc.value.reason == "INVALID_FIELD"


def test_from_parts_accepts_the_largest_amount_exactly() -> None:
    """MAX_AMOUNT_NANOS itself (either sign) is allowed: the bound is inclusive."""
    assert from_parts(10**9, 0) == MAX_AMOUNT_NANOS
    assert from_parts(-(10**9), 0) == -MAX_AMOUNT_NANOS
    assert from_parts(10**9 - 1, 999_999_999) == MAX_AMOUNT_NANOS - 1


@pytest.mark.parametrize(
    ("units", "nanos"),
    [(10**9, 1), (-(10**9), -1), (10**9 + 1, 0), (2**63, 0), (-(2**63), 0), (10**30, 999_999_999)],
)
def test_from_parts_rejects_amounts_over_the_maximum(units: int, nanos: int) -> None:
    """One nano past MAX_AMOUNT_NANOS (either sign) is AMOUNT_OVERFLOW."""
    with pytest.raises(MoneyError) as exc:
        from_parts(units, nanos)
    assert exc.value.reason == "AMOUNT_OVERFLOW"


# --- to_parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "parts"),
    [
        (0, (0, 0)),
        (1, (0, 1)),
        (-1, (0, -1)),
        (12_500_000_000, (12, 500_000_000)),
        (-12_500_000_000, (-12, -500_000_000)),
        (-3_000_000_000, (-3, 0)),
        (MAX_AMOUNT_NANOS, (10**9, 0)),
        (-MAX_AMOUNT_NANOS, (-(10**9), 0)),
    ],
)
def test_to_parts_splits_with_a_common_sign(total: int, parts: tuple[int, int]) -> None:
    """Units and nanos carry the same sign (no floor division toward -inf)."""
    assert to_parts(total) == parts


@given(amounts)
def test_to_parts_round_trips_through_from_parts(total: int) -> None:
    """Every allowed amount survives to_parts → from_parts, and the parts obey Money's rules."""
    units, nanos = to_parts(total)
    assert -999_999_999 <= nanos <= 999_999_999
    assert not (units > 0 > nanos or units < 0 < nanos)
    assert from_parts(units, nanos) == total


# --- parse_decimal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "total"),
    [
        ("0", 0),
        ("1", 1_000_000_000),
        ("12.50", 12_500_000_000),
        ("12.5", 12_500_000_000),
        ("0.000000001", 1),
        ("0.123456789", 123_456_789),
        ("-0.5", -500_000_000),
        ("-0", 0),
        ("+3", 3_000_000_000),
        ("  7.25\n", 7_250_000_000),
        ("007.10", 7_100_000_000),
        ("1000000000", MAX_AMOUNT_NANOS),
        ("-1000000000.000000000", -MAX_AMOUNT_NANOS),
    ],
)
def test_parse_decimal_exact(text: str, total: int) -> None:
    """Decimal strings map to exact nanos; surrounding whitespace is ignored."""
    assert parse_decimal(text) == total


@pytest.mark.parametrize("text", ["0.0000000001", "1.0000000000", "-2.1234567891", "3.14159265358979"])
def test_parse_decimal_rejects_more_than_nine_decimals(text: str) -> None:
    """More than nine decimals is finer than a nano: rejected, even if the extra digits are zeros."""
    with pytest.raises(MoneyError) as exc:
        parse_decimal(text)
    assert exc.value.reason == "INVALID_FIELD"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "1.",
        ".5",
        "-.5",
        "1e3",
        "1E-3",
        "1,5",
        "1.2.3",
        "--1",
        "+-1",
        "- 1",
        "1 000",
        "1_000",
        "0x10",
        "NaN",
        "Infinity",
        "$5",
        "5 USD",
    ],
)
def test_parse_decimal_rejects_malformed_text(text: str) -> None:
    """Only an optional sign, digits and an optional '.digits' part are a decimal amount."""
    with pytest.raises(MoneyError) as exc:
        parse_decimal(text)
    assert exc.value.reason == "INVALID_FIELD"


@pytest.mark.parametrize(
    "text",
    [
        "1000000000.000000001",
        "-1000000000.000000001",
        "1000000001",
        "9999999999999999999",  # 19 digits: parsed, then over the maximum
        "99999999999999999999",  # 20 digits: rejected before conversion
        "9" * 5000,  # no giant int conversion (Python caps int(str) at 4300 digits)
        "-" + "9" * 5000,
    ],
)
def test_parse_decimal_rejects_overflow(text: str) -> None:
    """Anything above MAX_AMOUNT_NANOS in magnitude is AMOUNT_OVERFLOW."""
    with pytest.raises(MoneyError) as exc:
        parse_decimal(text)
    assert exc.value.reason == "AMOUNT_OVERFLOW"


def test_parse_decimal_leading_zeros_are_not_an_overflow() -> None:
    """'00000000000000000001.5' is 1.5: leading zeros do not make an amount large."""
    assert parse_decimal("00000000000000000001.5") == 1_500_000_000


@pytest.mark.parametrize("text", ["١٢.٥", "１２", "۳", "1.٥"])
def test_parse_decimal_accepts_only_ascii_digits(text: str) -> None:
    """A decimal amount is ASCII 0-9 only; other scripts' digits are malformed input."""
    with pytest.raises(MoneyError):
        parse_decimal(text)


@given(amounts)
def test_parse_decimal_reads_back_format_nanos(total: int) -> None:
    """format_nanos writes exactly what parse_decimal reads: the two are inverse on all amounts."""
    assert parse_decimal(format_nanos(total)) == total
    assert parse_decimal(format_nanos(total, min_decimals=0)) == total


# --- format_nanos ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "min_decimals", "text"),
    [
        (0, 2, "0.00"),
        (0, 0, "0"),
        (12_500_000_000, 2, "12.50"),
        (12_345_000_000, 2, "12.345"),
        (1, 2, "0.000000001"),
        (-1, 2, "-0.000000001"),
        (-500_000_000, 2, "-0.50"),
        (-12_345_000_000, 2, "-12.345"),
        (5_000_000_000, 0, "5"),
        (5_500_000_000, 0, "5.5"),
        (5_000_000_000, 4, "5.0000"),
        (123_456_789_012, 2, "123.456789012"),
        (MAX_AMOUNT_NANOS, 2, "1000000000.00"),
    ],
)
def test_format_nanos_shortest_exact(total: int, min_decimals: int, text: str) -> None:
    """The shortest exact decimal, padded to min_decimals, with a sign only when negative."""
    assert format_nanos(total, min_decimals) == text


def test_format_nanos_default_is_two_decimals() -> None:
    """Amounts read like currency by default ("10.00", not "10")."""
    assert format_nanos(10 * NANOS_PER_UNIT) == "10.00"


# --- ceil_nanos ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "total"),
    [
        (Decimal(0), 0),
        (Decimal("1.5"), 1_500_000_000),
        (Decimal("0.000000001"), 1),
        (Decimal("0.0000000001"), 1),
        (Decimal("0.0000000010000001"), 2),
        (Decimal("0.0000000011"), 2),
        (Decimal("2.0000000000"), 2_000_000_000),
        (Decimal("-0.0000000001"), 0),
        (Decimal("-0.0000000019"), -1),
        (Decimal("-1.0000000001"), -1_000_000_000),
        (Decimal("-1.5"), -1_500_000_000),
    ],
)
def test_ceil_nanos_rounds_up_to_the_nano(amount: Decimal, total: int) -> None:
    """Costs round toward +infinity to the nano (a ceiling, also for negative amounts)."""
    result = ceil_nanos(amount)
    assert result == total
    assert type(result) is int


def test_ceil_nanos_of_typical_prices() -> None:
    """Price per token times tokens: exact when representable, one nano up when not."""
    assert ceil_nanos(Decimal("0.000003") * 1234) == 3_702_000
    assert ceil_nanos(Decimal("0.0000025") * 3) == 7_500
    assert ceil_nanos(Decimal("0.00000000015") * 7) == 2  # 1.05 nanos
    assert ceil_nanos(Decimal(1) / Decimal(3)) == 333_333_334


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=12, allow_nan=False))
def test_ceil_nanos_is_the_least_nano_not_below(amount: Decimal) -> None:
    """n = ceil_nanos(x) is the smallest integer with n >= x * 1e9 (checked in exact arithmetic)."""
    n = ceil_nanos(amount)
    scaled = amount.scaleb(9)  # exact here: at most 22 significant digits
    assert n >= scaled
    assert n - 1 < scaled


def test_ceil_nanos_rejects_signalling_nan() -> None:
    """A signalling NaN is not an amount: MoneyError."""
    with pytest.raises(MoneyError):
        ceil_nanos(Decimal("sNaN"))


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN"])
def test_ceil_nanos_rejects_non_finite(text: str) -> None:
    """Infinity and NaN are not amounts: MoneyError, like sNaN."""
    with pytest.raises(MoneyError):
        ceil_nanos(Decimal(text))


def test_ceil_nanos_never_rounds_down_high_precision_amounts() -> None:
    """0.1000000000000000000000000000001 units is just over 100,000,000 nanos: ceiling is +1."""
    assert ceil_nanos(Decimal("0.1000000000000000000000000000001")) == 100_000_001


# --- checked_sum -----------------------------------------------------------------------------


def test_checked_sum_adds_exactly() -> None:
    """An ordinary sum, including none and negative terms."""
    assert checked_sum() == 0
    assert checked_sum(5) == 5
    assert checked_sum(1, 2, 3) == 6
    assert checked_sum(MAX_AMOUNT_NANOS, -MAX_AMOUNT_NANOS, 7) == 7


def test_checked_sum_allows_the_bigint_range() -> None:
    """±INT64_MAX fit a bigint column."""
    assert checked_sum(INT64_MAX) == INT64_MAX
    assert checked_sum(INT64_MAX - 1, 1) == INT64_MAX
    assert checked_sum(-INT64_MAX) == -INT64_MAX


@pytest.mark.parametrize(
    "terms",
    [(INT64_MAX, 1), (-INT64_MAX, -1), (MAX_AMOUNT_NANOS,) * 10, (-MAX_AMOUNT_NANOS,) * 10, (2**64,)],
)
def test_checked_sum_rejects_what_a_bigint_cannot_hold(terms: tuple[int, ...]) -> None:
    """A sum outside the exact range is AMOUNT_OVERFLOW."""
    with pytest.raises(MoneyError) as exc:
        checked_sum(*terms)
    assert exc.value.reason == "AMOUNT_OVERFLOW"


# --- ratio_reached ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "whole", "ppm", "reached"),
    [
        (80, 100, 800_000, True),
        (79, 100, 800_000, False),
        (81, 100, 800_000, True),
        (100, 100, 1_000_000, True),
        (99, 100, 1_000_000, False),
        (0, 100, 1, False),
        (1, 1_000_000, 1, True),
        (0, 0, 800_000, True),
        (5, 0, 800_000, True),
        (150, 100, 1_000_000, True),
    ],
)
def test_ratio_reached(part: int, whole: int, ppm: int, reached: bool) -> None:
    """part >= ppm / 1e6 of whole, inclusive at equality; a zero whole is always reached."""
    assert ratio_reached(part, whole, ppm) is reached


def test_ratio_reached_is_exact_where_a_float_is_not() -> None:
    """8e17 of 1e18 + 1 is just under 80%, although 8e17 / (1e18 + 1) == 0.8 in floating point."""
    part, whole = 8 * 10**17, 10**18 + 1
    assert part / whole >= 0.8  # the float comparison gets it wrong
    assert ratio_reached(part, whole, 800_000) is False
    assert ratio_reached(part, whole - 1, 800_000) is True


# --- check_currency --------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["USD", "EUR", "JPY", "XAU"])
def test_check_currency_accepts_three_capitals(code: str) -> None:
    """An ISO 4217 shape code is returned unchanged."""
    assert check_currency(code) == code


@pytest.mark.parametrize("code", ["", "usd", "Usd", "US", "USDX", "U5D", " USD", "USD ", "ÜSD", "US-"])
def test_check_currency_rejects_other_text(code: str) -> None:
    """Anything but exactly three ASCII capital letters is INVALID_FIELD."""
    with pytest.raises(MoneyError) as exc:
        check_currency(code)
    assert exc.value.reason == "INVALID_FIELD"


def test_check_currency_rejects_a_trailing_newline() -> None:
    """'USD\\n' is four characters, not a currency code."""
    with pytest.raises(MoneyError):
        check_currency("USD\n")
