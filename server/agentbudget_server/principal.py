"""Who is calling: the authenticated principal of the current call, for authorization and audit.

The authentication layer sets it for the duration of each call; the ledger reads it when a call
is planned (so a call applied in a batch with others keeps its own), and records it on every
ledger row and event the call causes. Without authentication (the development mode) there is
none and nothing is recorded.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

ADMIN = "admin"
COORDINATOR = "coordinator"
AGENT = "agent"
VIEWER = "viewer"
ROLES = (ADMIN, COORDINATOR, AGENT, VIEWER)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``name`` as recorded in the ledger, e.g.
    "system:serviceaccount:demo:research" or "apikey:finance"."""

    name: str
    role: str
    # Budget name patterns the role applies to ("demo/*", "team/research", "*"); an agent may
    # also act on every budget that names it among its agent principals.
    scope: tuple[str, ...] = ()


_CURRENT: ContextVar[Principal | None] = ContextVar("agentbudget_principal", default=None)


def current() -> Principal | None:
    return _CURRENT.get()


def current_name() -> str | None:
    p = _CURRENT.get()
    return None if p is None else p.name


def bind(principal: Principal | None) -> object:
    """Set the current principal; returns a token for :func:`unbind`."""
    return _CURRENT.set(principal)


def unbind(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]
