"""Time ranges of the ``report`` command: ``--period 2026-11``, ``--since 7d``, ``--until 2026-12-01``.

Calendar periods are bounded by local midnights of the report's time zone (through
``periods.bounds``, so DST is handled); durations count back from ``now``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from .periods import PeriodKind, bounds, zone

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")

Range = tuple[datetime | None, datetime | None]


def is_month(text: str) -> bool:
    return bool(_MONTH.match(text)) and 1 <= int(text[5:]) <= 12


def _noon(day: date, tz_name: str) -> datetime:
    """An instant surely inside ``day`` of the zone (noon exists on every DST change day)."""
    return datetime(day.year, day.month, day.day, 12, tzinfo=zone(tz_name)).astimezone(UTC)


def _period_of(kind: PeriodKind, day: date, tz_name: str) -> tuple[datetime, datetime]:
    return bounds(kind, tz_name, _noon(day, tz_name))


def period(text: str, now: datetime, tz_name: str = "") -> tuple[datetime, datetime]:
    """[start, end) of a named period: YYYY, YYYY-MM, YYYY-Www, YYYY-MM-DD, today, yesterday,
    this-week, last-week, this-month, last-month."""
    today = now.astimezone(zone(tz_name)).date()
    relative = {
        "today": (PeriodKind.DAILY, today),
        "yesterday": (PeriodKind.DAILY, today - timedelta(days=1)),
        "this-week": (PeriodKind.WEEKLY, today),
        "last-week": (PeriodKind.WEEKLY, today - timedelta(days=7)),
        "this-month": (PeriodKind.MONTHLY, today),
        "last-month": (PeriodKind.MONTHLY, today.replace(day=1) - timedelta(days=1)),
    }
    try:
        if text in relative:
            return _period_of(*relative[text], tz_name)
        if m := _YEAR.match(text):
            year = int(m.group(1))
            return (
                _period_of(PeriodKind.MONTHLY, date(year, 1, 1), tz_name)[0],
                _period_of(PeriodKind.MONTHLY, date(year, 12, 1), tz_name)[1],
            )
        if m := _MONTH.match(text):
            return _period_of(PeriodKind.MONTHLY, date(int(m.group(1)), int(m.group(2)), 1), tz_name)
        if m := _WEEK.match(text):
            monday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
            return _period_of(PeriodKind.WEEKLY, monday, tz_name)
        return _period_of(PeriodKind.DAILY, date.fromisoformat(text), tz_name)
    except ValueError:
        pass
    raise ValueError(
        f"--period: {text!r} is not YYYY, YYYY-MM, YYYY-Www, YYYY-MM-DD, today, yesterday, "
        "this-week, last-week, this-month or last-month"
    )


def instant(text: str, now: datetime, tz_name: str = "", flag: str = "--since") -> datetime:
    """A bound: a duration back from now (30m, 12h, 7d, 2w), a date (local midnight) or a time."""
    if m := _DURATION.match(text):
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        if len(text) == 10:
            return _period_of(PeriodKind.DAILY, date.fromisoformat(text), tz_name)[0]
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a duration (7d), a date (2026-11-01) or a time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone(tz_name))
    return when.astimezone(UTC)


def resolve(period_text: str | None, since: str | None, until: str | None, now: datetime, tz_name: str = "") -> Range:
    if period_text and (since or until):
        raise ValueError("--period cannot be combined with --since / --until")
    if period_text:
        return period(period_text, now, tz_name)
    start = instant(since, now, tz_name, "--since") if since else None
    end = instant(until, now, tz_name, "--until") if until else None
    if start and end and end <= start:
        raise ValueError("--until must be after --since")
    return start, end
