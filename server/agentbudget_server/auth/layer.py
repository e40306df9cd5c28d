"""The gate in front of every BudgetAuthority RPC, as a layer around each method (see ``layers``).

The gate needs the deserialized request (the budgets it names), so the layer wraps the method's
behaviour and checks inside it; the principal is bound for the handler's execution, so the
servicer and the ledger see it. Health and reflection pass untouched: probes and ``grpcurl
list`` need no credentials. Refusals go through status.to_status like every error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .. import principal
from ..layers import Unary
from ..servicer import SERVICE
from ..status import classify, to_status
from .authenticate import Metadata
from .gate import Admission, Gate, narrow


class AuthLayer:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def unary(self, service: str, method: str, inner: Unary) -> Unary:
        return inner if service != SERVICE else self._unary(inner, method)

    def stream(self, service: str, method: str, inner: Any) -> Any:
        return inner if service != SERVICE else self._stream(inner, method)

    async def _admit(self, method: str, request: Any, context: Any) -> Admission:
        try:
            metadata: Metadata | None = context.invocation_metadata()
            admission = await self.gate.admit(method, request, metadata, context.peer())
        except Exception as exc:
            await context.abort_with_status(to_status(classify(exc)))
            raise  # abort_with_status raises; this keeps type checkers content
        narrow(request, admission.verdict)
        return admission

    def _unary(self, inner: Any, method: str) -> Callable[[Any, Any], Awaitable[Any]]:
        async def behavior(request: Any, context: Any) -> Any:
            admission = await self._admit(method, request, context)
            token = principal.bind(admission.principal)
            try:
                response = await inner(request, context)
            finally:
                principal.unbind(token)
            self.gate.changed(method, request)  # reached only if it succeeded: errors abort
            return response

        return behavior

    def _stream(self, inner: Any, method: str) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            admission = await self._admit(method, request, context)
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
