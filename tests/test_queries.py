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


# asyncpg warns when a connection goes back to the pool with log listeners and drops them; this
# test adds its listener again on every acquire (``setup``), so the warning is expected.
@pytest.mark.filterwarnings("ignore:.*active log listener")
async def test_a_batch_write_moves_its_budget_version_by_primary_key_among_many_budgets(authority, stub, dsn):
    """Every hold-path write moves its budget's version; with generic plans and a thousand budgets
    an `id = ANY(array)` there was planned as a scan of every budget, in every transaction."""
    import functools

    from agentbudget.v1 import budget_authority_pb2 as pb
    from agentbudget_server import db, ledger, pricing, validate, wire
    from conftest import server_settings, usd

    await make_budget(stub, "team/a", "10")
    conn = await asyncpg.connect(dsn)
    try:  # 999 more budgets: the plan depends on the table's size, not on their periods
        await conn.execute(
            """INSERT INTO budgets (name, currency, limit_nanos, period, time_zone, thresholds_ppm, paused, labels,
                   period_start, period_end, created_at, updated_at, routing, agent_principals)
               SELECT 'many/b' || i, currency, limit_nanos, period, time_zone, thresholds_ppm, paused, labels,
                   period_start, period_end, created_at, updated_at, routing, agent_principals
               FROM budgets, generate_series(1, 999) AS i WHERE name = 'team/a'"""
        )
    finally:  # and no ANALYZE since: as right after they were created, before autovacuum's
        await conn.close()
    notices: list[str] = []

    async def listen(c: asyncpg.Connection) -> None:  # on every acquire: a release drops listeners
        c.add_log_listener(lambda _conn, message: notices.append(message.message))

    s = server_settings()
    encode = functools.partial(wire.hold_response, pb.ReserveResponse)

    def reserve(rid: str) -> ledger.Call:
        req = pb.ReserveRequest(budget="team/a", reservation_id=rid, amount=usd("0.01"))
        return ledger.reserve(validate.reserve(req, s.default_ttl, s.min_ttl, s.max_ttl), encode, pricing.load(""))

    pool = await asyncpg.create_pool(  # as the server's pool: generic plans, no reset on release
        dsn,
        min_size=1,
        max_size=1,
        init=_nested_plans,  # auto_explain on the pool's connection (kept: no reset on release)
        setup=listen,
        connection_class=db.PooledConnection,
        server_settings={"plan_cache_mode": "force_generic_plan"},
    )
    try:
        for i in range(3):  # each way the hold path writes: without the lock, and under it
            how, _ = await ledger.try_unlocked(pool, "team/a", [reserve(f"u{i}")])
            assert how is ledger.Unlocked.WRITTEN
            [reply] = await ledger.apply(pool, "team/a", [reserve(f"l{i}")])
            assert reply.error is None
    finally:
        await pool.close()
    writes = [n for n in notices if "WITH versions AS" in n]
    assert len(writes) == 6, notices
    for plan in writes:
        assert "Seq Scan on budgets" not in plan, plan
        assert "budgets_pkey" in plan, plan
