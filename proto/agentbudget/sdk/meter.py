"""Meters for costs that are not tokens: sandbox time and paid API calls, priced by the
authority's configuration (``sandboxes: {small: {per_second: "0.0001"}}``,
``apis: {stripe: {per_call: "0.01"}}``).

    async with meter.sandbox(client, "team/agent", "small", max_seconds=300) as session:
        ...  # run the sandbox; the hold is max_seconds at the class's price
    # committed: the measured seconds (session.bill(seconds) to charge a provider's figure)

    async with meter.api_call(client, "team/agent", "stripe", calls=1):
        await stripe_charge(...)
    # committed: the calls made; released when the block raises
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from types import TracebackType

from google.protobuf.duration_pb2 import Duration

from ..client import BudgetClient, Hold
from ..errors import BudgetError
from ..v1 import budget_authority_pb2 as pb

log = logging.getLogger("agentbudget.sdk")
NANOS = 1_000_000_000
# Beyond max_seconds, the hold lives this long, so that a session that runs a little over is
# still committed against its hold rather than charged late.
TTL_MARGIN = timedelta(seconds=60)


def _duration_ns(nanos: int) -> Duration:
    return Duration(seconds=nanos // NANOS, nanos=nanos % NANOS)


def _seconds_ns(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"seconds must not be negative, got {seconds}")
    return round(seconds * NANOS)


class SandboxSession:
    """A hold of ``max_seconds`` of a sandbox class; on exit, a commit of the seconds measured
    (monotonic clock) — also when the block raises: the sandbox ran, so its time is charged."""

    def __init__(
        self,
        client: BudgetClient,
        budget: str,
        sandbox_class: str,
        max_seconds: float,
        *,
        ttl: timedelta | None = None,
        reservation_id: str | None = None,
        task_id: str = "",
        task_type: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        max_ns = _seconds_ns(max_seconds)
        details = pb.CostDetails(
            kind=pb.SANDBOX,
            sandbox_class=sandbox_class,
            sandbox_time=_duration_ns(max_ns),
            task_id=task_id,
            task_type=task_type,
            labels=dict(labels or {}),
        )
        if ttl is None:
            ttl = timedelta(microseconds=max_ns // 1000) + TTL_MARGIN
        self.hold: Hold = client.reserve(budget, reservation_id=reservation_id, ttl=ttl, details=details)
        self.max_seconds = max_seconds
        self._start_ns: int | None = None
        self._billed_ns: int | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the hold was granted."""
        return self.elapsed_ns / NANOS

    @property
    def elapsed_ns(self) -> int:
        return 0 if self._start_ns is None else time.monotonic_ns() - self._start_ns

    def bill(self, seconds: float) -> None:
        """Charge these seconds on exit instead of the measured ones (a provider's billed time)."""
        self._billed_ns = _seconds_ns(seconds)

    async def __aenter__(self) -> SandboxSession:
        await self.hold
        self._start_ns = time.monotonic_ns()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.hold.ended is not None:
            return  # committed or released by hand
        nanos = self._billed_ns if self._billed_ns is not None else self.elapsed_ns
        try:
            await self.hold.commit(details=pb.CostDetails(sandbox_time=_duration_ns(nanos)))
        except BudgetError as commit_error:
            if exc is None:
                raise
            log.warning("could not commit sandbox hold %s: %s", self.hold.reservation_id, commit_error)


class ApiCall:
    """A hold of ``calls`` calls of a paid API; on a normal exit, a commit of ``calls`` (set it to
    what was really made; 0 releases), on an exception a release — unless the block committed
    already (``await call.commit(n)`` for calls that are billed even though they failed)."""

    def __init__(
        self,
        client: BudgetClient,
        budget: str,
        api_name: str,
        calls: int = 1,
        *,
        ttl: timedelta | None = None,
        reservation_id: str | None = None,
        task_id: str = "",
        task_type: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if calls < 1:
            raise ValueError(f"calls must be at least 1, got {calls}")
        details = pb.CostDetails(
            kind=pb.EXTERNAL_API,
            api_name=api_name,
            api_calls=calls,
            task_id=task_id,
            task_type=task_type,
            labels=dict(labels or {}),
        )
        self.hold: Hold = client.reserve(budget, reservation_id=reservation_id, ttl=ttl, details=details)
        self.calls = calls

    async def commit(self, calls: int | None = None) -> pb.CommitResponse:
        """Charge ``calls`` (default: ``self.calls``) now."""
        n = self.calls if calls is None else calls
        if n < 1:
            # A Commit can't say "0 calls" (proto3 zero is unset: the reserve's count would be
            # charged), so nothing made means a release.
            raise ValueError("commit at least one call; release the hold when none was made")
        return await self.hold.commit(details=pb.CostDetails(api_calls=n))

    async def __aenter__(self) -> ApiCall:
        await self.hold
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.hold.ended is not None:
            return
        if exc is not None or self.calls < 1:
            try:
                await self.hold.release()
            except BudgetError as release_error:
                if exc is None:
                    raise
                log.warning("could not release API hold %s: %s", self.hold.reservation_id, release_error)
            return
        await self.commit()


def sandbox(
    client: BudgetClient,
    budget: str,
    sandbox_class: str,
    max_seconds: float,
    *,
    ttl: timedelta | None = None,
    reservation_id: str | None = None,
    task_id: str = "",
    task_type: str = "",
    labels: Mapping[str, str] | None = None,
) -> SandboxSession:
    """``async with`` a sandbox session: holds ``max_seconds`` priced, commits the seconds used."""
    return SandboxSession(
        client,
        budget,
        sandbox_class,
        max_seconds,
        ttl=ttl,
        reservation_id=reservation_id,
        task_id=task_id,
        task_type=task_type,
        labels=labels,
    )


def api_call(
    client: BudgetClient,
    budget: str,
    api_name: str,
    calls: int = 1,
    *,
    ttl: timedelta | None = None,
    reservation_id: str | None = None,
    task_id: str = "",
    task_type: str = "",
    labels: Mapping[str, str] | None = None,
) -> ApiCall:
    """``async with`` paid API calls: holds ``calls`` priced, commits them (releases on error)."""
    return ApiCall(
        client,
        budget,
        api_name,
        calls,
        ttl=ttl,
        reservation_id=reservation_id,
        task_id=task_id,
        task_type=task_type,
        labels=labels,
    )
