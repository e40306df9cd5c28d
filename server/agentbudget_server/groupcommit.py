"""Group commit: calls for one budget that arrive while its transaction is in flight go together
into the next one.

A busy budget's row lock serialises its writers, so one transaction per call caps a hot agent at
one commit latency per hold. Here each budget has at most one transaction in flight from this
process; calls that arrive meanwhile queue, and the next transaction applies all of them (up to
``max_batch``) in arrival order — same answers as one by one, one lock, one write per table, one
commit. Calls for different budgets never wait for each other. Nobody gets a response before
the transaction holding their change has committed.

A batch is first tried without the budget's lock (``ledger.try_unlocked``: read, decide, and a
write that takes place only if the budget's version has not moved) and applied under the lock if
that does not work out. When the version did move — another process writes the same budget — the
budget's next batches take the lock straight away for a while, longer with every miss in a row
(:func:`after_batch`); so do those after a batch that needed the lock anyway.

``max_batch=1`` turns grouping off: each call is its own transaction under the lock, run by its
caller, and concurrent calls for one budget meet at the row lock (the baseline the benchmark
compares with).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, replace

import asyncpg

from . import ledger
from .accounts import Reply
from .errors import ShuttingDown

log = logging.getLogger(__name__)

Waiting = tuple[ledger.Call, "asyncio.Future[Reply]"]

# After an unlocked attempt that wrote nothing, the budget's next batches go straight to the lock:
# another process writing the same budget, or batches that need the lock anyway (an exhausted
# budget's denials, RecordCost's keys), would likely make the next attempt miss too. The first
# miss locks the next FIRST_MISS batches; each miss after that, with no write in between, doubles
# the run, up to MOST_MISS; a write without the lock starts over. So a budget that two workers
# share ends up nearly always locked (one wasted attempt per MOST_MISS batches), and one that a
# single process owns nearly never.
FIRST_MISS = 8
MOST_MISS = 1024


@dataclass(frozen=True)
class Backoff:
    """A budget's state between batches: how many more take the lock straight away, and the run
    the last miss started (0: no miss since the last write without the lock)."""

    left: int = 0
    run: int = 0


def after_batch(state: Backoff, outcome: ledger.Unlocked | None) -> Backoff:
    """The state after a batch that went ``outcome`` (None: it took the lock straight away)."""
    if outcome is None:
        return replace(state, left=max(0, state.left - 1))
    if outcome is ledger.Unlocked.WRITTEN:
        return Backoff()
    run = min(MOST_MISS, state.run * 2) if state.run else FIRST_MISS
    return Backoff(left=run, run=run)


class GroupCommit:
    def __init__(self, pool: asyncpg.Pool, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pool = pool
        self.max_batch = max_batch
        self._queues: dict[str, deque[Waiting]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.transactions = 0  # how many transactions applied how many calls (for metrics)
        self.calls = 0
        self.unlocked = dict.fromkeys(ledger.Unlocked, 0)  # how the attempts without the lock ended
        self._backoff: dict[str, Backoff] = {}  # budgets whose unlocked attempts missed lately

    async def submit(self, call: ledger.Call) -> bytes:
        """Apply one call and return its response bytes, or raise its error."""
        if self.max_batch == 1:
            self.transactions, self.calls = self.transactions + 1, self.calls + 1
            reply = (await ledger.apply(self.pool, call.budget, [call]))[0]
        else:
            reply = await self._enqueue(call)
        if reply.error is not None:
            raise reply.error
        assert reply.data is not None
        return reply.data

    def _enqueue(self, call: ledger.Call) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(call.budget)
        if queue is None:
            queue = self._queues[call.budget] = deque()
            task = asyncio.create_task(self._drain(call.budget, queue), name=f"group-commit {call.budget}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((call, future))
        return future

    async def _drain(self, budget: str, queue: deque[Waiting]) -> None:
        state = self._backoff.pop(budget, Backoff())
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
                batch = [(call, f) for call, f in batch if not f.cancelled()]  # its caller gave up
                if batch:
                    state = after_batch(state, await self._run(budget, batch, unlocked=not state.left))
        finally:
            # Nothing awaits between the last look at the queue and this: a call that arrives
            # afterwards finds no queue and starts a new drain.
            del self._queues[budget]
            if state != Backoff():
                self._backoff[budget] = state
            for _, future in queue:  # only when cancelled: those calls were never applied
                if not future.done():
                    future.set_exception(ShuttingDown("the server is shutting down; retry"))

    async def _run(self, budget: str, batch: list[Waiting], unlocked: bool) -> ledger.Unlocked | None:
        """Apply one batch and answer its callers; returns how the attempt without the lock went."""
        self.transactions, self.calls = self.transactions + 1, self.calls + len(batch)
        calls, outcome = [call for call, _ in batch], None
        try:
            if unlocked:
                outcome, replies = await ledger.try_unlocked(self.pool, budget, calls)
                self.unlocked[outcome] += 1
            if outcome is not ledger.Unlocked.WRITTEN:
                replies = await ledger.apply(self.pool, budget, calls)
        except Exception as exc:  # the database failed the transaction: every call in it failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return outcome
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)
        return outcome

    async def close(self) -> None:
        """Wait for the transactions in flight (their callers are waiting for them)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
