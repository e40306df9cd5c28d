"""A seeded, bounded load of agents against authority processes, and the ledger checks after it.

Each simulated agent owns one grpc.aio channel and runs a bounded number of Reserve attempts
(and a wall-clock bound). A granted hold is later committed (below, at or above the hold), released,
or left to expire with a short TTL. Everything a client learned is kept in a ``Tally``; the checks
then hold the database to it, reading the tables directly.

Agents have a role for the crash test: ``steady`` agents expect no failures at all; when their
server dies, ``failover`` agents retry the call in flight with the same id on a surviving server,
and ``vanish`` agents disappear together with their open holds (which must then expire) and come
back as a new process on the restarted server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from agentbudget.errors import error_info
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server.sql import QUERIES
from google.protobuf.duration_pb2 import Duration
from google.type.money_pb2 import Money

NANO = 1_000_000_000
CENT = NANO // 100
CALL_TIMEOUT = 15.0
# What a client may see when the server it talks to dies under it.
LOST_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]


def money(n: int) -> Money:
    return Money(currency_code="USD", units=n // NANO, nanos=n % NANO)


def nanos_of(m: Money) -> int:
    return m.units * NANO + m.nanos


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * NANO))
    return d


def describe(err: grpc.aio.AioRpcError) -> str:
    info = error_info(err)
    return f"{err.code().name}/{info.reason if info else '-'}: {err.details()}"


# -- what the clients learned ----------------------------------------------------------------------


@dataclass
class Hold:
    budget: str
    rid: str
    amount: int
    fate: str  # commit | release | expire
    ttl: float
    granted: bool | None = None  # None: the Reserve was in flight when its server died
    abandoned: bool = False  # its agent vanished before ending it
    end_sent: str | None = None  # "commit" / "release" once the ending call was sent
    end_known: bool = False  # the ending call's response arrived
    actual: int | None = None
    overrun: bool | None = None
    late: bool | None = None
    expired_first: bool = False  # the TTL ran out before the client's Release arrived
    sent_at: float = 0.0  # time.monotonic() when the Reserve was sent


@dataclass
class Tally:
    holds: dict[tuple[str, str], Hold] = field(default_factory=dict)
    denied: set[tuple[str, str]] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    lost: list[tuple[str, str, str]] = field(default_factory=list)  # (client, method, code)
    completed: int = 0  # Reserve attempts answered
    per_client_completed: Counter[str] = field(default_factory=Counter)
    per_address_ok: Counter[str] = field(default_factory=Counter)
    topups: int = 0
    duplicates: int = 0
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def advance(self, client: str) -> None:
        self.completed += 1
        self.per_client_completed[client] += 1
        async with self.progress:
            self.progress.notify_all()

    async def until(self, predicate: Callable[[], bool], stop: asyncio.Event | None = None) -> bool:
        """Wait, re-checking after every answered attempt, until ``predicate`` holds (False if
        ``stop`` is set first)."""
        async with self.progress:
            await self.progress.wait_for(lambda: predicate() or (stop is not None and stop.is_set()))
        return predicate()

    async def reached(self, n: int, stop: asyncio.Event | None = None) -> bool:
        """Wait until ``n`` attempts were answered (False if ``stop`` is set first)."""
        return await self.until(lambda: self.completed >= n, stop)


class Vanished(Exception):
    """The agent's server died and the agent goes down with it."""


class Fleet:
    """Where agents connect, and where they go when their server dies."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        self.dead: set[str] = set()
        self.restarted: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def survivor(self) -> str:
        alive = [a for a in self.addresses if a not in self.dead]
        assert alive, "no server left"
        return alive[0]


# -- one agent -------------------------------------------------------------------------------------


@dataclass
class Mix:
    """Fractions of granted holds by fate; the rest is released."""

    commit_below: float = 0.30
    commit_equal: float = 0.15
    commit_over: float = 0.07
    expire: float = 0.15
    min_amount: int = 5 * CENT
    max_amount: int = 50 * CENT
    ttl: float = 30.0  # holds meant to be ended
    expire_ttl: float = 0.3  # holds meant to expire
    duplicate: float = 0.0  # calls sent to two replicas at once, with the same id


class Agent:
    def __init__(
        self,
        name: str,
        budget: str,
        address: str,
        tally: Tally,
        rng: random.Random,
        *,
        attempts: int,
        deadline: float,
        mix: Mix,
        role: str = "steady",
        fleet: Fleet | None = None,
        twin_address: str | None = None,
    ) -> None:
        self.name = name
        self.budget = budget
        self.address = address
        self.tally = tally
        self.rng = rng
        self.attempts = attempts
        self.deadline = deadline
        self.mix = mix
        self.role = role
        self.fleet = fleet
        self.twin_address = twin_address
        self.twin_channel: grpc.aio.Channel | None = None
        self.twin: pb_grpc.BudgetAuthorityStub | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.BudgetAuthorityStub | None = None
        self.open: list[Hold] = []
        self.serial = 0
        self.generation = 0  # bumped when the agent comes back after vanishing

    def _connect(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.BudgetAuthorityStub(self.channel)
        if self.twin_address is not None and self.twin_channel is None:
            self.twin_channel = grpc.aio.insecure_channel(self.twin_address, options=CHANNEL_OPTIONS)
            self.twin = pb_grpc.BudgetAuthorityStub(self.twin_channel)

    async def _close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.twin_channel is not None:
            await self.twin_channel.close()
            self.twin_channel = self.twin = None

    async def _send(self, method: str, request: Any) -> Any:
        """Usually one call; sometimes the same request to two replicas at once (a client that
        retried too eagerly): the answers must be the same bytes, the effect single."""
        if self.twin is None or self.rng.random() >= self.mix.duplicate:
            return await self._call(method, request)
        self.tally.duplicates += 1
        results = await asyncio.gather(
            self._call(method, request),
            getattr(self.twin, method)(request, timeout=CALL_TIMEOUT),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError):
                raise r
        oks = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        if len({r.SerializeToString(deterministic=True) for r in oks}) > 1:
            self.tally.unexpected.append(f"{self.name} {method} twice: different answers {oks}")
        if not oks:
            if len({(e.code(), getattr(error_info(e), "reason", "")) for e in errors}) > 1:
                self.tally.unexpected.append(f"{self.name} {method} twice: {[describe(e) for e in errors]}")
            raise errors[0]
        for e in errors:
            # A denial not stored can be followed by a grant once room is freed; nothing else differs.
            info = error_info(e)
            if not (method == "Reserve" and info is not None and info.reason == "BUDGET_EXCEEDED"):
                self.tally.unexpected.append(f"{self.name} {method} twice: one failed: {describe(e)}")
        return oks[0]

    async def _call(self, method: str, request: Any) -> Any:
        """One RPC; a failover agent retries it with the very same request elsewhere."""
        for _ in range(5):
            assert self.stub is not None
            try:
                response = await getattr(self.stub, method)(request, timeout=CALL_TIMEOUT)
                self.tally.per_address_ok[self.address] += 1
                return response
            except grpc.aio.AioRpcError as err:
                if err.code() not in LOST_CODES or self.fleet is None or self.address not in self.fleet.dead:
                    raise
                self.tally.lost.append((self.name, method, err.code().name))
                if self.role == "vanish":
                    raise Vanished from err
                if self.role != "failover":
                    raise
                await self._close()
                self._connect(self.fleet.survivor())
        raise AssertionError(f"{self.name}: {method} failed over 5 times")

    def _new_hold(self) -> Hold:
        self.serial += 1
        m = self.mix
        amount = self.rng.randint(m.min_amount, m.max_amount)
        r = self.rng.random()
        cuts = (m.commit_below, m.commit_equal, m.commit_over, m.expire)
        kinds = ("below", "equal", "over", "expire")
        kind = "release"
        for name, share in zip(kinds, cuts, strict=True):
            if r < share:
                kind = name
                break
            r -= share
        fate = kind if kind in ("expire", "release") else "commit"
        hold = Hold(
            self.budget,
            f"{self.name}.g{self.generation}.{self.serial}",
            amount,
            fate,
            m.expire_ttl if fate == "expire" else m.ttl,
        )
        if kind == "below":
            hold.actual = self.rng.randint(0, amount - 1)
        elif kind == "equal":
            hold.actual = amount
        elif kind == "over":
            hold.actual = amount + self.rng.randint(1, 20 * CENT)
        return hold

    async def _reserve(self, hold: Hold) -> None:
        self.tally.holds[(hold.budget, hold.rid)] = hold
        req = pb.ReserveRequest(
            budget=hold.budget, reservation_id=hold.rid, amount=money(hold.amount), ttl=duration(hold.ttl)
        )
        hold.sent_at = time.monotonic()
        try:
            resp = await self._send("Reserve", req)
        except grpc.aio.AioRpcError as err:
            info = error_info(err)
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info and info.reason == "BUDGET_EXCEEDED":
                hold.granted = False
                self.tally.denied.add((hold.budget, hold.rid))
                return
            hold.granted = False
            self.tally.unexpected.append(f"{self.name} Reserve {hold.rid}: {describe(err)}")
            return
        finally:
            await self.tally.advance(self.name)
        hold.granted = True
        r = resp.reservation
        if (r.reservation_id, nanos_of(r.amount), r.state) != (hold.rid, hold.amount, pb.RESERVATION_ACTIVE):
            self.tally.unexpected.append(f"{self.name} Reserve {hold.rid}: odd response {resp}")
        if hold.fate != "expire":
            self.open.append(hold)

    async def _end(self, hold: Hold) -> None:
        self.open.remove(hold)
        hold.end_sent = hold.fate
        try:
            if hold.fate == "commit":
                assert hold.actual is not None
                resp = await self._send(
                    "Commit",
                    pb.CommitRequest(budget=hold.budget, reservation_id=hold.rid, actual=money(hold.actual)),
                )
                r = resp.reservation
                hold.overrun, hold.late = r.overrun, r.late
                if r.late and time.monotonic() - hold.sent_at < hold.ttl:
                    self.tally.unexpected.append(f"{self.name} Commit {hold.rid}: late before its TTL ran out")
                expected = (pb.RESERVATION_COMMITTED, hold.actual)
                if (r.state, nanos_of(r.committed)) != expected:
                    self.tally.unexpected.append(f"{self.name} Commit {hold.rid}: odd response {resp}")
            else:
                resp = await self._send("Release", pb.ReleaseRequest(budget=hold.budget, reservation_id=hold.rid))
                if resp.reservation.state != pb.RESERVATION_RELEASED:
                    self.tally.unexpected.append(f"{self.name} Release {hold.rid}: odd response {resp}")
            hold.end_known = True
        except grpc.aio.AioRpcError as err:
            info = error_info(err)
            if (
                hold.fate == "release"
                and err.code() == grpc.StatusCode.FAILED_PRECONDITION
                and info is not None
                and info.reason == "RESERVATION_ENDED"
                and info.metadata.get("state") == "EXPIRED"
                and time.monotonic() - hold.sent_at >= hold.ttl
            ):
                # Too slow to release: the TTL had run out. The documented answer, not a failure.
                hold.end_known = hold.expired_first = True
                return
            self.tally.unexpected.append(f"{self.name} {hold.end_sent} {hold.rid}: {describe(err)}")

    async def _vanish(self) -> None:
        """Gone with the server: nothing open is ever ended; then back as a fresh process."""
        for hold in self.open:
            hold.abandoned = True
        self.open.clear()
        await self._close()
        assert self.fleet is not None
        address = await self.fleet.restarted
        self.role = "steady"  # its second life expects no further failures
        self.generation += 1
        self._connect(address)

    async def run(self) -> None:
        self._connect(self.address)
        try:
            done = 0
            while done < self.attempts and time.monotonic() < self.deadline:
                try:
                    hold = self._new_hold()
                    done += 1
                    await self._reserve(hold)
                    cap = self.rng.randint(1, 3)
                    while len(self.open) >= cap:
                        await self._end(self.rng.choice(self.open))
                except Vanished:
                    await self._vanish()
            while self.open:
                try:
                    await self._end(self.open[0])
                except Vanished:
                    await self._vanish()
        except Exception as exc:  # a client crash is a test failure, reported with the others
            self.tally.unexpected.append(f"{self.name} crashed: {type(exc).__name__}: {exc}")
        finally:
            await self._close()


async def create_budgets(address: str, limits: dict[str, int]) -> None:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.BudgetAuthorityStub(ch)
        for name, limit in limits.items():
            await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=pb.BudgetSpec(limit=money(limit))))


async def top_up(
    addresses: list[str],
    budgets: dict[str, int],
    treasury: str,
    tally: Tally,
    stop: asyncio.Event,
    *,
    every: int,
    amount: int,
    max_count: int,
) -> None:
    """Finance: every ``every`` answered attempts, raise a hot budget's limit (alternately by a
    spec change and by a Transfer from the treasury), so that the load keeps meeting the limit."""
    names = sorted(budgets)
    channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
    try:
        for i in range(max_count):
            if not await tally.reached(every * (i + 1), stop):
                return
            stub = pb_grpc.BudgetAuthorityStub(channels[i % len(channels)])
            name = names[i % len(names)]
            try:
                if (i // len(names)) % 2 == 0:
                    budgets[name] += amount
                    spec = pb.BudgetSpec(limit=money(budgets[name]))
                    await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=spec), timeout=CALL_TIMEOUT)
                else:
                    req = pb.TransferRequest(
                        request_id=f"topup-{i}",
                        from_budget=treasury,
                        to_budget=name,
                        amount=money(amount),
                        reason="load top-up",
                    )
                    await stub.Transfer(req, timeout=CALL_TIMEOUT)
                tally.topups += 1
            except grpc.aio.AioRpcError as err:
                if err.code() not in LOST_CODES:
                    tally.unexpected.append(f"top-up {i}: {describe(err)}")
    finally:
        for ch in channels:
            await ch.close()


async def run_agents(agents: list[Agent], background: list[Callable[[asyncio.Event], Awaitable[None]]]) -> None:
    stop = asyncio.Event()
    helpers = [asyncio.create_task(b(stop)) for b in background]
    try:
        await asyncio.gather(*(a.run() for a in agents))
    finally:
        stop.set()
        for tally in {id(a.tally): a.tally for a in agents}.values():
            async with tally.progress:  # wake helpers still waiting for progress that will not come
                tally.progress.notify_all()
        for t in helpers:
            await t


# -- the checks ------------------------------------------------------------------------------------


async def wait_no_active_holds(conn: asyncpg.Connection, timeout: float = 20.0) -> int:
    """Poll until the sweepers have ended every hold; returns how many are still ACTIVE."""
    deadline = time.monotonic() + timeout
    while True:
        active: int = await conn.fetchval("SELECT count(*) FROM reservations WHERE state = 'ACTIVE'")
        if active == 0 or time.monotonic() > deadline:
            return active
        await asyncio.sleep(0.1)


async def check_balances(conn: asyncpg.Connection) -> list[str]:
    """(b) materialised balances equal the ledger sums; and the limit rule, replayed from the ledger."""
    problems = [f"audit_balances: {dict(r)}" for r in await conn.fetch(QUERIES["audit_balances"])]
    rows = await conn.fetch(
        """SELECT b.name, e.* FROM ledger_entries e JOIN budgets b ON b.id = e.budget_id ORDER BY e.id"""
    )
    running: dict[tuple[str, Any], list[int]] = defaultdict(lambda: [0, 0, 0])
    excess: dict[tuple[str, Any], int] = defaultdict(int)
    for r in rows:
        key = (r["name"], r["period_start"])
        bal = running[key]
        bal[0] += r["limit_delta"]
        bal[1] += r["spent_delta"]
        bal[2] += r["held_delta"]
        limit, spent, held = bal
        if held < 0:
            problems.append(f"{key}: held below zero after ledger row {r['id']}")
        if r["entry_type"] == "HOLD" and spent + held > limit:
            # Each budget's rows are written under its lock, so id order is the order of events.
            problems.append(
                f"{key}: HOLD {r['reservation_id']} (row {r['id']}) granted with spent {spent} + held {held}"
                f" > limit {limit}"
            )
        if r["entry_type"] in ("COMMIT", "CHARGE") and spent > limit and not r["overrun"]:
            problems.append(f"{key}: {r['entry_type']} row {r['id']} took spent {spent} past {limit}, not flagged")
        if r["entry_type"] == "COMMIT":
            over = r["spent_delta"] + r["held_delta"]  # actual - hold
            if over > 0:
                if not r["overrun"]:
                    problems.append(f"{key}: COMMIT {r['reservation_id']} over its hold by {over}, not flagged")
                excess[key] += over
        elif r["entry_type"] == "CHARGE":
            excess[key] += r["spent_delta"]  # a charge without a hold is never bounded by the limit
    # (a) spent beyond the limit only by what overruns (and charges without a hold) added.
    for p in await conn.fetch(
        "SELECT b.name, p.* FROM budget_periods p JOIN budgets b ON b.id = p.budget_id ORDER BY b.name"
    ):
        key = (p["name"], p["period_start"])
        if p["spent_nanos"] - excess[key] > p["limit_nanos"]:
            problems.append(f"{key}: spent {p['spent_nanos']} - overruns {excess[key]} > limit {p['limit_nanos']}")
        if p["spent_nanos"] > p["limit_nanos"] and excess[key] == 0:
            problems.append(f"{key}: spent {p['spent_nanos']} over limit {p['limit_nanos']} without an overrun")
    return problems


ENDING = {"COMMITTED": "COMMIT", "RELEASED": "RELEASE", "EXPIRED": "EXPIRY"}


async def check_holds(conn: asyncpg.Connection, tally: Tally, *, allow_active: bool) -> list[str]:
    """(c) every ended hold has exactly one ending row; (d) granted ids once; (e) HOLD rows = tally."""
    problems: list[str] = []
    reservations = {
        (r["name"], r["reservation_id"]): r
        for r in await conn.fetch("SELECT b.name, r.* FROM reservations r JOIN budgets b ON b.id = r.budget_id")
    }
    count_rows = await conn.fetch(
        "SELECT b.name, r.reservation_id, count(*) AS n FROM reservations r "
        "JOIN budgets b ON b.id = r.budget_id GROUP BY 1, 2 HAVING count(*) <> 1"
    )
    problems += [f"reservation {r['name']}/{r['reservation_id']} stored {r['n']} times" for r in count_rows]
    entries: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for e in await conn.fetch(
        "SELECT b.name, e.* FROM ledger_entries e JOIN budgets b ON b.id = e.budget_id "
        "WHERE e.reservation_id IS NOT NULL ORDER BY e.id"
    ):
        entries[(e["name"], e["reservation_id"])].append(e)

    for key in entries.keys() - reservations.keys():
        problems.append(f"ledger rows for {key} without a reservation: {[e['entry_type'] for e in entries[key]]}")
    for key in reservations.keys() - tally.holds.keys():
        problems.append(f"reservation {key} that no client asked for")

    for key, row in reservations.items():
        rows = entries.get(key, [])
        kinds = Counter(e["entry_type"] for e in rows)
        holds = [e for e in rows if e["entry_type"] == "HOLD"]
        if len(holds) != 1 or holds[0]["held_delta"] != row["amount_nanos"]:
            problems.append(f"{key}: HOLD rows {[(e['id'], e['held_delta']) for e in holds]} for {row['amount_nanos']}")
        endings = [e for e in rows if e["entry_type"] in ENDING.values()]
        state = row["state"]
        if state == "ACTIVE":
            if endings:
                problems.append(f"{key}: ACTIVE but has ending rows {[e['entry_type'] for e in endings]}")
            if not allow_active:
                problems.append(f"{key}: still ACTIVE")
        else:
            expected = "EXPIRY" if state == "COMMITTED" and row["late"] else ENDING[state]
            if [e["entry_type"] for e in endings] != [expected]:
                problems.append(
                    f"{key}: {state} (late={row['late']}) but ending rows {[e['entry_type'] for e in endings]}"
                )
        charges = kinds.get("CHARGE", 0)
        if charges != (1 if state == "COMMITTED" and row["late"] else 0):
            problems.append(f"{key}: {charges} CHARGE rows in state {state} late={row['late']}")
        if state == "COMMITTED":
            money_rows = [e for e in rows if e["entry_type"] in ("COMMIT", "CHARGE")]
            if sum(e["spent_delta"] for e in money_rows) != row["committed_nanos"]:
                problems.append(f"{key}: charged {[e['spent_delta'] for e in money_rows]} != {row['committed_nanos']}")

    # What the clients were told, against what was stored.
    hold_total_client = 0
    for key, hold in tally.holds.items():
        row = reservations.get(key)
        if hold.granted is False:
            if row is not None or key in entries:
                problems.append(f"{key}: denied or failed, yet stored as {row and row['state']}")
            continue
        if hold.granted is None:  # in flight when its server died: never granted, or granted and left to expire
            ok = {"EXPIRED", "ACTIVE"} if allow_active else {"EXPIRED"}
            if row is not None and (row["state"] not in ok or row["amount_nanos"] != hold.amount):
                problems.append(f"{key}: unknown Reserve stored as {row['state']} {row['amount_nanos']}")
            continue
        if row is None:
            problems.append(f"{key}: granted to the client but not stored")
            continue
        hold_total_client += hold.amount
        if row["amount_nanos"] != hold.amount:
            problems.append(f"{key}: granted {hold.amount}, stored {row['amount_nanos']}")
        state = row["state"]
        if hold.end_known:
            if hold.end_sent == "commit":
                ok = (
                    state == "COMMITTED"
                    and row["committed_nanos"] == hold.actual
                    and row["overrun"] == hold.overrun
                    and row["late"] == hold.late
                )
                assert hold.actual is not None
                if hold.actual > hold.amount and not hold.overrun:
                    problems.append(f"{key}: commit of {hold.actual} over a hold of {hold.amount} not an overrun")
            else:
                ok = state == ("EXPIRED" if hold.expired_first else "RELEASED")
            if not ok:
                problems.append(f"{key}: client ended it by {hold.end_sent}, stored {dict(row)}")
        elif hold.end_sent is not None:  # ending in flight when the server died
            allowed = {"commit": "COMMITTED", "release": "RELEASED"}[hold.end_sent]
            if state not in (allowed, "EXPIRED") and not (allow_active and state == "ACTIVE"):
                problems.append(f"{key}: {hold.end_sent} in flight, stored as {state}")
        elif hold.fate == "expire" or hold.abandoned:
            if state != "EXPIRED" and not (allow_active and state == "ACTIVE"):
                problems.append(f"{key}: never ended by its client, stored as {state}")
        else:
            problems.append(f"{key}: granted and neither ended nor abandoned by the client (state {state})")

    known = {k for k, h in tally.holds.items() if h.granted}
    hold_total_db = sum(r["amount_nanos"] for k, r in reservations.items() if k in known)
    if hold_total_db != hold_total_client:
        problems.append(f"granted by the clients' tally {hold_total_client}, in HOLD rows {hold_total_db}")
    return problems


async def check_all(dsn: str, tally: Tally, *, expiry_timeout: float = 20.0) -> dict[str, Any]:
    """Every invariant, before and after the sweepers expire what was left; returns some counts."""
    conn = await asyncpg.connect(dsn)
    try:
        # Each pass reads one snapshot: the sweepers are still at work while the first one runs.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            problems = await check_balances(conn)
            problems += await check_holds(conn, tally, allow_active=True)
        still_active = await wait_no_active_holds(conn, expiry_timeout)
        if still_active:
            problems.append(f"{still_active} holds still ACTIVE {expiry_timeout}s after the load")
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            problems += await check_balances(conn)
            problems += await check_holds(conn, tally, allow_active=False)
        states = Counter(
            {r["state"]: r["n"] for r in await conn.fetch("SELECT state, count(*) AS n FROM reservations GROUP BY 1")}
        )
        overruns = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE overrun")
        late = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE late")
    finally:
        await conn.close()
    return {"problems": problems, "states": states, "overruns": overruns, "late": late}


def summary(tally: Tally, result: dict[str, Any]) -> str:
    """One line for humans (pytest -s): what the load did."""
    holds = tally.holds.values()
    return (
        f"attempts={tally.completed} granted={sum(1 for h in holds if h.granted)} denied={len(tally.denied)}"
        f" unknown={sum(1 for h in holds if h.granted is None)} abandoned={sum(1 for h in holds if h.abandoned)}"
        f" expired_before_release={sum(1 for h in holds if h.expired_first)} lost_calls={len(tally.lost)}"
        f" topups={tally.topups} duplicates={tally.duplicates} states={dict(result['states'])}"
        f" overrun_rows={result['overruns']} late_rows={result['late']}"
    )
