"""``agentbudget report``, ``top`` and ``verify``: spend reports, a live utilization view, the audit.

``report`` and ``top`` are clients of the authority (``QuerySpend``, ``ListBudgets``); ``verify``
reads the database itself, since it checks what the authority wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agentbudget.client import BudgetClient, to_decimal
from agentbudget.errors import BudgetError, InvalidRequestError
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from . import audit, report_ranges, review, settings
from . import report_text as fmt
from .connection_args import add_connection_arguments, connect_from_args
from .money import format_nanos
from .periods import zone
from .tables import render_table

DIMENSIONS = {
    "budget": pb.SPEND_BY_BUDGET,
    "agent": pb.SPEND_BY_BUDGET,
    "model": pb.SPEND_BY_MODEL,
    "task_type": pb.SPEND_BY_TASK_TYPE,
    "task-type": pb.SPEND_BY_TASK_TYPE,
    "kind": pb.SPEND_BY_KIND,
    "day": pb.SPEND_BY_DAY,
    "week": pb.SPEND_BY_WEEK,
    "month": pb.SPEND_BY_MONTH,
}
COLUMN = {
    pb.SPEND_BY_BUDGET: "budget",
    pb.SPEND_BY_MODEL: "model",
    pb.SPEND_BY_TASK_TYPE: "task_type",
    pb.SPEND_BY_KIND: "kind",
    pb.SPEND_BY_DAY: "day",
    pb.SPEND_BY_WEEK: "week",
    pb.SPEND_BY_MONTH: "month",
}
KINDS = {
    "model_inference": pb.MODEL_INFERENCE,
    "model": pb.MODEL_INFERENCE,
    "sandbox": pb.SANDBOX,
    "external_api": pb.EXTERNAL_API,
    "api": pb.EXTERNAL_API,
    "other": pb.OTHER,
    "none": pb.COST_KIND_UNSPECIFIED,
}
BAR_WIDTH = 24


# -- report ------------------------------------------------------------------------------------


def _ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def group_by(text: str) -> list[pb.SpendDimension.ValueType]:
    dims = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in DIMENSIONS:
            raise ValueError(f"--by: unknown dimension {part!r} (budget, model, task_type, kind, day, week, month)")
        dims.append(DIMENSIONS[part])
    return dims


def _now(args: argparse.Namespace) -> datetime:
    if not args.now:
        return datetime.now(UTC)
    return report_ranges.instant(args.now, datetime.now(UTC), args.time_zone, "--now")


def build_request(args: argparse.Namespace) -> tuple[pb.QuerySpendRequest, tuple[datetime | None, datetime | None]]:
    try:
        zone(args.time_zone)  # an unknown zone is bad input here, before any range uses it
    except ValueError as exc:
        raise ValueError(f"--time-zone: {exc}") from None
    start, end = report_ranges.resolve(args.period, args.since, args.until, _now(args), args.time_zone)
    labels = {}
    for kv in args.label:
        key, sep, value = kv.partition("=")
        if not sep:
            raise ValueError(f"--label: {kv!r} is not key=value")
        labels[key] = value
    kinds = []
    for k in args.kind:
        if k.lower() not in KINDS:
            raise ValueError(f"--kind: unknown kind {k!r} ({', '.join(sorted(KINDS))})")
        kinds.append(KINDS[k.lower()])
    req = pb.QuerySpendRequest(
        budgets=args.budget,
        namespace=args.namespace,
        kinds=kinds,
        models=args.model,
        task_types=args.task_type,
        labels=labels,
        principals=args.principal,
        group_by=group_by(args.by),
        time_zone=args.time_zone,
        currency=args.currency,
        count_tasks=args.tasks,
    )
    if start is not None:
        req.start_time.CopyFrom(_ts(start))
    if end is not None:
        req.end_time.CopyFrom(_ts(end))
    return req, (start, end)


async def fetch(client: BudgetClient, req: pb.QuerySpendRequest, top: int) -> pb.QuerySpendResponse:
    """The first ``top`` groups (0: all of them), paging as needed; totals from the first page."""
    out = pb.QuerySpendResponse()
    page = pb.QuerySpendRequest()
    page.CopyFrom(req)
    while True:
        page.page_size = min(1000, top - len(out.groups)) if top else 1000
        resp: pb.QuerySpendResponse = await client.call(client.stub.QuerySpend, page)
        if not page.page_token:
            out.totals.extend(resp.totals)
            out.group_count = resp.group_count
        out.groups.extend(resp.groups)
        if not resp.next_page_token or (top and len(out.groups) >= top):
            return out
        page.page_token = resp.next_page_token


def _key(g: pb.SpendGroup, dim: pb.SpendDimension.ValueType) -> str:
    if dim == pb.SPEND_BY_BUDGET:
        return g.budget
    if dim == pb.SPEND_BY_MODEL:
        return fmt.key_text(g.model)
    if dim == pb.SPEND_BY_TASK_TYPE:
        return fmt.key_text(g.task_type)
    if dim == pb.SPEND_BY_KIND:
        return fmt.kind(g.kind)
    return g.bucket


def _scope_text(req: pb.QuerySpendRequest, span: tuple[datetime | None, datetime | None]) -> str:
    """What the report covers, in words: its filters and its time range."""
    tz = zone(req.time_zone)

    def shown(t: datetime | None, open_text: str) -> str:
        return t.astimezone(tz).strftime("%Y-%m-%d %H:%M") if t else open_text

    scope = [", ".join(req.budgets)] if req.budgets else []
    scope += [f"namespace {req.namespace}"] if req.namespace else []
    scope += [f"kind {', '.join(fmt.kind(k) for k in req.kinds)}"] if req.kinds else []
    scope += [f"model {', '.join(fmt.key_text(m) for m in req.models)}"] if req.models else []
    scope += [f"task type {', '.join(fmt.key_text(t) for t in req.task_types)}"] if req.task_types else []
    scope += [f"label {k}={v}" for k, v in sorted(req.labels.items())]
    scope += [f"principal {', '.join(fmt.key_text(p) for p in req.principals)}"] if req.principals else []
    scope += [f"{req.currency} budgets"] if req.currency else []
    of = f" of {'; '.join(scope)}" if scope else ""
    return f"spend{of} from {shown(span[0], 'the beginning')} to {shown(span[1], 'now')} ({req.time_zone or 'UTC'})"


def _drop_empty_columns(
    headers: list[str], rows: list[list[str]], optional: set[str]
) -> tuple[list[str], list[list[str]]]:
    """Token and sandbox columns that are zero throughout say nothing: leave them out."""
    keep = [i for i, h in enumerate(headers) if h not in optional or any(r[i] not in ("0", "0s") for r in rows)]
    return [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]


TIME = (pb.SPEND_BY_DAY, pb.SPEND_BY_WEEK, pb.SPEND_BY_MONTH)
TREND_BAR = 30


def _sort_key(g: pb.SpendGroup, dims: Sequence[pb.SpendDimension.ValueType]) -> tuple[Any, ...]:
    return tuple(g.bucket_start.ToNanoseconds() if d in TIME else _key(g, d) for d in dims)


def in_order(req: pb.QuerySpendRequest, resp: pb.QuerySpendResponse, sort: str) -> bool:
    """Reorders the groups by their keys (a trend reads in time order); True when it did."""
    dims = list(req.group_by)
    by_key = sort == "key" or (not sort and bool(dims) and dims[0] in TIME)
    if by_key and dims:
        ordered = sorted(resp.groups, key=lambda g: _sort_key(g, dims))
        del resp.groups[:]
        resp.groups.extend(ordered)
    return by_key and bool(dims)


def _trend_bar(cost: Decimal, top: Decimal) -> str:
    return "█" * max(1 if cost > 0 else 0, int(cost / top * TREND_BAR + Decimal("0.5"))) if top > 0 else ""


def render_table_report(
    req: pb.QuerySpendRequest,
    resp: pb.QuerySpendResponse,
    span: tuple[datetime | None, datetime | None],
    trend: bool = False,
) -> str:
    """``trend``: the groups are in time order; a bar column shows each one's cost."""
    dims = list(req.group_by)
    totals = {t.cost.currency_code: to_decimal(t.cost) for t in resp.totals}
    usage = ["INPUT TOK", "OUTPUT TOK", "CACHE TOK", "SANDBOX"]
    headers = [COLUMN[d].upper().replace("_", " ") for d in dims] + ["COST", "SHARE", "ENTRIES"]
    headers += ["TASKS"] if req.count_tasks else []
    headers += usage

    def numbers(g: pb.SpendGroup, share: str) -> list[str]:
        row = [fmt.money(g.cost), share, fmt.count(g.entries)]
        row += [fmt.count(g.tasks)] if req.count_tasks else []
        cache = g.cache_read_tokens + g.cache_write_tokens
        tokens = [fmt.count(g.input_tokens), fmt.count(g.output_tokens), fmt.count(cache)]
        return [*row, *tokens, fmt.duration(g.sandbox_time)]

    def share(g: pb.SpendGroup) -> str:
        return fmt.share(to_decimal(g.cost), totals.get(g.cost.currency_code, Decimal(0)))

    rows = [[_key(g, d) for d in dims] + numbers(g, share(g)) for g in resp.groups]
    trend = trend and bool(dims) and dims[0] in TIME
    if trend:
        top = max((to_decimal(g.cost) for g in resp.groups), default=Decimal(0))
        headers.append("")
        rows = [[*r, _trend_bar(to_decimal(g.cost), top)] for r, g in zip(rows, resp.groups, strict=True)]
    if dims:
        rows += [
            ["TOTAL"] + [""] * (len(dims) - 1) + numbers(t, "100.0%") + ([""] if trend else []) for t in resp.totals
        ]
    else:
        headers[0:0] = [""]
        rows = [["TOTAL", *numbers(t, "100.0%")] for t in resp.totals]
    lines = [_scope_text(req, span)]
    if not resp.totals:
        lines.append("nothing was spent")
        return "\n".join(lines)
    lines.append(render_table(*_drop_empty_columns(headers, rows, set(usage))))
    if dims and len(resp.groups) < resp.group_count:
        lines.append(f"(the top {len(resp.groups)} of {resp.group_count} groups; the total covers all)")
    return "\n".join(lines)


def _group_dict(g: pb.SpendGroup, dims: Sequence[pb.SpendDimension.ValueType], tasks: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dims:
        if d == pb.SPEND_BY_KIND:
            out["kind"] = pb.CostKind.Name(g.kind) if g.kind else ""
        elif d in (pb.SPEND_BY_DAY, pb.SPEND_BY_WEEK, pb.SPEND_BY_MONTH):
            out[COLUMN[d]] = g.bucket
            out["bucket_start"] = g.bucket_start.ToJsonString()
        else:
            out[COLUMN[d]] = getattr(g, COLUMN[d])
    out.update(
        cost=fmt.amount(to_decimal(g.cost)),
        currency=g.cost.currency_code,
        entries=g.entries,
        input_tokens=g.input_tokens,
        output_tokens=g.output_tokens,
        cache_read_tokens=g.cache_read_tokens,
        cache_write_tokens=g.cache_write_tokens,
        sandbox_seconds=f"{fmt.seconds(g.sandbox_time).normalize():f}",
    )
    if tasks:
        out["tasks"] = g.tasks
    return out


def render_json_report(
    req: pb.QuerySpendRequest, resp: pb.QuerySpendResponse, span: tuple[datetime | None, datetime | None]
) -> str:
    dims = list(req.group_by)
    data = {
        "start": span[0].isoformat() if span[0] else None,
        "end": span[1].isoformat() if span[1] else None,
        "time_zone": req.time_zone or "UTC",
        "group_by": [COLUMN[d] for d in dims],
        "groups": [_group_dict(g, dims, req.count_tasks) for g in resp.groups],
        "totals": [_group_dict(t, [], req.count_tasks) for t in resp.totals],
        "group_count": resp.group_count,
    }
    return json.dumps(data, indent=2)


def render_csv_report(req: pb.QuerySpendRequest, resp: pb.QuerySpendResponse) -> str:
    dims = list(req.group_by)
    rows = [_group_dict(g, dims, req.count_tasks) for g in resp.groups] if dims else []
    if not dims:
        rows = [_group_dict(t, [], req.count_tasks) for t in resp.totals]
    out = io.StringIO()
    bucketed = any(d in (pb.SPEND_BY_DAY, pb.SPEND_BY_WEEK, pb.SPEND_BY_MONTH) for d in dims)
    fields = [COLUMN[d] for d in dims] + (["bucket_start"] if bucketed else [])
    fields += ["cost", "currency", "entries"] + (["tasks"] if req.count_tasks else [])
    fields += ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "sandbox_seconds"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


async def _report(args: argparse.Namespace) -> None:
    async with connect_from_args(args) as client:
        if args.review:
            data = await review.gather(client, args.review, args.time_zone, args.currency or "USD", args.namespace)
            await asyncio.to_thread(Path(args.html).write_text, review.render(data), "utf-8")
            print(
                f"wrote {args.html}: {len(data.agents)} agents, {fmt.amount(data.total)} {data.currency} "
                f"in {data.month}"
            )
            return
        req, span = build_request(args)
        resp = await fetch(client, req, args.top)
    trend = in_order(req, resp, args.sort)
    if args.format == "json":
        print(render_json_report(req, resp, span))
    elif args.format == "csv":
        print(render_csv_report(req, resp))
    else:
        print(render_table_report(req, resp, span, trend))


def _run(coro: Any) -> int:
    try:
        asyncio.run(coro)
    except InvalidRequestError as exc:
        print(f"agentbudget: {exc}", file=sys.stderr)
        return 2
    except BudgetError as exc:
        print(f"agentbudget: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader (| head) has seen enough
        sys.stdout = open(os.devnull, "w")  # so that the flush at exit does not fail again
    except OSError as exc:  # the review page's file, say
        print(f"agentbudget: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.json:
        args.format = "json"
    if args.review and not args.html:
        raise ValueError("--review needs --html PATH")
    if args.html and not args.review:
        raise ValueError("--html goes with --review YYYY-MM")
    if args.top < 0:
        raise ValueError("--top must not be negative")
    return _run(_report(args))


# -- top ---------------------------------------------------------------------------------------


def bar(b: pb.Budget, width: int = BAR_WIDTH) -> str:
    """Spent as full blocks, held as shaded ones, the rest light; past the limit it ends in '!'."""
    limit = to_decimal(b.effective_limit)
    spent, held = to_decimal(b.spent), to_decimal(b.held)
    if limit <= 0:
        full = width if spent > 0 else 0
        shaded = 0
    else:
        full = min(width, int(spent / limit * width + Decimal("0.5")))
        shaded = min(width - full, int(held / limit * width + Decimal("0.5")))
    cells = "█" * full + "▒" * shaded + "░" * (width - full - shaded)
    return f"[{cells}]{'!' if limit > 0 and spent > limit else ' '}"


def render_top(budgets: Sequence[pb.Budget], now: datetime, sort: str = "used") -> str:
    keys = {
        "used": lambda b: (-b.utilization, b.name),
        "spent": lambda b: (-to_decimal(b.spent), b.name),
        "name": lambda b: (0, b.name),
    }
    ordered = sorted(budgets, key=keys[sort])
    rows = [
        [
            b.name,
            pb.Phase.Name(b.phase),
            bar(b),
            f"{b.utilization:.0%}",
            fmt.money(b.spent),
            fmt.money(b.effective_limit),
            fmt.money(b.held),
            fmt.money(b.remaining),
            b.period_end.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M"),
        ]
        for b in ordered
    ]
    spent: dict[str, Decimal] = {}
    limit: dict[str, Decimal] = {}
    for b in budgets:
        cur = b.effective_limit.currency_code
        spent[cur] = spent.get(cur, Decimal(0)) + to_decimal(b.spent)
        limit[cur] = limit.get(cur, Decimal(0)) + to_decimal(b.effective_limit)
    fleet = ", ".join(f"{fmt.amount(spent[c])} of {fmt.amount(limit[c])} {c}" for c in sorted(spent)) or "no budgets"
    phases = {p: sum(1 for b in budgets if b.phase == p) for p in (pb.WARNING, pb.EXHAUSTED, pb.PAUSED)}
    flags = ", ".join(f"{n} {pb.Phase.Name(p).lower()}" for p, n in phases.items() if n)
    header = f"agentbudget top  {now.strftime('%Y-%m-%d %H:%M:%S')} UTC  {len(budgets)} budgets  spent {fleet}"
    header += f"  ({flags})" if flags else ""
    table = render_table(["NAME", "PHASE", "USED", "", "SPENT", "LIMIT", "HELD", "REMAINING", "PERIOD ENDS"], rows)
    return f"{header}\n{table}" if rows else header


async def _top(args: argparse.Namespace) -> None:
    async with connect_from_args(args) as client:
        while True:
            budgets = [b async for b in client.list_budgets(args.namespace)]
            frame = render_top(budgets, datetime.now(UTC), args.sort)
            if args.once:
                print(frame)
                return
            # Home, clear, draw: one write per frame, so the view does not flicker.
            sys.stdout.write("\x1b[H\x1b[2J" + frame + f"\n\nrefreshing every {args.interval:g}s; Ctrl-C quits\n")
            sys.stdout.flush()
            await asyncio.sleep(args.interval)


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ValueError("--interval must be positive")
    return _run(_top(args))


# -- verify ------------------------------------------------------------------------------------


def _nanos(value: Any) -> str:
    return format_nanos(int(value))


def render_findings(f: audit.Findings) -> str:
    lines = []
    if f.balances:
        rows = [
            [
                str(r["name"]),
                r["period_start"].isoformat(),  # type: ignore[attr-defined]
                f"{_nanos(r['limit_nanos'])} / {_nanos(r['ledger_limit'])}",
                f"{_nanos(r['spent_nanos'])} / {_nanos(r['ledger_spent'])}",
                f"{_nanos(r['held_nanos'])} / {_nanos(r['ledger_held'])} / {_nanos(r['active_holds'])}",
            ]
            for r in f.balances
        ]
        lines.append(f"{len(f.balances)} period balances differ from their ledger (stored / ledger):")
        lines.append(render_table(["BUDGET", "PERIOD", "LIMIT", "SPENT", "HELD / ACTIVE HOLDS"], rows))
    if f.holds:
        rows = [
            [
                str(r["name"]),
                str(r["reservation_id"]),
                str(r["state"]),
                _nanos(r["amount_nanos"]),
                str(r["holds"]),
                str(r["endings"]),
                str(r["entries"] or "-"),
            ]
            for r in f.holds
        ]
        lines.append(f"{len(f.holds)} holds disagree with their ledger rows:")
        lines.append(render_table(["BUDGET", "RESERVATION", "STATE", "AMOUNT", "HOLDS", "ENDINGS", "ENTRIES"], rows))
    if f.rollup:
        rows = [
            [
                str(r["rollup"]),
                str(r["name"]),
                str(r["bucket"]),
                f"{r['kind'] or '-'} {r['model'] or '-'} {r['task_type'] or '-'}",
                f"{_nanos(r['rollup_cost'])} / {_nanos(r['ledger_cost'])}",
                f"{r['rollup_entries']} / {r['ledger_entries']}",
            ]
            for r in f.rollup
        ]
        lines.append(f"{len(f.rollup)} spend rollup rows differ from the ledger (rollup / ledger):")
        lines.append(render_table(["ROLLUP", "BUDGET", "FROM", "KIND MODEL TASK TYPE", "COST", "ENTRIES"], rows))
    checked = f"{f.periods} periods, {f.reservations} holds, {f.entries} ledger entries"
    if f.ok:
        lines.append(f"ok: every balance, hold and spend sum matches the ledger ({checked})")
    else:
        lines.append(f"MISMATCH: the ledger and what was derived from it differ ({checked} checked)")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    from .cli import _dsn  # the same database resolution as serve and migrate

    findings = asyncio.run(audit.verify(_dsn(settings.load(args))))
    if args.json:
        found = {"balances": findings.balances, "holds": findings.holds, "rollup": findings.rollup}
        data = {
            "ok": findings.ok,
            "checked": {"periods": findings.periods, "holds": findings.reservations, "entries": findings.entries},
            **{name: [{k: _plain(v) for k, v in r.items()} for r in rows] for name, rows in found.items()},
        }
        print(json.dumps(data, indent=2))
    else:
        print(render_findings(findings))
    return 0 if findings.ok else 1


# -- the parsers -------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """``report``, ``top`` and ``verify``, on the ``agentbudget`` command's subparsers."""
    report = sub.add_parser(
        "report",
        help="spend by budget, model, task type, kind and day / week / month",
        description="Committed spend (commits and direct charges), most expensive group first.",
    )
    add_connection_arguments(report)
    report.add_argument("--by", default="", help="comma-separated: budget, model, task_type, kind, day, week, month")
    report.add_argument(
        "--period",
        help="YYYY, YYYY-MM, YYYY-Www, YYYY-MM-DD, today, yesterday, this-week, last-week, this-month, last-month",
    )
    report.add_argument("--since", help="a duration back from now (30m, 12h, 7d, 2w), a date or a time")
    report.add_argument("--until", help="the end (exclusive), as --since")
    report.add_argument("--now", default="", help="the time relative ranges count from (default: now)")
    report.add_argument("--time-zone", default="", help="IANA zone of days, weeks, months and dates (default UTC)")
    report.add_argument("--budget", action="append", default=[], help="only this budget (repeatable)")
    report.add_argument("--namespace", default="", help="only budgets of this namespace")
    report.add_argument("--kind", action="append", default=[], help="model, sandbox, api, other or none (repeatable)")
    report.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    report.add_argument("--task-type", action="append", default=[], help="only this task type (repeatable)")
    report.add_argument("--label", action="append", default=[], help="key=value the cost must carry (repeatable)")
    report.add_argument(
        "--principal", action="append", default=[], help="only costs this principal caused (repeatable; '' = none)"
    )
    report.add_argument("--currency", default="", help="only budgets in this currency")
    report.add_argument("--tasks", action="store_true", help="also count distinct task ids (reads the ledger)")
    report.add_argument("--top", type=int, default=0, help="only the N most expensive groups (default: all)")
    report.add_argument(
        "--sort",
        choices=("cost", "key"),
        default="",
        help="most expensive first (cost) or by the groups' keys (default: cost, by time when --by starts with a time)",
    )
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--json", action="store_true", help="the same as --format json")
    report.add_argument("--review", default="", metavar="YYYY-MM", help="write the monthly review page (with --html)")
    report.add_argument("--html", default="", metavar="PATH", help="where --review writes its page")
    report.set_defaults(run=cmd_report)

    top = sub.add_parser("top", help="a live view of every budget's utilization")
    add_connection_arguments(top)
    top.add_argument("--namespace", default="")
    top.add_argument("--sort", choices=("used", "spent", "name"), default="used")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(run=cmd_top)

    verify = sub.add_parser(
        "verify",
        help="recompute every balance, hold and spend sum from the ledger; exit 1 on any difference",
    )
    settings.add_arguments(verify)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify)
