"""Validated requests, as the ledger operations take them (built by ``validate``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Details, Spec


@dataclass(frozen=True)
class Reserve:
    budget: str
    reservation_id: str
    amount: int | None  # None: priced from details by the catalog
    currency: str | None
    ttl: timedelta
    details: Details
    fingerprint: bytes
    task_class: str | None = None


@dataclass(frozen=True)
class Commit:
    budget: str
    reservation_id: str
    actual: int | None
    currency: str | None
    details: Details
    fingerprint: bytes


@dataclass(frozen=True)
class Release:
    budget: str
    reservation_id: str
    fingerprint: bytes


@dataclass(frozen=True)
class RecordCost:
    budget: str
    request_id: str
    amount: int | None
    currency: str | None
    details: Details
    fingerprint: bytes


@dataclass(frozen=True)
class Upsert:
    name: str
    spec: Spec


@dataclass(frozen=True)
class Transfer:
    request_id: str
    source: str
    target: str
    amount: int
    currency: str
    reason: str
    fingerprint: bytes


@dataclass(frozen=True)
class ListEntries:
    budget: str
    start: datetime | None
    end: datetime | None
    page_size: int
    after_id: int


@dataclass(frozen=True)
class WatchFilter:
    after_id: int
    budgets: tuple[str, ...]
    types: tuple[str, ...]
