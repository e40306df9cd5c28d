"""What runs around every RPC (metrics, authentication), wrapped once when the server is built.

grpc.aio's server interceptors run per call: each one is awaited to look the handler up, and
each builds a new handler and a new closure around the behaviour, for every RPC. Here a
:class:`Layer` wraps each method's behaviour once, at start-up; a call then costs one coroutine
per layer. The generated ``add_*Servicer_to_server`` functions register through a
:class:`Registrar`, which collects their method handlers so they can be wrapped first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import grpc

Unary = Callable[[Any, Any], Awaitable[Any]]
Stream = Callable[[Any, Any], AsyncIterator[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only


class Layer(Protocol):
    """Wraps the behaviour of one method; returns ``inner`` itself to leave the method alone."""

    def unary(self, service: str, method: str, inner: Unary) -> Unary: ...

    # A stream handler either yields its messages (an async generator) or writes them itself and
    # returns (health's Watch does): ``inner`` is one or the other, and so is what this returns.
    def stream(self, service: str, method: str, inner: Any) -> Any: ...


def wrap(
    service: str, handlers: Mapping[str, Handler], layers: Sequence[Layer]
) -> dict[str, Handler]:
    """``handlers`` with ``layers`` applied, the first outermost (unary and server-streaming methods:
    this API has no others, reflection's bidi stream passes as it is)."""
    out: dict[str, Handler] = {}
    for method, h in handlers.items():
        out[method] = h  # client- and bidi-streaming: only reflection's, which passes unwrapped
        kinds = (
            (h.unary_unary, "unary", grpc.unary_unary_rpc_method_handler),
            (h.unary_stream, "stream", grpc.unary_stream_rpc_method_handler),
        )
        for behavior, kind, handler_of in kinds:
            if behavior is not None:
                for layer in reversed(layers):
                    behavior = getattr(layer, kind)(service, method, behavior)
                out[method] = handler_of(
                    behavior, request_deserializer=h.request_deserializer, response_serializer=h.response_serializer
                )
                break
    return out


class Registrar:
    """Stands in for the server while the generated code registers a service's handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: every generated registration also names its handlers (below)."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, Handler]
    ) -> None:
        self.services[service] = dict(handlers)

    def install(self, server: grpc.aio.Server, layers: Sequence[Layer]) -> None:
        """Register every collected service on ``server``, each method wrapped in ``layers``."""
        for service, handlers in self.services.items():
            wrapped = wrap(service, handlers, layers)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
            server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]
