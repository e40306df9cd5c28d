"""A thin typed client of the budget authority.

    async with agentbudget.client.connect("localhost:50051") as client:
        async with client.reserve("team/research", "0.50") as hold:
            ...  # the costly operation
            await hold.commit("0.42")

A hold that is neither committed nor released when the block ends is released (an exception
included). Calls that fail as UNAVAILABLE or RATE_LIMITED are retried with the same id, which
the authority makes safe.

In a pod, ``connect_from_env()`` takes the target, TLS and token from the environment
(``AGENTBUDGET_TARGET``, ``AGENTBUDGET_TLS``, ``AGENTBUDGET_CA_FILE``, ``AGENTBUDGET_TOKEN_FILE``, ...;
see :class:`agentbudget.credentials.ConnectionOptions`)::

    async with agentbudget.client.connect_from_env() as client:
        ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.money_pb2 import Money

from .credentials import (
    DEFAULT_TARGET,
    ConnectionOptions,
    TokenSource,
    bearer_interceptors,
    channel_credentials,
    is_loopback,
)
from .errors import BudgetError, RateLimitedError, UnavailableError, from_rpc_error
from .v1 import budget_authority_pb2 as pb
from .v1 import budget_authority_pb2_grpc as pb_grpc

Amount: TypeAlias = Decimal | str | int | Money
NANOS = 1_000_000_000
MAX_BACKOFF = 2.0
log = logging.getLogger("agentbudget.client")
MAX_RATE_LIMIT_WAIT = 5.0  # however long the authority asks a rate-limited caller to wait


def money(amount: Amount, currency: str = "USD") -> Money:
    """An exact Money from a Decimal, a decimal string or an int (never a float)."""
    if isinstance(amount, Money):
        return amount
    if isinstance(amount, float):
        raise TypeError("money must not be a float; use Decimal or a string")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -9:
        raise ValueError(f"more precision than a nano: {amount!r}")
    total = int(value * NANOS)
    sign = -1 if total < 0 else 1
    units, nanos = divmod(abs(total), NANOS)
    return Money(currency_code=currency, units=sign * units, nanos=sign * nanos)


def to_decimal(m: Money) -> Decimal:
    return Decimal(m.units) + Decimal(m.nanos) / NANOS


def new_id(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _duration(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d


def _timestamp(value: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


class Hold:
    """A reservation: awaitable (reserves), and an async context manager that releases on exit."""

    def __init__(self, client: BudgetClient, request: pb.ReserveRequest, currency: str = "USD") -> None:
        self._client = client
        self.request = request
        self.currency = request.amount.currency_code if request.HasField("amount") else currency
        self.response: pb.ReserveResponse | None = None
        self.reservation: pb.Reservation | None = None
        self.ended: pb.Reservation | None = None

    @property
    def reservation_id(self) -> str:
        return self.request.reservation_id

    async def _reserve(self) -> Hold:
        if self.reservation is None:
            resp: pb.ReserveResponse = await self._client.call(self._client.stub.Reserve, self.request)
            self.response = resp
            self.reservation = resp.reservation
        return self

    def __await__(self) -> Generator[None, None, Hold]:
        return self._reserve().__await__()

    async def __aenter__(self) -> Hold:
        return await self._reserve()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.ended is None and self.reservation is not None:
            try:
                await self.release()
            except BudgetError:
                if exc is None:
                    raise  # otherwise the original exception is the one that matters

    async def commit(self, actual: Amount | None = None, details: pb.CostDetails | None = None) -> pb.CommitResponse:
        """Charge ``actual``; without it, the authority prices the usage in ``details`` (over the reserve's)."""
        resp = await self._client.commit(self.request.budget, self.reservation_id, actual, self.currency, details)
        self.ended = resp.reservation
        return resp

    async def release(self) -> pb.ReleaseResponse:
        resp = await self._client.release(self.request.budget, self.reservation_id)
        self.ended = resp.reservation
        return resp


class BudgetClient:
    def __init__(self, channel: grpc.aio.Channel, *, retries: int = 3, backoff: float = 0.1) -> None:
        self.channel = channel
        self.stub = pb_grpc.BudgetAuthorityStub(channel)
        self.retries = retries
        self.backoff = backoff

    async def __aenter__(self) -> BudgetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def call(self, method: Any, request: Any) -> Any:
        """``method(request)``, retried with the very same request while the authority is unavailable
        or rate-limits the caller (after the wait it asks for)."""
        attempt = 0
        while True:
            try:
                return await method(request)
            except grpc.aio.AioRpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not isinstance(error, UnavailableError | RateLimitedError) or attempt >= self.retries:
                    raise error from rpc_error
            attempt += 1
            delay = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
            if isinstance(error, RateLimitedError) and error.retry_after_ms > 0:
                delay = min(MAX_RATE_LIMIT_WAIT, error.retry_after_ms / 1000)
            await asyncio.sleep(delay)

    # -- agents --------------------------------------------------------------------------------

    def reserve(
        self,
        budget: str,
        amount: Amount | None = None,
        *,
        currency: str = "USD",
        reservation_id: str | None = None,
        ttl: timedelta | None = None,
        details: pb.CostDetails | None = None,
        task_class: str = "",
    ) -> Hold:
        """A hold of ``amount``; without it, the authority prices the worst case in ``details`` (and
        a ``task_class`` lets the budget's routing pick the model)."""
        req = pb.ReserveRequest(
            budget=budget,
            reservation_id=reservation_id or new_id(),
            amount=money(amount, currency) if amount is not None else None,
            details=details,
            task_class=task_class,
        )
        if ttl is not None:
            req.ttl.CopyFrom(_duration(ttl))
        return Hold(self, req, currency)

    async def commit(
        self,
        budget: str,
        reservation_id: str,
        actual: Amount | None,
        currency: str = "USD",
        details: pb.CostDetails | None = None,
    ) -> pb.CommitResponse:
        """Charge ``actual``, or (None) the authority's price of the usage in ``details``."""
        req = pb.CommitRequest(
            budget=budget,
            reservation_id=reservation_id,
            actual=money(actual, currency) if actual is not None else None,
            details=details,
        )
        resp: pb.CommitResponse = await self.call(self.stub.Commit, req)
        return resp

    async def release(self, budget: str, reservation_id: str) -> pb.ReleaseResponse:
        req = pb.ReleaseRequest(budget=budget, reservation_id=reservation_id)
        resp: pb.ReleaseResponse = await self.call(self.stub.Release, req)
        return resp

    async def record_cost(
        self,
        budget: str,
        amount: Amount | None = None,
        *,
        currency: str = "USD",
        request_id: str | None = None,
        details: pb.CostDetails | None = None,
    ) -> pb.RecordCostResponse:
        """Charge ``amount``, or (None) the authority's price of the usage in ``details``."""
        req = pb.RecordCostRequest(
            budget=budget,
            request_id=request_id or new_id("c"),
            amount=money(amount, currency) if amount is not None else None,
            details=details,
        )
        resp: pb.RecordCostResponse = await self.call(self.stub.RecordCost, req)
        return resp

    async def route(self, budget: str, task_class: str) -> pb.RouteResponse:
        """The tier and model ``task_class`` routes to under ``budget``'s routing."""
        req = pb.RouteRequest(budget=budget, task_class=task_class)
        resp: pb.RouteResponse = await self.call(self.stub.Route, req)
        return resp

    async def get_budget(self, name: str) -> pb.Budget:
        resp: pb.GetBudgetResponse = await self.call(self.stub.GetBudget, pb.GetBudgetRequest(name=name))
        return resp.budget

    # -- administration ------------------------------------------------------------------------

    async def upsert_budget(
        self,
        name: str,
        limit: Amount,
        *,
        currency: str = "USD",
        period: pb.Period.ValueType = pb.MONTHLY,
        time_zone: str = "",
        alert_thresholds: Iterable[float] = (),
        paused: bool = False,
        labels: dict[str, str] | None = None,
    ) -> pb.UpsertBudgetResponse:
        spec = pb.BudgetSpec(
            limit=money(limit, currency),
            period=period,
            time_zone=time_zone,
            alert_thresholds=list(alert_thresholds),
            paused=paused,
            labels=labels or {},
        )
        resp: pb.UpsertBudgetResponse = await self.call(
            self.stub.UpsertBudget, pb.UpsertBudgetRequest(name=name, spec=spec)
        )
        return resp

    async def delete_budget(self, name: str, *, allow_missing: bool = False) -> bool:
        req = pb.DeleteBudgetRequest(name=name, allow_missing=allow_missing)
        resp: pb.DeleteBudgetResponse = await self.call(self.stub.DeleteBudget, req)
        return resp.deleted

    async def list_budgets(self, namespace: str = "", page_size: int = 0) -> AsyncIterator[pb.Budget]:
        token = ""
        while True:
            req = pb.ListBudgetsRequest(namespace=namespace, page_size=page_size, page_token=token)
            resp: pb.ListBudgetsResponse = await self.call(self.stub.ListBudgets, req)
            for budget in resp.budgets:
                yield budget
            token = resp.next_page_token
            if not token:
                return

    async def transfer(
        self,
        from_budget: str,
        to_budget: str,
        amount: Amount,
        *,
        currency: str = "USD",
        reason: str = "",
        request_id: str | None = None,
    ) -> pb.TransferResponse:
        req = pb.TransferRequest(
            request_id=request_id or new_id("t"),
            from_budget=from_budget,
            to_budget=to_budget,
            amount=money(amount, currency),
            reason=reason,
        )
        resp: pb.TransferResponse = await self.call(self.stub.Transfer, req)
        return resp

    async def ledger_entries(
        self,
        budget: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[pb.LedgerEntry]:
        token = ""
        while True:
            req = pb.ListLedgerEntriesRequest(budget=budget, page_size=page_size, page_token=token)
            if start is not None:
                req.start_time.CopyFrom(_timestamp(start))
            if end is not None:
                req.end_time.CopyFrom(_timestamp(end))
            resp: pb.ListLedgerEntriesResponse = await self.call(self.stub.ListLedgerEntries, req)
            for entry in resp.entries:
                yield entry
            token = resp.next_page_token
            if not token:
                return

    async def watch_events(
        self,
        *,
        after_id: int = 0,
        budgets: Iterable[str] = (),
        types: Iterable[pb.EventType.ValueType] = (),
    ) -> AsyncIterator[pb.Event]:
        """Events after ``after_id``, then live ones; resume after a break from the last id seen."""
        req = pb.WatchEventsRequest(after_id=after_id, budgets=list(budgets), types=list(types))
        try:
            async for resp in self.stub.WatchEvents(req):
                yield resp.event
        except grpc.aio.AioRpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error


def connect(
    target: str,
    *,
    tls: bool | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    server_name: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    retries: int = 3,
    options: list[tuple[str, object]] | None = None,
) -> BudgetClient:
    """A client over a new channel.

    TLS with ``tls=True`` (the server verified against the system roots, or against ``ca_file``, a PEM
    bundle; a ``cert_file`` + ``key_file`` client certificate adds mTLS), or with ``credentials`` made
    by the caller; a CA file or a client certificate alone turn TLS on too (``tls=False`` with one is
    an error). Else plaintext. ``server_name`` is the name the server's certificate must carry when
    it is not the target's host (an IP address, a port-forward). ``token`` or ``token_file`` is sent
    on every call as ``authorization: Bearer <token>``; a token file is re-read when it changes
    (projected tokens rotate).
    """
    return _connect(
        target,
        ConnectionOptions(tls, ca_file, cert_file, key_file, token, token_file, server_name),
        credentials=credentials,
        retries=retries,
        options=options,
    )


def connect_from_env(
    target: str | None = None,
    *,
    tls: bool | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    server_name: str | None = None,
    env: Mapping[str, str] | None = None,
    retries: int = 3,
    options: list[tuple[str, object]] | None = None,
) -> BudgetClient:
    """``connect()`` with the agents' environment as defaults: ``AGENTBUDGET_TARGET`` (default
    127.0.0.1:50051), ``AGENTBUDGET_TLS`` (1/0), ``AGENTBUDGET_CA_FILE``, ``AGENTBUDGET_CERT_FILE``,
    ``AGENTBUDGET_KEY_FILE``, ``AGENTBUDGET_TOKEN``, ``AGENTBUDGET_TOKEN_FILE`` (default
    /var/run/secrets/agentbudget.io/token when it exists), ``AGENTBUDGET_SERVER_NAME``.

    An argument that is not None wins over its variable; an empty string turns a file off.
    """
    env = os.environ if env is None else env
    resolved = ConnectionOptions.from_env(env)
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "tls": tls,
            "ca_file": ca_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "server_name": server_name,
        }.items()
        if v is not None
    }
    if token is not None or token_file is not None:  # one source of token replaces the other
        given.update(token=token or None, token_file=token_file or None)
    if tls is False:  # plaintext asked for: the environment's files do not apply
        given = {"ca_file": None, "cert_file": None, "key_file": None, **given}
    cleared: dict[str, Any] = {k: v if v != "" else None for k, v in given.items()}
    resolved = dataclasses.replace(resolved, **cleared)
    return _connect(
        target or env.get("AGENTBUDGET_TARGET") or DEFAULT_TARGET, resolved, retries=retries, options=options
    )


def _connect(
    target: str,
    opts: ConnectionOptions,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    retries: int = 3,
    options: list[tuple[str, object]] | None = None,
) -> BudgetClient:
    if credentials is not None and opts.uses_tls:
        raise ValueError("give credentials or TLS options, not both")
    if opts.uses_tls:
        credentials = channel_credentials(opts.ca_file, opts.cert_file, opts.key_file)
    channel_options = list(options or [])
    if opts.server_name and credentials is not None:
        channel_options.append(("grpc.ssl_target_name_override", opts.server_name))
    source = TokenSource(opts.token, opts.token_file)
    interceptors = bearer_interceptors(source) if source else None
    if source and credentials is None and not is_loopback(target):
        log.warning("sending a bearer token to %s without TLS", target)
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=channel_options or None, interceptors=interceptors)
    else:
        channel = grpc.aio.secure_channel(
            target, credentials, options=channel_options or None, interceptors=interceptors
        )
    return BudgetClient(channel, retries=retries)
