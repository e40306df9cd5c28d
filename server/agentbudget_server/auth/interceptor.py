"""The gate in front of every BudgetAuthority RPC, as a grpc.aio server interceptor.

The gate needs the deserialized request (the budgets it names), so the interceptor wraps the
method handler's behaviour and checks inside it; the principal is bound for the handler's
execution, so the servicer and the ledger see it. Health and reflection pass untouched: probes
and ``grpcurl list`` need no credentials. Refusals go through status.to_status like every error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from agentbudget.v1 import budget_authority_pb2 as pb

from .. import principal
from ..status import classify, to_status
from .authenticate import Metadata
from .gate import Admission, Gate, narrow

SERVICE = pb.DESCRIPTOR.services_by_name["BudgetAuthority"].full_name

if TYPE_CHECKING:  # generic in the stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_ServerInterceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service != SERVICE:
            return handler
        metadata: Metadata | None = handler_call_details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client- or bidi-streaming RPC in this API

    async def _admit(self, method: str, request: Any, metadata: Metadata | None, context: Any) -> Admission:
        try:
            admission = await self.gate.admit(method, request, metadata, context.peer())
        except Exception as exc:
            await context.abort_with_status(to_status(classify(exc)))
            raise  # abort_with_status raises; this keeps type checkers content
        narrow(request, admission.verdict)
        return admission

    def _unary(self, inner: Any, method: str, metadata: Metadata | None) -> Callable[[Any, Any], Awaitable[Any]]:
        async def behavior(request: Any, context: Any) -> Any:
            admission = await self._admit(method, request, metadata, context)
            token = principal.bind(admission.principal)
            try:
                response = await inner(request, context)
            finally:
                principal.unbind(token)
            self.gate.changed(method, request)  # reached only if it succeeded: errors abort
            return response

        return behavior

    def _stream(self, inner: Any, method: str, metadata: Metadata | None) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            admission = await self._admit(method, request, metadata, context)
            who, scoped = admission.principal, admission.verdict.filter_stream
            token = principal.bind(who)
            try:
                async for item in inner(request, context):
                    if scoped and who is not None and not await self.gate.reaches(who, item.event.budget):
                        continue
                    yield item
            finally:
                # A generator closed from another context (garbage collected) cannot reset it; its
                # context is gone with it anyway.
                with contextlib.suppress(ValueError):
                    principal.unbind(token)

        return behavior
