"""How the hold path's reads are planned: by primary key, however far the statistics lag behind.

A hot budget gains thousands of reservations between two ANALYZE runs. A plain ``= ANY`` join was
planned then as a scan of all the budget's reservations, so every transaction of that budget got
slower with every hold granted (seen in the hot-spot benchmark: 6 ms per batch read at 6,700
holds). The plan must not depend on the statistics being fresh.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from agentbudget_server.sql import QUERIES as Q
from conftest import make_budget, until


async def _nested_plans(conn: asyncpg.Connection) -> list[str]:
    """Collect the plans of the statements run inside functions (auto_explain, sent as notices)."""
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice"
    )
    return notices


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_batch_reads_its_reservations_by_primary_key_with_stale_statistics(authority, stub, dsn, mode):
    await make_budget(stub, "team/a", "10")
    conn = await asyncpg.connect(dsn)
    try:
        budget_id, start = await conn.fetchrow("SELECT budget_id, period_start FROM budget_periods")
        await conn.execute("ANALYZE reservations")  # statistics of an empty table ...
        await conn.execute(  # ... then many holds, as on a busy first day
            """INSERT INTO reservations (budget_id, reservation_id, period_start, amount_nanos, state,
                   created_at, expires_at, details, reserve_fingerprint, reserve_response)
               SELECT $1, 'r-' || i, $2, 1, 'ACTIVE', now(), now() + interval '1 day', '{}', '\\x00', '\\x00'
               FROM generate_series(1, 20000) AS i""",
            budget_id,
            start,
        )
        await conn.execute(f"SET plan_cache_mode = {mode}")
        wanted = [f"r-{i}" for i in range(100, 164)]
        notices = await _nested_plans(conn)
        async with conn.transaction():  # the lock and the batch's first read, as the hold path runs them
            rows = await conn.fetch(Q["lock_budget_and_read"], "team/a", False, wanted)
        async with conn.transaction():  # some calls run it again and again: plans get cached
            for _ in range(6):
                await conn.fetch(Q["lock_budget_and_read"], "team/a", False, wanted)
        assert rows[0]["budget"]["id"] == budget_id and rows[0]["period"]["period_start"] == start
        assert rows[0]["hold"] is None
        assert sorted(r["hold"]["reservation_id"] for r in rows[1:]) == sorted(wanted)
        assert len(await conn.fetch(Q["get_reservations"], budget_id, wanted)) == len(wanted)
        plan_later = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + Q["get_reservations"], budget_id, wanted))
    finally:
        await conn.close()
    probes = [n for n in notices if "FROM unnest(p_holds)" in n]
    assert len(probes) == 7, notices  # every run of the function's read is planned and shown
    for p in [*probes, plan_later]:  # the batch's read (first and cached), and a later read in the same unit
        assert "Index Scan using reservations_pkey" in p, p
        assert "reservation_id = wanted.id" in p, p  # both key columns in the index condition
        assert "Seq Scan on reservations" not in p and "Bitmap Heap Scan on reservations" not in p, p


async def test_the_lock_reads_the_period_as_the_previous_holder_left_it(authority, stub, dsn):
    """The read after the lock must see what the transaction that held the lock before wrote,
    even though the lock was requested (and its statement's snapshot taken) before that commit."""
    await make_budget(stub, "team/a", "10")
    first, second, observer = await asyncpg.connect(dsn), await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        holder = first.transaction()
        await holder.start()
        await first.fetch(Q["lock_budget_and_read"], "team/a", False, [])
        await first.execute("UPDATE budget_periods SET held_nanos = 12345")
        async with second.transaction():
            waiting = asyncio.ensure_future(second.fetch(Q["lock_budget_and_read"], "team/a", False, []))
            await until(lambda: _waits_for_lock(observer), True)
            assert not waiting.done()
            await holder.commit()
            rows = await asyncio.wait_for(waiting, 10)
        assert rows[0]["period"]["held_nanos"] == 12345
    finally:
        for conn in (first, second, observer):
            await conn.close()


async def _waits_for_lock(conn: asyncpg.Connection) -> bool:
    q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%agentbudget_lock%'"
    return bool(await conn.fetchval(q))


async def test_a_missing_budget_reads_no_row(authority, dsn):
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            assert await conn.fetch(Q["lock_budget_and_read"], "team/none", True, ["r-1"]) == []
    finally:
        await conn.close()
