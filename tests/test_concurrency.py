"""Many agents, several authority processes, one database: the ledger invariants hold.

64 agents on their own channels, spread over two server processes, hammer two small budgets with
seeded random Reserve / Commit (below, at, over the hold) / Release / let-expire, while finance
raises the limits now and then. Afterwards the database itself is checked.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from loadgen import CENT, NANO, Agent, Mix, Tally, check_all, create_budgets, run_agents, summary, top_up
from procs import ServerProcess, start_all

pytestmark = pytest.mark.slow

HOT = ("load/alpha", "load/beta")
TREASURY = "load/treasury"
LIMIT = 5 * NANO
AGENTS = 64
ATTEMPTS = 40
LOAD_SECONDS = 40.0


async def test_many_agents_on_two_replicas_never_overspend(dsn: str) -> None:
    servers = start_all([ServerProcess(dsn, name=f"replica-{i}") for i in range(2)])
    try:
        addresses = [s.address for s in servers]
        limits = dict.fromkeys(HOT, LIMIT)
        await create_budgets(addresses[0], {**limits, TREASURY: 1000 * NANO})

        tally = Tally()
        rng = random.Random(20240611)
        deadline = time.monotonic() + LOAD_SECONDS
        agents = [
            Agent(
                f"agent{i:02d}",
                HOT[i % len(HOT)],
                addresses[(i // len(HOT)) % len(addresses)],
                tally,
                random.Random(rng.getrandbits(64)),
                attempts=ATTEMPTS,
                deadline=deadline,
                mix=Mix(duplicate=0.1),
                twin_address=addresses[(i // len(HOT) + 1) % len(addresses)],
            )
            for i in range(AGENTS)
        ]

        async def finance(stop: asyncio.Event) -> None:
            await top_up(addresses, limits, TREASURY, tally, stop, every=64, amount=200 * CENT, max_count=40)

        await run_agents(agents, [finance])
        for s in servers:
            assert s.alive(), f"{s.name} died under load:\n{s.log()}"

        # Every Reserve got an answer, and every denial was the documented one.
        assert tally.unexpected == []
        assert sum(tally.per_client_completed.values()) == AGENTS * ATTEMPTS, "the load ran out of time"
        granted = [h for h in tally.holds.values() if h.granted]
        assert len(granted) + len(tally.denied) == AGENTS * ATTEMPTS
        # The load really met the limit, on both replicas, with every kind of ending.
        assert tally.denied and granted
        assert all(tally.per_address_ok[a] > 0 for a in addresses)
        assert tally.topups >= 10
        assert tally.duplicates > 0
        assert any(h.overrun for h in granted)
        assert {h.fate for h in granted} == {"commit", "release", "expire"}

        result = await check_all(dsn, tally)
        print(summary(tally, result))
        assert result["problems"] == []
        states = result["states"]
        assert states["EXPIRED"] == sum(1 for h in granted if h.fate == "expire")
        assert states["RELEASED"] == sum(1 for h in granted if h.fate == "release")
        assert states["COMMITTED"] == sum(1 for h in granted if h.fate == "commit")
        assert result["late"] == 0, "no hold was committed near its TTL, so none may be late"

        for s in servers:
            assert s.stop() == 0, s.log()
    finally:
        for s in servers:
            s.cleanup()
