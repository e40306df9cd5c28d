"""The monthly review page: one self-contained HTML file with inline SVG charts.

Spend per agent against its limit, per model, per task type, the daily trend and the cost per
task, for one month in one currency, from ``QuerySpend`` and ``ListBudgets``.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html import escape

from agentbudget.client import BudgetClient, to_decimal
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from . import report_ranges, svg
from . import report_text as fmt
from .periods import zone

CHART_ROWS = 25  # a fleet of thousands: the chart shows the biggest, the table a few more
TABLE_ROWS = 100


@dataclass(frozen=True)
class Agent:
    name: str
    spent: Decimal
    limit: Decimal | None  # the month's allowance under the current spec
    tasks: int
    entries: int


@dataclass(frozen=True)
class Line:
    label: str
    cost: Decimal
    tasks: int = 0
    entries: int = 0


@dataclass(frozen=True)
class Review:
    month: str
    time_zone: str
    currency: str
    namespace: str
    start: datetime
    end: datetime
    total: Decimal
    entries: int
    tasks: int
    agents: list[Agent]
    models: list[Line]
    task_types: list[Line]
    days: list[Line]  # every day of the month, in order


def _ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def _groups(
    client: BudgetClient, request: pb.QuerySpendRequest, first: int = 0
) -> tuple[list[pb.SpendGroup], pb.SpendGroup]:
    """The first ``first`` groups (0: every page), and the total (an empty one when nothing matched)."""
    groups: list[pb.SpendGroup] = []
    total = pb.SpendGroup()
    request.page_size = first or 1000
    while True:
        resp: pb.QuerySpendResponse = await client.call(client.stub.QuerySpend, request)
        groups.extend(resp.groups)
        if resp.totals:
            total = resp.totals[0]
        if not resp.next_page_token or first:
            return groups, total
        request.page_token = resp.next_page_token


def month_allowance(budget: pb.Budget, days: int) -> Decimal:
    """A monthly budget's limit; daily and weekly limits scaled to the month's days."""
    limit = to_decimal(budget.spec.limit)
    if budget.spec.period == pb.DAILY:
        return limit * days
    if budget.spec.period == pb.WEEKLY:
        return (limit * days / 7).quantize(fmt.CENT, ROUND_HALF_UP)
    return limit


async def gather(
    client: BudgetClient, month: str, time_zone: str = "", currency: str = "USD", namespace: str = ""
) -> Review:
    if not report_ranges.is_month(month):
        raise ValueError(f"--review: {month!r} is not a month (YYYY-MM)")
    start, end = report_ranges.period(month, datetime.now(UTC), time_zone)

    def request(*by: pb.SpendDimension.ValueType, tasks: bool = False) -> pb.QuerySpendRequest:
        return pb.QuerySpendRequest(
            namespace=namespace,
            currency=currency,
            start_time=_ts(start),
            end_time=_ts(end),
            group_by=list(by),
            time_zone=time_zone,
            count_tasks=tasks,
        )

    # Every page of a query runs it anew, and counting tasks reads the ledger: tasks are counted
    # for the agents the table shows, the spend of all of them comes from the rollup.
    per_budget, _ = await _groups(client, request(pb.SPEND_BY_BUDGET))
    with_tasks, total = await _groups(client, request(pb.SPEND_BY_BUDGET, tasks=True), first=TABLE_ROWS)
    tasks = {g.budget: g.tasks for g in with_tasks}
    per_model, _ = await _groups(client, request(pb.SPEND_BY_MODEL))
    per_task_type, _ = await _groups(client, request(pb.SPEND_BY_TASK_TYPE, tasks=True))
    per_day, _ = await _groups(client, request(pb.SPEND_BY_DAY))

    year, mon = (int(p) for p in month.split("-"))
    days_in_month = calendar.monthrange(year, mon)[1]
    budgets = {b.name: b async for b in client.list_budgets(namespace) if b.spec.limit.currency_code == currency}
    spent = {g.budget: g for g in per_budget}
    agents = [
        Agent(
            name=name,
            spent=to_decimal(spent[name].cost) if name in spent else Decimal(0),
            limit=month_allowance(budgets[name], days_in_month) if name in budgets else None,
            tasks=tasks.get(name, 0),
            entries=spent[name].entries if name in spent else 0,
        )
        for name in sorted(set(budgets) | set(spent))
    ]
    agents.sort(key=lambda a: (-a.spent, a.name))
    by_day = {g.bucket: to_decimal(g.cost) for g in per_day}
    first = datetime(year, mon, 1).date()
    days = [
        Line((first + timedelta(days=i)).isoformat(), by_day.get((first + timedelta(days=i)).isoformat(), Decimal(0)))
        for i in range(days_in_month)
    ]
    return Review(
        month=month,
        time_zone=time_zone or "UTC",
        currency=currency,
        namespace=namespace,
        start=start,
        end=end,
        total=to_decimal(total.cost) if total.HasField("cost") else Decimal(0),
        entries=total.entries,
        tasks=total.tasks,
        agents=agents,
        models=[Line(fmt.key_text(g.model), to_decimal(g.cost), entries=g.entries) for g in per_model],
        task_types=[
            Line(fmt.key_text(g.task_type), to_decimal(g.cost), tasks=g.tasks, entries=g.entries) for g in per_task_type
        ],
        days=days,
    )


def _per_task(cost: Decimal, tasks: int) -> Decimal:
    return (cost / tasks).quantize(Decimal("0.0001"), ROUND_HALF_UP) if tasks else Decimal(0)


def _money(value: Decimal, currency: str) -> str:
    return f"{fmt.amount(value)} {currency}"


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 32px;
       max-width: 960px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 8px; }
.caption { color: #5b6475; margin: 0 0 20px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.tile { border: 1px solid #d9dee8; border-radius: 8px; padding: 10px 16px; min-width: 140px; }
.tile .n { font-size: 20px; font-weight: 600; } .tile .t { color: #5b6475; font-size: 12px; }
svg .label, svg .value, svg .axis, svg .empty { font-size: 12px; fill: #1d2330; }
svg .axis { fill: #5b6475; } svg .grid { stroke: #e3e7ee; }
svg .bar { fill: #3b6fd8; } svg .bar.over { fill: #d8573b; } svg .allowance { fill: #e4e9f2; }
svg .limit { stroke: #1d2330; stroke-width: 2; }
table { border-collapse: collapse; margin: 8px 0 0; } td, th { padding: 3px 12px 3px 0; text-align: left; }
td.n, th.n { text-align: right; } th { color: #5b6475; font-weight: 500; border-bottom: 1px solid #d9dee8; }
.note { color: #5b6475; font-size: 12px; }
"""


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=n' if i >= numeric_from else ''}>{escape(v)}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', headers)}</tr>{body}</table>"


def _local(t: datetime, time_zone: str) -> str:
    return t.astimezone(zone(time_zone if time_zone != "UTC" else "")).strftime("%Y-%m-%d %H:%M")


def _tile(title: str, value: str) -> str:
    return f'<div class="tile"><div class="n">{escape(value)}</div><div class="t">{escape(title)}</div></div>'


def _rest(count: int, cost: Decimal, what: str, currency: str) -> str:
    return f'<p class="note">and {fmt.count(count)} more {what}, {_money(cost, currency)} together</p>' if count else ""


def render(r: Review) -> str:
    cur = r.currency
    per_task_total = _per_task(r.total, r.tasks)
    agents = [
        svg.Bar(
            a.name,
            a.spent,
            _money(a.spent, cur) + (f" of {_money(a.limit, cur)}" if a.limit is not None else ""),
            a.limit,
        )
        for a in r.agents[:CHART_ROWS]
    ]
    models = [
        svg.Bar(m.label, m.cost, f"{_money(m.cost, cur)} ({fmt.share(m.cost, r.total)})") for m in r.models[:CHART_ROWS]
    ]
    task_types = [
        svg.Bar(t.label, t.cost, f"{_money(t.cost, cur)} ({fmt.share(t.cost, r.total)})")
        for t in r.task_types[:CHART_ROWS]
    ]
    per_task = sorted((t for t in r.task_types if t.tasks), key=lambda t: (-_per_task(t.cost, t.tasks), t.label))
    per_task_bars = [
        svg.Bar(t.label, _per_task(t.cost, t.tasks), f"{_money(_per_task(t.cost, t.tasks), cur)} × {t.tasks} tasks")
        for t in per_task[:CHART_ROWS]
    ]
    top_day = max([d.cost for d in r.days] + [Decimal(0)])
    axis = [fmt.amount((top_day * i / 3).quantize(fmt.CENT, ROUND_HALF_UP)) for i in range(4)]
    days = [svg.Bar(d.label, d.cost, _money(d.cost, cur)) for d in r.days]
    scope = f"namespace {r.namespace}" if r.namespace else "every agent"
    over = [a for a in r.agents if a.limit is not None and a.spent > a.limit]
    tiles = [
        ("total spend", _money(r.total, cur)),
        ("cost entries", fmt.count(r.entries)),
        ("tasks", fmt.count(r.tasks)),
        ("cost per task", _money(per_task_total, cur) if r.tasks else "-"),
        ("agents over their limit", str(len(over))),
    ]
    sections = [
        (
            "agents",
            "Spend per agent against its limit"
            + (f" (the {CHART_ROWS} biggest of {len(r.agents)})" if len(r.agents) > CHART_ROWS else ""),
            svg.hbar_chart("chart-agents", f"Spend per agent in {r.month}", agents),
            _table(
                ["agent", "spent", "limit", "used", "tasks"],
                [
                    [
                        a.name,
                        _money(a.spent, cur),
                        _money(a.limit, cur) if a.limit is not None else "-",
                        fmt.share(a.spent, a.limit) if a.limit else "-",
                        fmt.count(a.tasks),
                    ]
                    for a in r.agents[:TABLE_ROWS]
                ],
            )
            + _rest(
                len(r.agents[TABLE_ROWS:]), sum((a.spent for a in r.agents[TABLE_ROWS:]), Decimal(0)), "agents", cur
            ),
        ),
        (
            "models",
            "Spend per model",
            svg.hbar_chart("chart-models", f"Spend per model in {r.month}", models),
            _table(
                ["model", "spent", "share", "entries"],
                [
                    [m.label, _money(m.cost, cur), fmt.share(m.cost, r.total), fmt.count(m.entries)]
                    for m in r.models[:TABLE_ROWS]
                ],
            )
            + _rest(
                len(r.models[TABLE_ROWS:]), sum((m.cost for m in r.models[TABLE_ROWS:]), Decimal(0)), "models", cur
            ),
        ),
        (
            "task-types",
            "Spend per task type",
            svg.hbar_chart("chart-task-types", f"Spend per task type in {r.month}", task_types),
            _table(
                ["task type", "spent", "share", "tasks"],
                [
                    [t.label, _money(t.cost, cur), fmt.share(t.cost, r.total), fmt.count(t.tasks)]
                    for t in r.task_types[:TABLE_ROWS]
                ],
            )
            + _rest(
                len(r.task_types[TABLE_ROWS:]),
                sum((t.cost for t in r.task_types[TABLE_ROWS:]), Decimal(0)),
                "task types",
                cur,
            ),
        ),
        (
            "daily",
            "Daily trend",
            svg.column_chart("chart-daily", f"Spend per day in {r.month}", days, axis_text=axis),
            "",
        ),
        (
            "per-task",
            "Cost per task, by task type",
            svg.hbar_chart("chart-per-task", f"Cost per task in {r.month}", per_task_bars),
            '<p class="note">spend of the task type divided by its distinct task ids; costs recorded without '
            "a task id count in the spend but not as tasks</p>",
        ),
    ]
    html = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>AgentBudget review {escape(r.month)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Spend review {escape(r.month)}</h1>",
        f'<p class="caption">{escape(scope)}, in {escape(cur)}; {escape(_local(r.start, r.time_zone))} to '
        f"{escape(_local(r.end, r.time_zone))} ({escape(r.time_zone)})</p>",
        '<div class="tiles">' + "".join(_tile(t, v) for t, v in tiles) + "</div>",
    ]
    for anchor, heading, chart, table in sections:
        html.append(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{chart}{table}</section>')
    html.append(
        '<p class="note">Spend is what was charged: commits and direct charges (holds, releases, expiries, '
        "limit changes and transfers are not spend). Limits are each budget's current spec limit for the "
        f"month (daily and weekly limits scaled to its days). Generated {escape(datetime.now(UTC).isoformat())}"
        "</p></body></html>"
    )
    return "\n".join(html) + "\n"
