"""A replica is killed (SIGKILL) under load: nothing is lost, nothing is doubled, holds still end.

Two authority processes share one database. When some of the load is done, one of them is killed
without warning. Its agents see UNAVAILABLE; half of them retry the call in flight with the same
id on the surviving replica and carry on, the other half vanish with their open holds (an agent
host lost along with the replica) and come back on a restarted replica. The surviving replica
keeps serving throughout. Afterwards every abandoned hold must expire, and the ledger invariants
of the concurrency test hold.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from loadgen import CENT, NANO, Agent, Fleet, Mix, Tally, check_all, create_budgets, run_agents, summary, top_up
from procs import ServerProcess, start_all

pytestmark = pytest.mark.slow

HOT = ("crash/alpha", "crash/beta")
TREASURY = "crash/treasury"
AGENTS_PER_SERVER = 20
ATTEMPTS = 40
LOAD_SECONDS = 40.0
KILL_AFTER = 0.3  # of all Reserve attempts answered


async def test_killing_a_replica_mid_load_loses_and_doubles_nothing(dsn: str) -> None:
    doomed, survivor = start_all([ServerProcess(dsn, name="doomed"), ServerProcess(dsn, name="survivor")])
    restarted = ServerProcess(dsn, name="restarted")
    try:
        limits = dict.fromkeys(HOT, 5 * NANO)
        await create_budgets(survivor.address, {**limits, TREASURY: 1000 * NANO})
        fleet = Fleet([doomed.address, survivor.address])
        tally = Tally()
        rng = random.Random(1337)
        deadline = time.monotonic() + LOAD_SECONDS
        # Short TTLs everywhere: what the vanished agents held must expire soon after the kill.
        mix = Mix(ttl=3.0, expire_ttl=0.3)
        agents: list[Agent] = []
        for server, roles in ((doomed, ("failover", "vanish")), (survivor, ("steady",))):
            for i in range(AGENTS_PER_SERVER):
                agents.append(
                    Agent(
                        f"{server.name}{i:02d}",
                        HOT[i % len(HOT)],
                        server.address,
                        tally,
                        random.Random(rng.getrandbits(64)),
                        attempts=ATTEMPTS,
                        deadline=deadline,
                        mix=mix,
                        role=roles[(i // len(HOT)) % len(roles)],
                        fleet=fleet,
                    )
                )
        total = len(agents) * ATTEMPTS
        at_kill: dict[str, int] = {}

        async def killer(stop: asyncio.Event) -> None:
            # Mid-load, at a moment when an agent about to vanish holds two holds: its next call
            # can end at most one of them, so at least one is left behind for the sweepers.
            vanishing = [a for a in agents if a.role == "vanish"]

            def ripe() -> bool:
                return tally.completed >= total * KILL_AFTER and any(len(a.open) >= 2 for a in vanishing)

            if not await tally.until(ripe, stop):
                return
            fleet.dead.add(doomed.address)  # first, so that agents know what the failure means
            doomed.kill()
            at_kill.update(tally.per_address_ok)
            try:
                await restarted.start_async()
            except BaseException as exc:  # the vanished agents wait for it: let them fail, not hang
                fleet.restarted.set_exception(RuntimeError(f"restart failed: {exc}"))
                raise
            fleet.restarted.set_result(restarted.address)

        async def finance(stop: asyncio.Event) -> None:
            await top_up([survivor.address], limits, TREASURY, tally, stop, every=64, amount=200 * CENT, max_count=20)

        await run_agents(agents, [killer, finance])

        assert at_kill, "the load finished before the kill"
        assert not doomed.alive()
        assert survivor.alive(), survivor.log()
        assert restarted.alive(), restarted.log()
        # Nobody saw INTERNAL / UNKNOWN or any other surprise; every attempt got its answer.
        assert tally.unexpected == []
        assert sum(tally.per_client_completed.values()) == total, "the load ran out of time"
        # The agents of the killed replica, and only they, saw it go, as UNAVAILABLE.
        doomed_agents = {a.name for a in agents if a.name.startswith("doomed")}
        assert {name for name, _, _ in tally.lost} == doomed_agents
        assert {code for _, _, code in tally.lost} <= {"UNAVAILABLE", "CANCELLED"}
        # The survivor kept serving after the kill, and the restarted replica took over.
        assert tally.per_address_ok[survivor.address] > at_kill.get(survivor.address, 0)
        assert tally.per_address_ok[restarted.address] > 0

        abandoned = [h for h in tally.holds.values() if h.granted and h.abandoned and not h.end_sent]
        assert abandoned, "some granted holds were left behind by the vanished agents"
        result = await check_all(dsn, tally)
        print(summary(tally, result))
        assert result["problems"] == []
        assert result["states"]["ACTIVE"] == 0

        for s in (survivor, restarted):
            assert s.stop() == 0, s.log()
    finally:
        for s in (doomed, survivor, restarted):
            s.cleanup()
