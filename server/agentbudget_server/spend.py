"""Spend reports: committed spend (commits and direct charges), filtered and grouped.

Where a report's time range covers whole UTC months and days, the sums come from the rollup
tables the ledger's trigger keeps (``spend_monthly``, ``spend_daily``); only the partial days at
its ends are read from the ledger. Labels, distinct task ids and time buckets in a zone other than
UTC are not in the rollup: such reports read the ledger over the whole range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from . import db
from .errors import BudgetNotFound, InvalidField
from .periods import zone
from .sql import QUERIES as Q


class Dimension(StrEnum):
    BUDGET = "budget"
    MODEL = "model"
    TASK_TYPE = "task_type"
    KIND = "kind"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


TIME_DIMENSIONS = (Dimension.DAY, Dimension.WEEK, Dimension.MONTH)
# Zones whose days are UTC days: their buckets can come from the rollup.
UTC_NAMES = frozenset({"", "UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})
# A fleet-wide report read from the ledger (task counts, say) can outlast the pool's command
# timeout, which is sized for the ledger's short writes.
REPORT_TIMEOUT = 300.0
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


@dataclass(frozen=True)
class SpendQuery:
    budgets: tuple[str, ...] = ()
    namespace: str = ""
    kinds: tuple[str, ...] = ()  # "" matches costs without a kind
    models: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    principals: tuple[str, ...] = ()  # "" matches costs recorded without one
    start: datetime | None = None
    end: datetime | None = None
    group_by: tuple[Dimension, ...] = ()
    time_zone: str = ""
    currency: str = ""
    count_tasks: bool = False
    page_size: int = 100
    offset: int = 0

    @property
    def bucket(self) -> Dimension | None:
        return next((d for d in self.group_by if d in TIME_DIMENSIONS), None)


@dataclass(frozen=True)
class Sums:
    cost: int
    entries: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    sandbox_nanos: int
    tasks: int


@dataclass(frozen=True)
class SpendGroup:
    currency: str
    sums: Sums
    budget: str | None = None
    model: str | None = None
    task_type: str | None = None
    kind: str | None = None  # "" when recorded without one
    bucket_start: datetime | None = None
    bucket: str | None = None


@dataclass(frozen=True)
class SpendResult:
    groups: list[SpendGroup]
    totals: list[SpendGroup]
    group_count: int
    more: bool


# -- which source answers which part of the range ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Half-open ranges, each read from one source; unused ones are empty."""

    months: tuple[date, date]
    days: tuple[tuple[date, date], tuple[date, date]]
    ledger: tuple[tuple[datetime, datetime], tuple[datetime, datetime]]


_NO_DAYS = (date(1, 1, 1), date(1, 1, 1))
_NO_TIME = (EARLIEST, EARLIEST)


def _day_ceil(t: datetime) -> date:
    d = t.astimezone(UTC).date()
    return d if t == datetime(d.year, d.month, d.day, tzinfo=UTC) else d + timedelta(days=1)


def _month_ceil(d: date) -> date:
    if d.day == 1:
        return d
    return date(d.year + d.month // 12, d.month % 12 + 1, 1) if d < date(9999, 12, 1) else date(9999, 12, 1)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def plan(q: SpendQuery) -> Plan:
    """Split [start, end) into ledger edges, rollup days and rollup months."""
    start, end = q.start or EARLIEST, q.end or LATEST
    rollup = (
        not q.labels
        and not q.principals  # the rollup keeps no principal
        and not q.count_tasks
        and (q.bucket is None or q.time_zone in UTC_NAMES)
    )
    first_day, last_day = _day_ceil(start), end.astimezone(UTC).date()  # whole days: [first_day, last_day)
    if not rollup or first_day >= last_day:
        return Plan(_NO_DAYS, (_NO_DAYS, _NO_DAYS), ((start, end), _NO_TIME))
    ledger = ((start, _midnight(first_day)), (_midnight(last_day), end))
    if q.bucket in (Dimension.DAY, Dimension.WEEK):  # buckets finer than months need the days
        return Plan(_NO_DAYS, ((first_day, last_day), _NO_DAYS), ledger)
    first_month, last_month = _month_ceil(first_day), last_day.replace(day=1)
    if first_month >= last_month:
        return Plan(_NO_DAYS, ((first_day, last_day), _NO_DAYS), ledger)
    return Plan((first_month, last_month), ((first_day, first_month), (last_month, last_day)), ledger)


# -- the query ---------------------------------------------------------------------------------


def bucket_name(dimension: Dimension, start: datetime, time_zone: str) -> str:
    local = start.astimezone(zone(time_zone))
    if dimension is Dimension.DAY:
        return local.date().isoformat()
    if dimension is Dimension.WEEK:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{local.year:04d}-{local.month:02d}"


def arguments(q: SpendQuery, budget_ids: list[int] | None) -> list[Any]:
    """The parameters of the query_spend statement, in order."""
    p = plan(q)
    by = set(q.group_by)
    bucket = q.bucket
    labels = dict(q.labels)
    return [
        p.months[0],
        p.months[1],
        p.days[0][0],
        p.days[0][1],
        p.days[1][0],
        p.days[1][1],
        p.ledger[0][0],
        p.ledger[0][1],
        p.ledger[1][0],
        p.ledger[1][1],
        budget_ids,
        q.namespace,
        list(q.kinds) or None,
        list(q.models) or None,
        list(q.task_types) or None,
        _json(labels) if labels else None,
        q.currency,
        Dimension.BUDGET in by,
        Dimension.MODEL in by,
        Dimension.TASK_TYPE in by,
        Dimension.KIND in by,
        bucket.value if bucket else "",
        q.time_zone or "UTC",
        q.count_tasks,
        q.page_size + 1,
        q.offset,
        list(q.principals) or None,
    ]


async def query(pool: asyncpg.Pool, q: SpendQuery) -> SpendResult:
    async with db.connection(pool) as conn, conn.transaction(readonly=True):
        await conn.execute(Q["report_settings"])
        budget_ids = await _budget_ids(conn, q.budgets)
        try:
            rows = await conn.fetch(Q["query_spend"], *arguments(q, budget_ids), timeout=REPORT_TIMEOUT)
        except asyncpg.InvalidParameterValueError as exc:  # a zone Python knows and PostgreSQL does not
            raise InvalidField("time_zone", f"unknown time zone {q.time_zone!r} ({exc})") from None
    bucket = q.bucket
    totals = [_group(r, None, q.time_zone) for r in rows if r["is_total"]]
    groups = [_group(r, bucket, q.time_zone) for r in rows if not r["is_total"]]
    count = int(rows[0]["group_count"]) if rows else 0
    return SpendResult(groups[: q.page_size], totals, count, more=len(groups) > q.page_size)


async def _budget_ids(conn: asyncpg.Connection, names: tuple[str, ...]) -> list[int] | None:
    if not names:
        return None
    found = {r["name"]: r["id"] for r in await conn.fetch(Q["spend_budget_ids"], list(names))}
    for name in names:
        if name not in found:
            raise BudgetNotFound(name)
    return list(found.values())


def _json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True)


def _int(value: Any) -> int:
    return int(value or 0)  # the sums are numeric (Decimal) or bigint


def _group(row: asyncpg.Record, bucket: Dimension | None, time_zone: str) -> SpendGroup:
    sums = Sums(
        cost=_int(row["cost_nanos"]),
        entries=_int(row["entries"]),
        input_tokens=_int(row["input_tokens"]),
        output_tokens=_int(row["output_tokens"]),
        cache_read_tokens=_int(row["cache_read_tokens"]),
        cache_write_tokens=_int(row["cache_write_tokens"]),
        sandbox_nanos=_int(row["sandbox_nanos"]),
        tasks=_int(row["tasks"]),
    )
    start = row["bucket"]
    return SpendGroup(
        currency=row["currency"],
        sums=sums,
        budget=row["budget"],
        model=row["model"],
        task_type=row["task_type"],
        kind=row["kind"],
        bucket_start=start,
        bucket=bucket_name(bucket, start, time_zone) if bucket and start is not None else None,
    )
