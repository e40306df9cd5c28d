"""Domain records of the authority: what the ledger holds, as the servicer and tests see it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

import asyncpg

from .periods import PeriodKind
from .rules import Balance, Phase


def _json(raw: Any) -> Any:
    return json.loads(raw) if isinstance(raw, str) else (raw or {})


@dataclass(frozen=True)
class Details:
    """What a cost was for; every field optional."""

    kind: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    sandbox_nanos: int | None = None
    api_name: str | None = None
    api_calls: int | None = None
    task_id: str | None = None
    task_type: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    reasoning_tokens: int | None = None
    sandbox_class: str | None = None
    provider: str | None = None

    def set_fields(self) -> dict[str, Any]:
        """The fields that are set (on the hot path: no ``asdict``, which deep-copies)."""
        return {k: v for k in _DETAIL_FIELDS if (v := getattr(self, k)) is not None and v != {}}

    def is_empty(self) -> bool:
        return self is EMPTY_DETAILS or self == EMPTY_DETAILS

    def merged(self, newer: Details) -> Details:
        """``newer``'s set fields win (a commit's actual usage over the reserve's estimate)."""
        changes = newer.set_fields()
        if newer.labels:
            changes["labels"] = {**self.labels, **newer.labels}
        return replace(self, **changes)

    def to_json(self) -> str:
        return "{}" if self.is_empty() else json.dumps(self.set_fields(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | dict[str, Any] | None) -> Details:
        if raw == "{}" or not raw:
            return EMPTY_DETAILS
        data = json.loads(raw) if isinstance(raw, str) else raw
        return cls(**data)

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Details:
        labels = row["labels"]
        return cls(
            kind=row["kind"],
            model=row["model"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_read_tokens=row["cache_read_tokens"],
            cache_write_tokens=row["cache_write_tokens"],
            sandbox_nanos=row["sandbox_nanos"],
            api_name=row["api_name"],
            api_calls=row["api_calls"],
            task_id=row["task_id"],
            task_type=row["task_type"],
            labels=json.loads(labels) if isinstance(labels, str) else dict(labels or {}),
            reasoning_tokens=row["reasoning_tokens"],
            sandbox_class=row["sandbox_class"],
            provider=row["provider"],
        )


_DETAIL_FIELDS = tuple(f.name for f in fields(Details))
EMPTY_DETAILS = Details()  # shared: frozen (its labels are never changed in place)


@dataclass(frozen=True)
class Spec:
    limit: int
    currency: str
    period: PeriodKind
    time_zone: str
    thresholds: tuple[int, ...]  # parts per million, sorted
    paused: bool
    labels: dict[str, str]
    # Overrides only, shaped as an AgentBudget's spec.routing: {"tiers": {...}, "taskClasses": {...}}
    routing: dict[str, dict[str, str]] = field(default_factory=dict)
    # Who may spend from it as its agent ("system:serviceaccount:ns:sa", "apikey:name"), sorted.
    agent_principals: tuple[str, ...] = ()


@dataclass
class BudgetRow:
    id: int
    name: str
    spec: Spec
    period_start: datetime
    period_end: datetime
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int = 0  # moved by every change of the budget's money, holds or spec

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> BudgetRow:
        labels = row["labels"]
        return cls(
            id=row["id"],
            name=row["name"],
            spec=Spec(
                limit=row["limit_nanos"],
                currency=row["currency"],
                period=PeriodKind(row["period"]),
                time_zone=row["time_zone"],
                thresholds=tuple(row["thresholds_ppm"]),
                paused=row["paused"],
                labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
                routing=_json(row["routing"]),
                agent_principals=tuple(row["agent_principals"]),
            ),
            period_start=row["period_start"],
            period_end=row["period_end"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            deleted_at=row["deleted_at"],
            version=row["version"],
        )


@dataclass
class PeriodRow:
    start: datetime
    end: datetime
    balance: Balance
    crossed: frozenset[int]
    phase: Phase

    @classmethod
    def from_record(cls, row: asyncpg.Record, limit_column: str = "limit_nanos") -> PeriodRow:
        return cls(
            start=row["period_start"],
            end=row["period_end"],
            balance=Balance(row[limit_column], row["spent_nanos"], row["held_nanos"]),
            crossed=frozenset(row["crossed_ppm"]),
            phase=Phase(row["phase"]),
        )


@dataclass(frozen=True)
class BudgetView:
    """A budget and its current period, as GetBudget answers it."""

    budget: BudgetRow
    period: PeriodRow


@dataclass(frozen=True)
class ReservationView:
    budget: str
    currency: str
    reservation_id: str
    amount: int
    state: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    committed: int | None
    overrun: bool
    late: bool
    period_start: datetime
    details: Details

    @classmethod
    def from_record(cls, row: asyncpg.Record, budget: str, currency: str) -> ReservationView:
        return cls(
            budget=budget,
            currency=currency,
            reservation_id=row["reservation_id"],
            amount=row["amount_nanos"],
            state=row["state"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            ended_at=row["ended_at"],
            committed=row["committed_nanos"],
            overrun=row["overrun"],
            late=row["late"],
            period_start=row["period_start"],
            details=Details.from_json(row["details"]),
        )


@dataclass(frozen=True)
class Entry:
    """One ledger row."""

    id: int
    budget: str
    currency: str
    entry_type: str
    created_at: datetime
    period_start: datetime
    spent_delta: int
    held_delta: int
    limit_delta: int
    reservation_id: str | None
    request_id: str | None
    overrun: bool
    late: bool
    details: Details
    counterparty: str | None
    reason: str | None
    catalog_version: str | None = None
    principal: str | None = None

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Entry:
        return cls(
            id=row["id"],
            budget=row["budget_name"],
            currency=row["currency"],
            entry_type=row["entry_type"],
            created_at=row["created_at"],
            period_start=row["period_start"],
            spent_delta=row["spent_delta"],
            held_delta=row["held_delta"],
            limit_delta=row["limit_delta"],
            reservation_id=row["reservation_id"],
            request_id=row["request_id"],
            overrun=row["overrun"],
            late=row["late"],
            details=Details.from_record(row),
            counterparty=row["counterparty"],
            reason=row["reason"],
            catalog_version=row["catalog_version"],
            principal=row["principal"],
        )


@dataclass(frozen=True)
class Event:
    id: int
    event_type: str
    budget: str
    currency: str
    created_at: datetime
    payload: dict[str, Any]
    principal: str | None = None

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Event:
        payload = row["payload"]
        return cls(
            principal=row["principal"],
            id=row["id"],
            event_type=row["event_type"],
            budget=row["budget_name"],
            currency=row["currency"],
            created_at=row["created_at"],
            payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
        )
