"""The BudgetAuthority gRPC servicer: wire in, validated command to the ledger, wire out."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from google.protobuf.message import Message

from . import budgets, ledger, pricing, spend, validate, wire
from .errors import ShuttingDown
from .events import EventHub
from .groupcommit import GroupCommit
from .layers import Registrar
from .settings import Settings
from .status import classify, to_status

SERVICE = pb.DESCRIPTOR.services_by_name["BudgetAuthority"].full_name

T = TypeVar("T")
Handler = Callable[..., Awaitable[T]]


def unary(fn: Handler[T]) -> Handler[T]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> T:
        try:
            return await fn(self, request, context)
        except Exception as exc:  # every error is mapped, in one place
            await context.abort_with_status(to_status(classify(exc)))
            raise  # abort_with_status raises; this keeps type checkers content

    return wrapper


def _encoded(response: bytes | Message) -> bytes:
    """The response serializer of the methods whose answers are stored encoded (for replays): they
    return those bytes, which go out as they are (no decoding and encoding again)."""
    return response if isinstance(response, bytes) else response.SerializeToString()


# The hold path and Transfer answer with the bytes their ledger row keeps.
ENCODED = ("Reserve", "Commit", "Release", "RecordCost", "Transfer")
_RESERVED = functools.partial(wire.hold_response, pb.ReserveResponse)
_COMMITTED = functools.partial(wire.hold_response, pb.CommitResponse)
_RELEASED = functools.partial(wire.hold_response, pb.ReleaseResponse)


class BudgetAuthority(pb_grpc.BudgetAuthorityServicer):
    def __init__(
        self, pool: asyncpg.Pool, hub: EventHub, settings: Settings, catalog: pricing.Catalog, holds: GroupCommit
    ) -> None:
        self.pool = pool
        self.holds = holds
        self.hub = hub
        self.settings = settings
        self.catalog = catalog

    def register(self, services: Registrar) -> None:
        """Add the service's handlers, those of ``ENCODED`` with their bytes passed through."""
        # The generated function calls only the two registration methods a Registrar has.
        pb_grpc.add_BudgetAuthorityServicer_to_server(self, services)  # type: ignore[arg-type]
        handlers = services.services[SERVICE]
        for method in ENCODED:
            h = handlers[method]
            assert h.unary_unary is not None
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                h.unary_unary, request_deserializer=h.request_deserializer, response_serializer=_encoded
            )

    @unary
    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> bytes:  # type: ignore[override]  # ENCODED
        s = self.settings
        cmd = validate.reserve(request, s.default_ttl, s.min_ttl, s.max_ttl)
        return await self.holds.submit(ledger.reserve(cmd, _RESERVED, self.catalog))

    @unary
    async def Commit(self, request: pb.CommitRequest, context: Any) -> bytes:  # type: ignore[override]  # ENCODED
        cmd = validate.commit(request)
        return await self.holds.submit(ledger.commit(cmd, _COMMITTED, self.catalog))

    @unary
    async def Release(self, request: pb.ReleaseRequest, context: Any) -> bytes:  # type: ignore[override]  # ENCODED
        cmd = validate.release(request)
        return await self.holds.submit(ledger.release(cmd, _RELEASED))

    @unary
    async def RecordCost(self, request: pb.RecordCostRequest, context: Any) -> bytes:  # type: ignore[override]  # ENCODED
        cmd = validate.record_cost(request)
        return await self.holds.submit(ledger.record_cost(cmd, wire.charge_response, self.catalog))

    @unary
    async def GetBudget(self, request: pb.GetBudgetRequest, context: Any) -> pb.GetBudgetResponse:
        name = validate.budget_name(request.name, "name")
        return pb.GetBudgetResponse(budget=wire.budget(await budgets.get(self.pool, name)))

    @unary
    async def UpsertBudget(self, request: pb.UpsertBudgetRequest, context: Any) -> pb.UpsertBudgetResponse:
        return wire.upsert_response(await budgets.upsert(self.pool, validate.upsert(request)))

    @unary
    async def DeleteBudget(self, request: pb.DeleteBudgetRequest, context: Any) -> pb.DeleteBudgetResponse:
        name = validate.budget_name(request.name, "name")
        return pb.DeleteBudgetResponse(deleted=await budgets.delete(self.pool, name, request.allow_missing))

    @unary
    async def ListBudgets(self, request: pb.ListBudgetsRequest, context: Any) -> pb.ListBudgetsResponse:
        namespace, after, size = validate.list_budgets(request)
        views, last = await budgets.list_budgets(self.pool, namespace, after, size)
        token = validate.encode_token("budgets", last) if last else ""
        return pb.ListBudgetsResponse(budgets=[wire.budget(v) for v in views], next_page_token=token)

    @unary
    async def Transfer(self, request: pb.TransferRequest, context: Any) -> bytes:  # type: ignore[override]  # ENCODED
        return await budgets.transfer(self.pool, validate.transfer(request), wire.transfer_response)

    @unary
    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Any
    ) -> pb.ListLedgerEntriesResponse:
        entries, last = await budgets.list_entries(self.pool, validate.list_entries(request))
        token = validate.encode_token("entries", last) if last else ""
        return pb.ListLedgerEntriesResponse(entries=[wire.entry(e) for e in entries], next_page_token=token)

    @unary
    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.RouteResponse:
        name, task_class = validate.route(request)
        tier, model, table = await budgets.route(self.pool, name, task_class)
        return pb.RouteResponse(tier=tier, model=model, routing=wire.routing_table(table))

    @unary
    async def QuerySpend(self, request: pb.QuerySpendRequest, context: Any) -> pb.QuerySpendResponse:
        query = validate.query_spend(request)
        result = await spend.query(self.pool, query)
        return wire.spend_response(result, validate.spend_page_token(request, query))

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> AsyncIterator[pb.WatchEventsResponse]:
        try:
            flt = validate.watch(request)
            async for event in self.hub.stream(flt):
                yield pb.WatchEventsResponse(event=wire.event(event))
            raise ShuttingDown("the server is shutting down; resume with after_id = the last event id seen")
        except Exception as exc:
            await context.abort_with_status(to_status(classify(exc)))
