"""``agentbudget demo``: five simulated agents spending through a real authority, in under a minute.

A fresh database (on the embedded PostgreSQL unless one is given), the authority in this process
on a local port, and the cast of ``demo_story`` running their tasks through the real gRPC API:
Reserve by task class (the budget's routing picks the model, the catalog prices the worst case),
Commit by usage, sandbox sessions and paid API calls. Two watchers follow the event stream: the
coordinator ("AI CEO"), which answers denials by moving budget or escalating to a human, and a
stand-in for the Kubernetes operator, which stops an agent whose budget the operator's own
decision function says must be paused (scale to zero) and restarts it when budget returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from agentbudget.client import BudgetClient, to_decimal
from agentbudget.errors import BudgetExceededError, BudgetPausedError
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.duration_pb2 import Duration

from . import app, db
from .demo_story import CAST, COORDINATOR, PRICE_CONFIG, Agent, Coordinator, Row, Story, Usage, frame, plan
from .settings import Settings
from .tables import render_table

PAUSE_EVENTS = {
    pb.EVENT_BUDGET_EXHAUSTED,
    pb.EVENT_BUDGET_PAUSED,
    pb.EVENT_BUDGET_RESUMED,
    pb.EVENT_BUDGET_TRANSFERRED,
    pb.EVENT_LIMIT_CHANGED,
}


def usd(m: object) -> Decimal:
    return to_decimal(m)  # type: ignore[arg-type]


@dataclass
class Crew:
    """The agents' shared state: who runs, who waits for the coordinator, who is paused."""

    story: Story
    echo: Callable[[str], None]
    done: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    running: dict[str, asyncio.Event] = field(default_factory=dict)
    answers: dict[str, asyncio.Queue[bool]] = field(default_factory=dict)
    told: asyncio.Event = field(default_factory=asyncio.Event)

    def tell(self, line: str, beat: str | None = None) -> None:
        self.story.tell(line, beat)
        self.echo(line)
        self.told.set()


async def run_agent(agent: Agent, client: BudgetClient, crew: Crew, seed: int, pace: float) -> None:
    name = agent.budget
    for i, usage in enumerate(plan(agent, seed)):
        while True:
            if not crew.running[name].is_set():
                crew.state[name] = "paused"
                return  # scaled to zero: a restarted agent would start over; the demo lets it rest
            crew.state[name] = "running"
            try:
                await work(agent, client, usage, f"{agent.name}-{i}", pace)
                break
            except (BudgetExceededError, BudgetPausedError):
                crew.state[name] = "waiting"
                if not await crew.answers[name].get():
                    crew.state[name] = "stopped" if crew.running[name].is_set() else "paused"
                    return
        crew.done[name] = i + 1
    crew.state[name] = "done"


async def work(agent: Agent, client: BudgetClient, u: Usage, task_id: str, pace: float) -> None:
    w = u.work
    estimate = pb.CostDetails(
        kind=pb.MODEL_INFERENCE,
        input_tokens=u.input_tokens,
        output_tokens=w.max_output,
        cache_read_tokens=u.cache_read_tokens,
        task_id=task_id,
        task_type=w.task_class,
    )
    async with client.reserve(agent.budget, details=estimate, task_class=w.task_class) as hold:
        await asyncio.sleep(pace)  # the model at work
        actual = pb.CostDetails(output_tokens=u.output_tokens)
        await hold.commit(details=actual)
    if u.sandbox_seconds:
        session = pb.CostDetails(
            kind=pb.SANDBOX,
            sandbox_class="render",
            sandbox_time=Duration(seconds=2 * u.sandbox_seconds),
            task_id=task_id,
            task_type=w.task_class,
        )
        async with client.reserve(agent.budget, details=session) as box:
            await box.commit(details=pb.CostDetails(sandbox_time=Duration(seconds=u.sandbox_seconds)))
    for api, calls in (("search", w.search_calls), ("statuspage", w.status_checks)):
        if calls:  # billed after the fact: a direct charge, recorded even past the limit
            details = pb.CostDetails(
                kind=pb.EXTERNAL_API, api_name=api, api_calls=calls, task_id=task_id, task_type=w.task_class
            )
            await client.record_cost(agent.budget, details=details)


async def coordinate(client: BudgetClient, crew: Crew, priority: dict[str, bool]) -> None:
    """The coordinating agent: alerts noted, denials answered with budget or escalated."""
    ceo = Coordinator()
    async for ev in client.watch_events():
        name = ev.budget
        if ev.type == pb.EVENT_THRESHOLD_CROSSED:
            crew.tell(
                f"ALERT     {name} crossed {ev.threshold:.0%}: "
                f"{usd(ev.spent):.2f} of {usd(ev.effective_limit):.2f} USD",
                "alert",
            )
        elif ev.type == pb.EVENT_BUDGET_EXHAUSTED:
            crew.tell(f"EXHAUSTED {name} spent {usd(ev.spent):.2f} of {usd(ev.effective_limit):.2f} USD", "exhausted")
        elif ev.type == pb.EVENT_RESERVATION_DENIED and name in crew.answers:
            remaining = usd(ev.effective_limit) - usd(ev.spent) - usd(ev.held)
            crew.tell(
                f"DENIED    {name}: a hold of {usd(ev.amount):.4f} USD does not fit ({remaining:.4f} left); "
                f"escalated to {COORDINATOR}",
                "escalated" if name != COORDINATOR else None,
            )
            own = await client.get_budget(COORDINATOR)
            amount = ceo.on_denial(name, priority, usd(own.remaining))
            if amount is None:
                crew.tell(f"CEO       no top-up for {name}: escalated to a human")
                crew.answers[name].put_nowait(False)
                continue
            await client.transfer(COORDINATOR, name, amount, reason=f"top-up after a denial ({ev.reservation_id})")
            crew.tell(f"TRANSFER  {COORDINATOR} moved {amount:.2f} USD to {name}", "transferred")
            crew.answers[name].put_nowait(True)


async def operate(client: BudgetClient, crew: Crew) -> None:
    """The operator's part, without a cluster: its decision function on each budget change."""
    from agentbudget_operator.decisions import pause_reason, wants_paused

    async for ev in client.watch_events(types=sorted(PAUSE_EVENTS)):
        name = ev.budget
        if name not in crew.running:
            continue
        budget = await client.get_budget(name)
        running = crew.running[name]
        if wants_paused(budget) and running.is_set():
            running.clear()
            crew.state[name] = "paused"
            crew.answers[name].put_nowait(False)  # an agent waiting on the coordinator stops too
            crew.tell(f"OPERATOR  scaled {name} to 0 replicas: {pause_reason(budget)}", "paused")
        elif not wants_paused(budget) and not running.is_set():
            running.set()
            crew.tell(f"OPERATOR  restored {name}: budget available again")


async def spend_report(client: BudgetClient) -> str:
    budgets = {b.name: b async for b in client.list_budgets("demo")}

    async def query(*by: pb.SpendDimension.ValueType) -> pb.QuerySpendResponse:
        req = pb.QuerySpendRequest(namespace="demo", group_by=list(by), count_tasks=True)
        resp: pb.QuerySpendResponse = await client.call(client.stub.QuerySpend, req)
        return resp

    by_budget, by_model, by_task = (
        await query(pb.SPEND_BY_BUDGET),
        await query(pb.SPEND_BY_MODEL),
        await query(pb.SPEND_BY_TASK_TYPE),
    )
    agents = [
        [
            g.budget,
            pb.Phase.Name(budgets[g.budget].phase),
            f"{usd(g.cost):.2f}",
            f"{usd(budgets[g.budget].effective_limit):.2f}",
            str(g.tasks),
            f"{usd(g.cost) / g.tasks:.3f}" if g.tasks else "-",
        ]
        for g in by_budget.groups
    ]
    models = [
        [g.model or "(no model)", f"{usd(g.cost):.2f}", str(g.entries), str(g.input_tokens), str(g.output_tokens)]
        for g in by_model.groups
    ]
    tasks = [[g.task_type or "(none)", f"{usd(g.cost):.2f}", str(g.tasks)] for g in by_task.groups]
    total = usd(by_budget.totals[0].cost) if by_budget.totals else Decimal(0)
    return "\n".join(
        [
            "Spend by agent",
            render_table(["AGENT", "PHASE", "SPENT USD", "LIMIT USD", "TASKS", "PER TASK"], agents),
            "",
            "Spend by model",
            render_table(["MODEL", "COST USD", "CHARGES", "INPUT TOKENS", "OUTPUT TOKENS"], models),
            "",
            "Spend by task type",
            render_table(["TASK TYPE", "COST USD", "TASKS"], tasks),
            "",
            f"Total: {total:.2f} USD",
        ]
    )


async def rows(client: BudgetClient, crew: Crew) -> list[Row]:
    out = []
    for agent in CAST:
        b = await client.get_budget(agent.budget)
        out.append(
            Row(
                agent.budget,
                pb.Phase.Name(b.phase),
                usd(b.spent),
                usd(b.effective_limit),
                crew.done.get(agent.budget, 0),
                agent.tasks,
                crew.state.get(agent.budget, "starting"),
            )
        )
    return out


async def run(admin_dsn: str, *, seed: int, pace: float, seconds: float, live: bool, keep: bool, out: TextIO) -> Story:
    database = f"agentbudget_demo_{uuid.uuid4().hex[:8]}"
    await _admin(admin_dsn, f'CREATE DATABASE "{database}"')
    dsn = _dsn_for(admin_dsn, database)
    started = time.monotonic()
    story = Story()
    crew = Crew(story, echo=(lambda line: None) if live else (lambda line: print(line, file=out, flush=True)))
    try:
        await db.migrate(dsn)
        with tempfile.TemporaryDirectory(prefix="agentbudget-demo-") as tmp:
            prices = Path(tmp) / "prices.yaml"
            prices.write_text(PRICE_CONFIG)
            settings = Settings(listen="127.0.0.1:0", price_config=str(prices), event_poll_seconds=0.2).validate()
            authority = await app.start(settings, dsn)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
                    client = BudgetClient(channel)
                    await _play(client, crew, seed, pace, seconds, live, started, out)
            finally:
                await authority.stop(grace=1.0)
    finally:
        if keep:
            print(f"database kept: {dsn}", file=out)
        else:
            await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return story


async def _play(
    client: BudgetClient, crew: Crew, seed: int, pace: float, seconds: float, live: bool, started: float, out: TextIO
) -> None:
    for agent in CAST:
        await client.upsert_budget(agent.budget, agent.limit, labels={"role": agent.name})
        crew.running[agent.budget] = asyncio.Event()
        crew.running[agent.budget].set()
        crew.answers[agent.budget] = asyncio.Queue()
    crew.tell(f"five agents, {sum(a.limit for a in CAST):.2f} USD of budgets; alerts at 80 %")
    watchers = [
        asyncio.create_task(coordinate(client, crew, {a.budget: a.priority for a in CAST})),
        asyncio.create_task(operate(client, crew)),
    ]
    agents = [asyncio.create_task(run_agent(a, client, crew, seed, pace)) for a in CAST]
    view = asyncio.create_task(_refresh(client, crew, started, out)) if live else None
    try:
        await asyncio.wait(agents, timeout=seconds)
        await _settle(crew)
        for agent, task in zip(CAST, agents, strict=True):
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                crew.tell(f"FAILED    {agent.budget}: {type(exc).__name__}: {exc}")
                crew.state[agent.budget] = "failed"
    finally:
        for task in [*agents, *watchers, *([view] if view else [])]:
            task.cancel()
        await asyncio.gather(*agents, *watchers, *([view] if view else []), return_exceptions=True)
    print(
        ("\x1b[H\x1b[2J" if live else "") + frame(await rows(client, crew), crew.story, time.monotonic() - started),
        file=out,
    )
    print("\n" + await spend_report(client), file=out)
    print("\nThe story:\n" + "\n".join(crew.story.checklist()), file=out, flush=True)


async def _settle(crew: Crew, deadline: float = 5.0) -> None:
    """Let the watchers finish telling what the last calls caused (an exhaustion, a pause)."""
    end = time.monotonic() + deadline
    while not crew.story.complete() and (left := end - time.monotonic()) > 0:
        crew.told.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(crew.told.wait(), left)


async def _refresh(client: BudgetClient, crew: Crew, started: float, out: TextIO) -> None:
    while True:
        text = frame(await rows(client, crew), crew.story, time.monotonic() - started)
        out.write("\x1b[H\x1b[2J" + text + "\n")
        out.flush()
        await asyncio.sleep(0.25)


def _dsn_for(admin_dsn: str, database: str) -> str:
    """The same server, another database (the query may hold a socket path: ?host=/run/...)."""
    return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{database}"))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main(admin_dsn: str, *, seed: int, pace: float, seconds: float, live: bool | None, keep: bool) -> int:
    live = sys.stdout.isatty() if live is None else live
    story = asyncio.run(run(admin_dsn, seed=seed, pace=pace, seconds=seconds, live=live, keep=keep, out=sys.stdout))
    return 0 if story.complete() else 1
