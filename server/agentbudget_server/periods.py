"""Budget periods: calendar month, ISO week or day, in UTC or an IANA time zone.

Bounds are computed from the wall clock of the zone and then converted to UTC, so a month in
``Europe/Berlin`` starts at local midnight whatever the DST offset; a new period therefore begins
by arithmetic alone, with no job at the boundary.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class PeriodKind(StrEnum):
    MONTHLY = "MONTHLY"
    WEEKLY = "WEEKLY"
    DAILY = "DAILY"


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The zone for ``name`` (empty = UTC); raises ValueError for an unknown one."""
    if not name:
        return ZoneInfo("UTC")
    if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder such as "America"
        raise ValueError(f"unknown time zone {name!r}") from exc


def _first_day(kind: PeriodKind, day: date) -> date:
    if kind is PeriodKind.MONTHLY:
        return day.replace(day=1)
    if kind is PeriodKind.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day


def _next_first_day(kind: PeriodKind, first: date) -> date:
    if kind is PeriodKind.MONTHLY:
        return date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first + timedelta(days=7 if kind is PeriodKind.WEEKLY else 1)


def _local_midnight_utc(day: date, tz: ZoneInfo) -> datetime:
    """The first instant whose local date is ``day`` or later.

    Usually local midnight (fold=0 picks the first of two equal wall times). Where midnight was
    skipped (a DST jump at 00:00) or the whole day was (Pacific/Apia, 2011-12-30), a search
    finds the first instant of the new local day.
    """
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    as_utc = local.astimezone(UTC)
    if as_utc.astimezone(tz).date() == day and (as_utc - timedelta(seconds=1)).astimezone(tz).date() < day:
        return as_utc
    low, high = as_utc - timedelta(days=2), as_utc + timedelta(days=2)  # local date < day at low, >= at high
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(tz).date() >= day:
            high = middle
        else:
            low = middle
    return high


def bounds(kind: PeriodKind, tz_name: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the period that contains ``now``."""
    kind = PeriodKind(kind)
    tz = zone(tz_name)
    local_day = now.astimezone(tz).date()
    first = _first_day(kind, local_day)
    start = _local_midnight_utc(first, tz)
    end = _local_midnight_utc(_next_first_day(kind, first), tz)
    return start, end
