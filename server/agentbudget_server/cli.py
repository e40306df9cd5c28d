"""The ``agentbudget`` command: serve, migrate, and a scripting client of the authority."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from agentbudget.client import BudgetClient, to_decimal
from agentbudget.errors import BudgetError
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from . import db, logs, reports_cli, settings
from .auth import cli as auth_cli
from .connection_args import add_connection_arguments, connect_from_args
from .errors import AuthorityError
from .tables import render_table

log = logging.getLogger("agentbudget")
PERIODS = {"monthly": pb.MONTHLY, "weekly": pb.WEEKLY, "daily": pb.DAILY}


def _dsn(s: settings.Settings) -> str:
    if s.database_url:
        return s.database_url
    where = settings.data_dir(s)
    dsn = db.start_embedded(where)
    log.warning("no database configured: using an embedded PostgreSQL in %s (%s)", where, dsn)
    return dsn


def cmd_serve(args: argparse.Namespace) -> int:
    from . import app

    s = settings.load(args)
    logs.setup(s.log_level, s.log_format)
    if s.workers > 1:
        from . import workers

        return workers.serve(s, _dsn(s))
    asyncio.run(app.serve(s, _dsn(s)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    logs.setup("WARNING", "text")
    s = settings.Settings(database_url=args.database_url, data_dir=args.data_dir)
    return demo.main(_dsn(s), seed=args.seed, pace=args.pace, seconds=args.seconds, live=args.live, keep=args.keep)


def cmd_migrate(args: argparse.Namespace) -> int:
    s = settings.load(args)
    logs.setup(s.log_level, s.log_format)
    applied = asyncio.run(db.migrate(_dsn(s)))
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def _money(m: Any) -> str:
    value = to_decimal(m)
    shown = f"{value:.2f}" if value == value.quantize(Decimal("0.01")) else f"{value.normalize():f}"
    return f"{shown} {m.currency_code}".strip()


def _phase(value: pb.Phase.ValueType) -> str:
    return pb.Phase.Name(value)


def _budget_rows(budgets: Sequence[pb.Budget]) -> list[list[str]]:
    return [
        [
            b.name,
            _phase(b.phase),
            _money(b.effective_limit),
            _money(b.spent),
            _money(b.held),
            _money(b.remaining),
            f"{b.utilization:.0%}",
            b.period_start.ToDatetime().date().isoformat(),
        ]
        for b in budgets
    ]


BUDGET_HEADERS = ["NAME", "PHASE", "LIMIT", "SPENT", "HELD", "REMAINING", "USED", "PERIOD"]


def _emit(args: argparse.Namespace, message: Message | list[Message], table: tuple[list[str], list[list[str]]]) -> None:
    if args.json:
        data: Any = [MessageToDict(m) for m in message] if isinstance(message, list) else MessageToDict(message)
        print(json.dumps(data, indent=2))
    else:
        print(render_table(*table))


async def _client_command(args: argparse.Namespace) -> int:
    async with connect_from_args(args) as client:
        handler = CLIENT_COMMANDS[args.command if args.command != "budget" else f"budget {args.action}"]
        await handler(client, args)
    return 0


async def _budget_set(client: BudgetClient, args: argparse.Namespace) -> None:
    labels = dict(kv.split("=", 1) for kv in args.label)
    resp = await client.upsert_budget(
        args.name,
        args.limit,
        currency=args.currency,
        period=PERIODS[args.period],
        time_zone=args.time_zone,
        alert_thresholds=args.threshold,
        paused=args.paused,
        labels=labels,
    )
    _emit(args, resp, (BUDGET_HEADERS, _budget_rows([resp.budget])))


async def _budget_get(client: BudgetClient, args: argparse.Namespace) -> None:
    b = await client.get_budget(args.name)
    _emit(args, b, (BUDGET_HEADERS, _budget_rows([b])))


async def _budget_list(client: BudgetClient, args: argparse.Namespace) -> None:
    found = [b async for b in client.list_budgets(args.namespace)]
    _emit(args, list(found), (BUDGET_HEADERS, _budget_rows(found)))


async def _budget_delete(client: BudgetClient, args: argparse.Namespace) -> None:
    deleted = await client.delete_budget(args.name, allow_missing=args.allow_missing)
    print(json.dumps({"deleted": deleted}) if args.json else ("deleted" if deleted else "not found"))


def _details(args: argparse.Namespace) -> pb.CostDetails:
    return pb.CostDetails(task_id=args.task_id, task_type=args.task_type, model=args.model)


def _reservation_table(r: pb.Reservation) -> tuple[list[str], list[list[str]]]:
    state = pb.ReservationState.Name(r.state).removeprefix("RESERVATION_")
    committed = _money(r.committed) if r.HasField("committed") else "-"
    flags = ",".join(f for f, on in (("overrun", r.overrun), ("late", r.late)) if on) or "-"
    return (
        ["BUDGET", "RESERVATION", "STATE", "AMOUNT", "COMMITTED", "FLAGS", "EXPIRES"],
        [
            [
                r.budget,
                r.reservation_id,
                state,
                _money(r.amount),
                committed,
                flags,
                r.expire_time.ToJsonString(),
            ]
        ],
    )


async def _reserve(client: BudgetClient, args: argparse.Namespace) -> None:
    hold = client.reserve(
        args.budget,
        args.amount,
        currency=args.currency,
        reservation_id=args.id,
        ttl=timedelta(seconds=args.ttl) if args.ttl else None,
        details=_details(args),
    )
    await hold
    assert hold.reservation is not None
    _emit(args, hold.reservation, _reservation_table(hold.reservation))


async def _commit(client: BudgetClient, args: argparse.Namespace) -> None:
    resp = await client.commit(args.budget, args.reservation_id, args.actual, args.currency, _details(args))
    _emit(args, resp, _reservation_table(resp.reservation))


async def _release(client: BudgetClient, args: argparse.Namespace) -> None:
    resp = await client.release(args.budget, args.reservation_id)
    _emit(args, resp, _reservation_table(resp.reservation))


async def _transfer(client: BudgetClient, args: argparse.Namespace) -> None:
    resp = await client.transfer(
        args.from_budget,
        args.to_budget,
        args.amount,
        currency=args.currency,
        reason=args.reason,
        request_id=args.id,
    )
    _emit(args, resp, (BUDGET_HEADERS, _budget_rows([resp.from_budget, resp.to_budget])))


async def _ledger(client: BudgetClient, args: argparse.Namespace) -> None:
    entries = [e async for e in client.ledger_entries(args.budget)]
    rows = [
        [
            str(e.id),
            e.create_time.ToJsonString(),
            pb.EntryType.Name(e.type).removeprefix("ENTRY_"),
            _money(e.spent_delta),
            _money(e.held_delta),
            _money(e.limit_delta),
            e.reservation_id or e.request_id,
            ",".join(f for f, on in (("overrun", e.overrun), ("late", e.late)) if on),
        ]
        for e in entries
    ]
    headers = ["ID", "TIME", "TYPE", "SPENT", "HELD", "LIMIT", "ID", "FLAGS"]
    _emit(args, list(entries), (headers, rows))


def _event_line(e: pb.Event) -> str:
    kind = pb.EventType.Name(e.type).removeprefix("EVENT_")
    extra = f" threshold={e.threshold:g}" if e.threshold else ""
    if e.HasField("amount"):
        extra += f" amount={_money(e.amount)}"
    if e.counterparty:
        extra += f" counterparty={e.counterparty}"
    return (
        f"{e.id:>6} {e.create_time.ToJsonString()} {kind:<20} {e.budget} phase={_phase(e.phase)} "
        f"spent={_money(e.spent)} limit={_money(e.effective_limit)}{extra}"
    )


async def _events(client: BudgetClient, args: argparse.Namespace) -> None:
    types = [pb.EventType.Value("EVENT_" + t.upper()) for t in args.type]
    stream = client.watch_events(after_id=args.after, budgets=args.budget, types=types).__aiter__()
    while True:
        try:
            # Without --follow: what has happened so far, then stop once the stream is quiet.
            event = await (stream.__anext__() if args.follow else asyncio.wait_for(stream.__anext__(), 1.0))
        except (StopAsyncIteration, TimeoutError):
            return
        print(json.dumps(MessageToDict(event)) if args.json else _event_line(event), flush=True)


def cmd_price(args: argparse.Namespace) -> int:
    """What a usage would cost, from the same catalog the authority uses (no server needed)."""
    from . import pricing
    from .model import Details
    from .money import format_nanos

    catalog = pricing.load(args.price_config)
    details = Details(
        model=args.model or None,
        provider=args.provider or None,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        cache_read_tokens=args.cache_read_tokens,
        cache_write_tokens=args.cache_write_tokens,
        sandbox_class=args.sandbox_class or None,
        sandbox_nanos=int(args.seconds * 1_000_000_000) if args.seconds else None,
        api_name=args.api or None,
        api_calls=args.calls,
    )
    try:
        cost = catalog.cost(details)
    except AuthorityError as exc:
        print(f"agentbudget: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"cost": format_nanos(cost, 2), "currency": pricing.CURRENCY, "catalog": catalog.version}))
    else:
        print(f"{format_nanos(cost, 2)} {pricing.CURRENCY}  ({catalog.version})")
    return 0


async def _route(client: BudgetClient, args: argparse.Namespace) -> None:
    resp = await client.call(client.stub.Route, pb.RouteRequest(budget=args.budget, task_class=args.task_class))
    _emit(
        args, resp, (["BUDGET", "TASK CLASS", "TIER", "MODEL"], [[args.budget, args.task_class, resp.tier, resp.model]])
    )


CLIENT_COMMANDS = {
    "budget set": _budget_set,
    "budget get": _budget_get,
    "budget list": _budget_list,
    "budget delete": _budget_delete,
    "reserve": _reserve,
    "commit": _commit,
    "release": _release,
    "transfer": _transfer,
    "ledger": _ledger,
    "events": _events,
    "route": _route,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentbudget", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the budget authority (embedded PostgreSQL when no database is set)")
    settings.add_arguments(serve)
    serve.set_defaults(run=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply the database migrations")
    settings.add_arguments(migrate)
    migrate.set_defaults(run=cmd_migrate)

    client = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(client)
    client.add_argument("--json", action="store_true", help="machine-readable output")
    client.add_argument("--currency", default="USD")

    budget = sub.add_parser("budget", help="create, show, list or delete budgets")
    actions = budget.add_subparsers(dest="action", required=True)
    bset = actions.add_parser("set", parents=[client], help="create or update a budget")
    bset.add_argument("name", help="namespace/name")
    bset.add_argument("--limit", required=True, help="decimal amount per period, e.g. 20.00")
    bset.add_argument("--period", choices=sorted(PERIODS), default="monthly")
    bset.add_argument("--time-zone", default="")
    bset.add_argument("--threshold", type=float, action="append", default=[], help="alert threshold (0..1)")
    bset.add_argument("--paused", action=argparse.BooleanOptionalAction, default=False)
    bset.add_argument("--label", action="append", default=[], help="key=value")
    for action in ("get", "delete"):
        p = actions.add_parser(action, parents=[client])
        p.add_argument("name")
        if action == "delete":
            p.add_argument("--allow-missing", action="store_true")
    blist = actions.add_parser("list", parents=[client])
    blist.add_argument("--namespace", default="")

    details = argparse.ArgumentParser(add_help=False)
    details.add_argument("--task-id", default="")
    details.add_argument("--task-type", default="")
    details.add_argument("--model", default="")

    reserve = sub.add_parser("reserve", parents=[client, details], help="hold an amount")
    reserve.add_argument("budget")
    reserve.add_argument("amount")
    reserve.add_argument("--id", default=None, help="reservation id (default: a new one)")
    reserve.add_argument("--ttl", type=float, default=0, help="seconds")
    commit = sub.add_parser("commit", parents=[client, details], help="charge the actual cost of a hold")
    commit.add_argument("budget")
    commit.add_argument("reservation_id")
    commit.add_argument("actual")
    release = sub.add_parser("release", parents=[client], help="void a hold")
    release.add_argument("budget")
    release.add_argument("reservation_id")
    transfer = sub.add_parser("transfer", parents=[client], help="move limit between budgets")
    transfer.add_argument("from_budget")
    transfer.add_argument("to_budget")
    transfer.add_argument("amount")
    transfer.add_argument("--reason", default="")
    transfer.add_argument("--id", default=None)
    ledger = sub.add_parser("ledger", parents=[client], help="the audit trail of a budget")
    ledger.add_argument("budget")
    events = sub.add_parser("events", parents=[client], help="the event stream")
    events.add_argument("--after", type=int, default=0, help="start after this event id")
    events.add_argument("--budget", action="append", default=[])
    events.add_argument("--type", action="append", default=[], help="e.g. threshold_crossed")
    events.add_argument("--follow", action="store_true", help="keep streaming live events")
    route = sub.add_parser("route", parents=[client], help="the tier and model a task class routes to")
    route.add_argument("budget")
    route.add_argument("task_class")
    price = sub.add_parser("price", help="what a usage would cost (the authority's catalog, locally)")
    price.add_argument("--model", default="")
    price.add_argument("--provider", default="")
    price.add_argument("--input-tokens", type=int, default=None)
    price.add_argument("--output-tokens", type=int, default=None)
    price.add_argument("--cache-read-tokens", type=int, default=None)
    price.add_argument("--cache-write-tokens", type=int, default=None)
    price.add_argument("--sandbox-class", default="")
    price.add_argument("--seconds", type=Decimal, default=Decimal(0))
    price.add_argument("--api", default="")
    price.add_argument("--calls", type=int, default=None)
    price.add_argument("--price-config", default=os.environ.get("AGENTBUDGET_PRICE_CONFIG", ""))
    price.add_argument("--json", action="store_true")
    price.set_defaults(run=cmd_price)
    reports_cli.add_parsers(sub)
    auth_cli.add_parsers(sub)
    demo = sub.add_parser("demo", help="five simulated agents against a real authority, in under a minute")
    demo.add_argument(
        "--database-url",
        default=os.environ.get("AGENTBUDGET_DATABASE_URL", ""),
        help="a PostgreSQL allowed to CREATE DATABASE (default: the embedded one); the demo database is dropped",
    )
    demo.add_argument("--data-dir", default=settings.Settings.data_dir, help="of the embedded PostgreSQL")
    demo.add_argument("--seed", type=int, default=7, help="the same seed tells the same story")
    demo.add_argument("--pace", type=float, default=0.12, help="seconds each model call takes")
    demo.add_argument("--seconds", type=float, default=50.0, help="stop the agents after this long")
    demo.add_argument("--live", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")
    demo.add_argument("--keep", action="store_true", help="keep the demo's database")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "run"):
        try:
            return int(args.run(args))
        except ValueError as exc:
            print(f"agentbudget: {exc}", file=sys.stderr)
            return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_client_command(args))
        return 130
    except BudgetError as exc:
        print(f"agentbudget: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"agentbudget: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
