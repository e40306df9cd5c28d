"""Unit tests of ``agentbudget_server.periods``: [start, end) of a month, ISO week or day.

Bounds are local midnights of the budget's zone, returned in UTC; the instant at a boundary
belongs to the new period.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from agentbudget_server.periods import PeriodKind, bounds, zone
from hypothesis import given, settings
from hypothesis import strategies as st

K = PeriodKind
TICK = timedelta(microseconds=1)
HOUR = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(tz_name: str, *args: int, fold: int = 0) -> datetime:
    """A wall time in ``tz_name`` as a UTC instant."""
    return datetime(*args, tzinfo=ZoneInfo(tz_name), fold=fold).astimezone(UTC)  # type: ignore[misc]


def expected_first_day(kind: PeriodKind, day: date) -> date:
    """The first local day of the period containing ``day``, computed independently of the module."""
    if kind is K.MONTHLY:
        return date(day.year, day.month, 1)
    if kind is K.WEEKLY:
        year, week, _ = day.isocalendar()
        return date.fromisocalendar(year, week, 1)
    return day


# --- zone ------------------------------------------------------------------------------------


def test_empty_zone_is_utc() -> None:
    """An empty time zone means UTC."""
    assert zone("") == ZoneInfo("UTC")
    now = utc(2026, 5, 15, 23, 30)
    for kind in K:
        assert bounds(kind, "", now) == bounds(kind, "UTC", now)


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "America/New York",
        "america/new_york_x",
        "UTC ",
        "UTC\n",
        "UTC\x00",
        "/etc/localtime",
        "../../etc/passwd",
        "Europe/../UTC",
        "./UTC",
        "Europe/Berlin/",
        "x" * 65,
        "A" * 10_000,
    ],
)
def test_unknown_zone_is_a_value_error(name: str) -> None:
    """An unknown or path-like zone name raises ValueError (the caller's INVALID_ARGUMENT)."""
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)
    with pytest.raises(ValueError, match="unknown time zone"):
        bounds(K.MONTHLY, name, utc(2026, 1, 1))


@pytest.mark.parametrize("name", ["America", "Etc", "Europe"])
def test_zone_directory_is_a_value_error(name: str) -> None:
    """A region directory is not a zone: ValueError, like any other unknown name."""
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)


# --- monthly ---------------------------------------------------------------------------------


def test_monthly_utc_mid_month() -> None:
    """A calendar month in UTC: from the 1st at 00:00 to the next 1st at 00:00."""
    assert bounds(K.MONTHLY, "UTC", utc(2026, 5, 15, 12)) == (utc(2026, 5, 1), utc(2026, 6, 1))


@pytest.mark.parametrize(
    ("year", "month", "days"),
    [
        (2026, 1, 31),
        (2026, 2, 28),  # not a leap year
        (2024, 2, 29),  # leap year
        (2028, 2, 29),  # leap year
        (2100, 2, 28),  # divisible by 100, not by 400: not a leap year
        (2000, 2, 29),  # divisible by 400: leap year
        (2026, 4, 30),
        (2026, 12, 31),
    ],
)
def test_monthly_length_and_last_instant(year: int, month: int, days: int) -> None:
    """The last microsecond of a month's last day is still in it; the next instant is not."""
    start = utc(year, month, 1)
    last_day = utc(year, month, days)
    period = bounds(K.MONTHLY, "UTC", last_day + timedelta(days=1) - TICK)
    assert period == (start, last_day + timedelta(days=1))
    assert period[1] - period[0] == timedelta(days=days)
    assert bounds(K.MONTHLY, "UTC", period[1])[0] == period[1]


def test_monthly_december_rolls_into_january_of_the_next_year() -> None:
    """December ends at January 1st of the following year, which starts a new period."""
    assert bounds(K.MONTHLY, "UTC", utc(2026, 12, 31, 23, 59, 59, 999_999)) == (
        utc(2026, 12, 1),
        utc(2027, 1, 1),
    )
    assert bounds(K.MONTHLY, "UTC", utc(2027, 1, 1)) == (utc(2027, 1, 1), utc(2027, 2, 1))


def test_monthly_new_york_follows_local_midnight() -> None:
    """Feb 28 22:00 EST is still February in New York although it is March 1 in UTC."""
    feb = (utc(2026, 2, 1, 5), utc(2026, 3, 1, 5))
    assert bounds(K.MONTHLY, "America/New_York", utc(2026, 3, 1, 3)) == feb
    # March starts at EST midnight and ends at EDT midnight (DST began on March 8).
    assert bounds(K.MONTHLY, "America/New_York", utc(2026, 3, 1, 5)) == (
        utc(2026, 3, 1, 5),
        utc(2026, 4, 1, 4),
    )


def test_monthly_berlin_across_dst_start() -> None:
    """March in Berlin starts at +01:00 and ends at +02:00: 31 days minus one hour."""
    start, end = bounds(K.MONTHLY, "Europe/Berlin", utc(2026, 3, 15))
    assert (start, end) == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))
    assert end - start == timedelta(days=31) - HOUR


def test_monthly_auckland_starts_the_year_before_utc() -> None:
    """Auckland (+13:00 in January) is in January 2026 while UTC is still on December 31."""
    assert bounds(K.MONTHLY, "Pacific/Auckland", utc(2025, 12, 31, 12)) == (
        utc(2025, 12, 31, 11),
        utc(2026, 1, 31, 11),
    )
    assert bounds(K.MONTHLY, "Pacific/Auckland", utc(2025, 12, 31, 10, 59, 59)) == (
        utc(2025, 11, 30, 11),
        utc(2025, 12, 31, 11),
    )


# --- weekly ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        # Thursday 2026-01-01: the ISO week starts on Monday 2025-12-29.
        (utc(2026, 1, 1, 12), utc(2025, 12, 29), utc(2026, 1, 5)),
        # Sunday 2021-01-03 belongs to ISO week 53 of 2020.
        (utc(2021, 1, 3, 23, 59, 59, 999_999), utc(2020, 12, 28), utc(2021, 1, 4)),
        (utc(2021, 1, 4), utc(2021, 1, 4), utc(2021, 1, 11)),
        # Wednesday 2026-04-01: the week spans March and April.
        (utc(2026, 4, 1, 8), utc(2026, 3, 30), utc(2026, 4, 6)),
        # Leap day inside a week.
        (utc(2024, 2, 29), utc(2024, 2, 26), utc(2024, 3, 4)),
    ],
)
def test_weekly_iso_week_starts_on_monday(now: datetime, start: datetime, end: datetime) -> None:
    """A week runs Monday 00:00 to the next Monday 00:00, across month and year ends."""
    assert bounds(K.WEEKLY, "UTC", now) == (start, end)
    assert start.weekday() == 0


def test_weekly_monday_midnight_starts_the_next_week() -> None:
    """Sunday's last microsecond is the old week; Monday 00:00 is the new one."""
    monday = utc(2026, 5, 11)
    assert bounds(K.WEEKLY, "UTC", monday - TICK) == (utc(2026, 5, 4), monday)
    assert bounds(K.WEEKLY, "UTC", monday) == (monday, utc(2026, 5, 18))


def test_weekly_new_york_across_dst_end() -> None:
    """The week of 2026-11-01 in New York starts at EDT midnight, ends at EST midnight: 7 days + 1h."""
    start, end = bounds(K.WEEKLY, "America/New_York", utc(2026, 11, 1, 12))
    assert (start, end) == (utc(2026, 10, 26, 4), utc(2026, 11, 2, 5))
    assert end - start == timedelta(days=7) + HOUR


# --- daily -----------------------------------------------------------------------------------


def test_daily_utc() -> None:
    """A UTC day, start inclusive, end exclusive."""
    assert bounds(K.DAILY, "UTC", utc(2026, 5, 15)) == (utc(2026, 5, 15), utc(2026, 5, 16))
    assert bounds(K.DAILY, "UTC", utc(2026, 5, 15, 23, 59, 59, 999_999)) == (
        utc(2026, 5, 15),
        utc(2026, 5, 16),
    )


def test_daily_kolkata_half_hour_offset() -> None:
    """Asia/Kolkata is +05:30: its day turns at 18:30 UTC."""
    day = (utc(2026, 5, 9, 18, 30), utc(2026, 5, 10, 18, 30))
    assert bounds(K.DAILY, "Asia/Kolkata", utc(2026, 5, 10, 18, 29, 59, 999_999)) == day
    assert bounds(K.DAILY, "Asia/Kolkata", utc(2026, 5, 10, 18, 30))[0] == day[1]


@pytest.mark.parametrize(
    ("tz_name", "day", "start", "length"),
    [
        # New York: spring forward 02:00 → 03:00, fall back 02:00 → 01:00.
        ("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), timedelta(hours=23)),
        ("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), timedelta(hours=25)),
        # Berlin: 02:00 → 03:00 on the last Sunday of March, 03:00 → 02:00 in October.
        ("Europe/Berlin", date(2026, 3, 29), utc(2026, 3, 28, 23), timedelta(hours=23)),
        ("Europe/Berlin", date(2026, 10, 25), utc(2026, 10, 24, 22), timedelta(hours=25)),
        # Auckland (southern hemisphere): DST starts in September, ends in April.
        ("Pacific/Auckland", date(2026, 9, 27), utc(2026, 9, 26, 12), timedelta(hours=23)),
        ("Pacific/Auckland", date(2026, 4, 5), utc(2026, 4, 4, 11), timedelta(hours=25)),
        # Lord Howe: a half-hour DST shift.
        ("Australia/Lord_Howe", date(2026, 10, 4), utc(2026, 10, 3, 13, 30), timedelta(hours=23, minutes=30)),
        ("Australia/Lord_Howe", date(2026, 4, 5), utc(2026, 4, 4, 13), timedelta(hours=24, minutes=30)),
        # Santiago falls back at 24:00 → 23:00, so April 4 has 25 hours.
        ("America/Santiago", date(2026, 4, 4), utc(2026, 4, 4, 3), timedelta(hours=25)),
        # Havana falls back 01:00 → 00:00: midnight happens twice, the day starts at the first.
        ("America/Havana", date(2026, 11, 1), utc(2026, 11, 1, 4), timedelta(hours=25)),
    ],
)
def test_daily_dst_days_are_23_or_25_hours(
    tz_name: str, day: date, start: datetime, length: timedelta
) -> None:
    """A day is local midnight to local midnight, whatever its length in real time."""
    noon = local(tz_name, day.year, day.month, day.day, 12)
    assert bounds(K.DAILY, tz_name, noon) == (start, start + length)
    assert start.astimezone(ZoneInfo(tz_name)).date() == day


def test_daily_repeated_hour_belongs_to_the_same_day() -> None:
    """Both 01:30s of New York's 2026-11-01 are in the same 25-hour day."""
    first = local("America/New_York", 2026, 11, 1, 1, 30, fold=0)
    second = local("America/New_York", 2026, 11, 1, 1, 30, fold=1)
    assert second - first == HOUR
    assert bounds(K.DAILY, "America/New_York", first) == bounds(K.DAILY, "America/New_York", second)


@pytest.mark.parametrize(
    ("tz_name", "day", "first_instant"),
    [
        ("America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4)),  # 00:00 -04 → 01:00 -03
        ("America/Havana", date(2026, 3, 8), utc(2026, 3, 8, 5)),  # 00:00 -05 → 01:00 -04
    ],
)
def test_daily_skipped_midnight_starts_at_0100(tz_name: str, day: date, first_instant: datetime) -> None:
    """When DST skips midnight, the day starts at its first existing instant, 01:00 local."""
    tz = ZoneInfo(tz_name)
    # Precondition (tzdata): midnight does not exist that day; the last instant before is the day before.
    assert first_instant.astimezone(tz).replace(tzinfo=None) == datetime(day.year, day.month, day.day, 1)
    assert (first_instant - TICK).astimezone(tz).date() == day - timedelta(days=1)

    start, end = bounds(K.DAILY, tz_name, first_instant + timedelta(hours=5))
    assert start == first_instant
    assert end - start == timedelta(hours=23)
    # The day before ends exactly where this one starts, and the boundary instant is the new day.
    assert bounds(K.DAILY, tz_name, first_instant - TICK)[1] == first_instant
    assert bounds(K.DAILY, tz_name, first_instant) == (start, end)


def test_weekly_containing_a_skipped_midnight() -> None:
    """Santiago's week of Monday 2026-08-31: starts at -04 midnight, ends at -03 midnight (7d - 1h)."""
    start, end = bounds(K.WEEKLY, "America/Santiago", utc(2026, 9, 6, 12))
    assert (start, end) == (utc(2026, 8, 31, 4), utc(2026, 9, 7, 3))


@pytest.mark.parametrize(
    ("tz_name", "day_before", "next_start"),
    [
        # Samoa skipped 2011-12-30: 2011-12-29 24:00 -10 was 2011-12-31 00:00 +14.
        ("Pacific/Apia", date(2011, 12, 29), utc(2011, 12, 30, 10)),
        # Kiribati's Line Islands skipped 1994-12-31.
        ("Pacific/Kiritimati", date(1994, 12, 30), utc(1994, 12, 31, 10)),
    ],
)
def test_daily_skipped_day_periods_tile(tz_name: str, day_before: date, next_start: datetime) -> None:
    """The day before a skipped calendar day ends where the next existing day starts."""
    noon = local(tz_name, day_before.year, day_before.month, day_before.day, 12)
    _, end = bounds(K.DAILY, tz_name, noon)
    assert bounds(K.DAILY, tz_name, next_start)[0] == next_start
    assert end == next_start


# --- general rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(K))
@pytest.mark.parametrize("tz_name", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
def test_boundary_instant_belongs_to_the_new_period(kind: PeriodKind, tz_name: str) -> None:
    """start is inclusive, end exclusive: ``end`` opens the next period, ``end - 1µs`` closes this one."""
    start, end = bounds(kind, tz_name, utc(2026, 6, 17, 9, 41))
    assert bounds(kind, tz_name, start) == (start, end)
    assert bounds(kind, tz_name, end - TICK) == (start, end)
    assert bounds(kind, tz_name, end)[0] == end
    assert bounds(kind, tz_name, start - TICK)[1] == start


def test_now_in_any_offset_gives_the_same_period() -> None:
    """``now`` is an instant: its own tzinfo does not matter, and bounds come back in UTC."""
    instant = utc(2026, 7, 31, 22, 30)
    tokyo = instant.astimezone(timezone(timedelta(hours=9)))
    for kind in K:
        got = bounds(kind, "Europe/Berlin", tokyo)
        assert got == bounds(kind, "Europe/Berlin", instant)
        assert all(b.utcoffset() == timedelta(0) for b in got)


@pytest.mark.parametrize(
    ("tz_name", "odd_days"),
    [
        ("UTC", {}),
        ("America/New_York", {date(2026, 3, 8): 23, date(2026, 11, 1): 25}),
        ("Europe/Berlin", {date(2026, 3, 29): 23, date(2026, 10, 25): 25}),
        ("America/Santiago", {date(2026, 4, 4): 25, date(2026, 9, 6): 23}),
    ],
)
def test_daily_periods_tile_a_whole_year(tz_name: str, odd_days: dict[date, int]) -> None:
    """365 consecutive days of 2026, each from the end of the one before; only DST days are not 24h."""
    tz = ZoneInfo(tz_name)
    start, end = bounds(K.DAILY, tz_name, local(tz_name, 2026, 1, 1, 12))
    first = start
    for offset in range(365):
        day = date(2026, 1, 1) + timedelta(days=offset)
        assert start.astimezone(tz).date() == day
        assert end - start == timedelta(hours=odd_days.get(day, 24))
        start, end = bounds(K.DAILY, tz_name, end)
    assert start == bounds(K.DAILY, tz_name, local(tz_name, 2027, 1, 1, 12))[0]
    assert start - first == timedelta(days=365)


# --- property: every instant, every kind, a handful of zones ---------------------------------

ZONES = [
    "",
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
]
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=400, deadline=None)
@given(now=instants, kind=st.sampled_from(list(K)), tz_name=st.sampled_from(ZONES))
def test_bounds_properties(now: datetime, kind: PeriodKind, tz_name: str) -> None:
    """start <= now < end; start is the first instant of the right local day; periods tile."""
    tz = zone(tz_name)
    start, end = bounds(kind, tz_name, now)
    assert start <= now < end

    first_day = expected_first_day(kind, now.astimezone(tz).date())
    # start is the first instant of first_day: local midnight, or the first existing instant.
    assert start.astimezone(tz).date() == first_day
    assert (start - TICK).astimezone(tz).date() < first_day
    if (start - TICK).astimezone(tz).utcoffset() == start.astimezone(tz).utcoffset():
        assert start.astimezone(tz).time() == datetime.min.time()

    # end is the first instant of the next period's first day.
    next_first_day = end.astimezone(tz).date()
    assert next_first_day > first_day
    assert expected_first_day(kind, next_first_day) == next_first_day
    assert (end - TICK).astimezone(tz).date() < next_first_day

    # Consecutive periods tile: the next period starts at ``end``, the previous one ends at ``start``.
    assert bounds(kind, tz_name, end)[0] == end
    assert bounds(kind, tz_name, end - TICK) == (start, end)
    assert bounds(kind, tz_name, start - TICK)[1] == start

    length = {K.DAILY: timedelta(days=1), K.WEEKLY: timedelta(days=7)}.get(kind)
    if length is not None:
        assert abs((end - start) - length) <= 2 * HOUR
    else:
        assert timedelta(days=28) - 2 * HOUR <= end - start <= timedelta(days=31) + 2 * HOUR
