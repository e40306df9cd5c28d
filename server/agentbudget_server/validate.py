"""Wire requests to validated commands. Every field is checked here; errors name the field."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agentbudget import routing
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.money_pb2 import Money

from . import commands as c
from . import periods, rules, spend
from .errors import InvalidField
from .model import EMPTY_DETAILS, Details, Spec
from .money import MoneyError, check_currency, from_parts

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MACHINE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_TOKENS = 10**12
MAX_SANDBOX = timedelta(days=366)
MAX_TEXT = 256
MAX_PAGE = 1000
DEFAULT_PAGE = 100

_PERIODS = {
    pb.PERIOD_UNSPECIFIED: periods.PeriodKind.MONTHLY,
    pb.MONTHLY: periods.PeriodKind.MONTHLY,
    pb.WEEKLY: periods.PeriodKind.WEEKLY,
    pb.DAILY: periods.PeriodKind.DAILY,
}
_KINDS = {
    pb.MODEL_INFERENCE: "MODEL_INFERENCE",
    pb.SANDBOX: "SANDBOX",
    pb.EXTERNAL_API: "EXTERNAL_API",
    pb.OTHER: "OTHER",
}


def fingerprint(method: str, request: Message) -> bytes:
    """A digest of the request's parameters: the idempotency key's other half."""
    return hashlib.sha256(method.encode() + b"\0" + request.SerializeToString(deterministic=True)).digest()


def budget_name(value: str, field: str) -> str:
    if not value:
        raise InvalidField(field, "required: the budget's name as namespace/name")
    if len(value) > 317:
        raise InvalidField(field, "too long (namespace/name, at most 63 + 1 + 253 characters)")
    namespace, sep, name = value.partition("/")
    if not sep or not _NAMESPACE.match(namespace) or not _OBJECT_NAME.match(name):
        raise InvalidField(field, f"must be namespace/name in Kubernetes naming (lower case), got {value!r}")
    return value


def client_id(value: str, field: str) -> str:
    if not value:
        raise InvalidField(field, "required: a client-chosen id that makes retries safe")
    if not _ID.match(value):
        raise InvalidField(field, "must be 1..128 characters of [A-Za-z0-9._:-], starting alphanumeric")
    return value


def text(value: str, field: str, limit: int = MAX_TEXT) -> str | None:
    if len(value) > limit:
        raise InvalidField(field, f"at most {limit} characters")
    if _CONTROL.search(value):
        raise InvalidField(field, "must not contain control characters")
    return value or None


def labels(values: Mapping[str, str], field: str) -> dict[str, str]:
    if len(values) > 32:
        raise InvalidField(field, "at most 32 labels")
    for key, value in values.items():
        if not _LABEL_KEY.match(key):
            raise InvalidField(f"{field}[{key!r}]", "label keys are 1..63 of [A-Za-z0-9_./-], alphanumeric ends")
        text(value, f"{field}[{key!r}]")
    return dict(values)


def money(value: Money, field: str, *, allow_zero: bool) -> tuple[int, str]:
    try:
        currency = check_currency(value.currency_code)
    except MoneyError as exc:
        raise InvalidField(f"{field}.currency_code", str(exc)) from None
    try:
        nanos = from_parts(value.units, value.nanos)
    except MoneyError as exc:
        raise InvalidField(field, str(exc), reason=exc.reason) from None
    if nanos < 0 or (nanos == 0 and not allow_zero):
        raise InvalidField(field, "must be positive" if not allow_zero else "must not be negative")
    return nanos, currency


def _count(message: Message, name: str, field: str) -> int | None:
    """A count the caller set (0 included: it overrides an estimate), or None when unset."""
    if not message.HasField(name):
        return None
    value: int = getattr(message, name)
    if value < 0:
        raise InvalidField(field, "must not be negative")
    if value > MAX_TOKENS:
        raise InvalidField(field, f"at most {MAX_TOKENS}")
    return value


def _duration(value: Duration, field: str) -> timedelta:
    if value.seconds < 0 or value.nanos < 0 or value.nanos > 999_999_999:
        raise InvalidField(field, "must be a non-negative duration")
    if value.seconds > MAX_SANDBOX.total_seconds():
        raise InvalidField(field, "too long")
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def details(value: pb.CostDetails, field: str) -> Details:
    if not value.ByteSize():  # nothing given (most holds by amount): nothing to check
        return EMPTY_DETAILS
    kind = None
    if value.kind:
        if value.kind not in _KINDS:
            raise InvalidField(f"{field}.kind", f"unknown cost kind {value.kind}")
        kind = _KINDS[value.kind]
    sandbox = None
    if value.HasField("sandbox_time"):
        d = value.sandbox_time
        _duration(d, f"{field}.sandbox_time")
        sandbox = d.seconds * 1_000_000_000 + d.nanos
    out = Details(
        kind=kind,
        reasoning_tokens=_count(value, "reasoning_tokens", f"{field}.reasoning_tokens"),
        sandbox_class=_name(value.sandbox_class, f"{field}.sandbox_class"),
        provider=_name(value.provider, f"{field}.provider"),
        model=text(value.model, f"{field}.model", 200),
        input_tokens=_count(value, "input_tokens", f"{field}.input_tokens"),
        output_tokens=_count(value, "output_tokens", f"{field}.output_tokens"),
        cache_read_tokens=_count(value, "cache_read_tokens", f"{field}.cache_read_tokens"),
        cache_write_tokens=_count(value, "cache_write_tokens", f"{field}.cache_write_tokens"),
        sandbox_nanos=sandbox,
        api_name=text(value.api_name, f"{field}.api_name", 128),
        api_calls=_count(value, "api_calls", f"{field}.api_calls"),
        task_id=text(value.task_id, f"{field}.task_id"),
        task_type=text(value.task_type, f"{field}.task_type", 128),
        labels=labels(value.labels, f"{field}.labels"),
    )
    cached = (out.cache_read_tokens or 0) + (out.cache_write_tokens or 0)
    if cached and out.input_tokens and cached > out.input_tokens:
        raise InvalidField(
            f"{field}.input_tokens", "counts every input token, cache reads and writes included: it cannot be fewer"
        )
    return out


def _name(value: str, field: str) -> str | None:
    """A short machine name: a sandbox class, a provider, a task class."""
    if value and not _MACHINE_NAME.match(value):
        raise InvalidField(field, "must be 1..64 of [a-z0-9._-], starting alphanumeric")
    return value or None


def _optional_money(value: Message, present: bool, field: str, *, allow_zero: bool) -> tuple[int | None, str | None]:
    """An amount, or (None, None) when unset: the catalog prices the details instead."""
    if not present:
        return None, None
    amount, currency = money(value, field, allow_zero=allow_zero)  # type: ignore[arg-type]
    return amount, currency


def reserve(req: pb.ReserveRequest, default_ttl: timedelta, min_ttl: timedelta, max_ttl: timedelta) -> c.Reserve:
    name = budget_name(req.budget, "budget")
    rid = client_id(req.reservation_id, "reservation_id")
    amount, currency = _optional_money(req.amount, req.HasField("amount"), "amount", allow_zero=False)
    task_class = _name(req.task_class, "task_class")
    if task_class and req.details.model:
        raise InvalidField("details.model", "must be empty with a task_class: the budget's routing picks the model")
    ttl = default_ttl
    if req.HasField("ttl"):
        ttl = _duration(req.ttl, "ttl")
        if not min_ttl <= ttl <= max_ttl:
            raise InvalidField("ttl", f"must be between {min_ttl.total_seconds():g}s and {max_ttl.total_seconds():g}s")
    return c.Reserve(
        name, rid, amount, currency, ttl, details(req.details, "details"), fingerprint("Reserve", req), task_class
    )


def commit(req: pb.CommitRequest) -> c.Commit:
    name = budget_name(req.budget, "budget")
    rid = client_id(req.reservation_id, "reservation_id")
    actual, currency = _optional_money(req.actual, req.HasField("actual"), "actual", allow_zero=True)
    return c.Commit(name, rid, actual, currency, details(req.details, "details"), fingerprint("Commit", req))


def release(req: pb.ReleaseRequest) -> c.Release:
    name = budget_name(req.budget, "budget")
    rid = client_id(req.reservation_id, "reservation_id")
    return c.Release(name, rid, fingerprint("Release", req))


def record_cost(req: pb.RecordCostRequest) -> c.RecordCost:
    name = budget_name(req.budget, "budget")
    rid = client_id(req.request_id, "request_id")
    amount, currency = _optional_money(req.amount, req.HasField("amount"), "amount", allow_zero=True)
    return c.RecordCost(name, rid, amount, currency, details(req.details, "details"), fingerprint("RecordCost", req))


def spec(value: pb.BudgetSpec, field: str = "spec") -> Spec:
    if not value.HasField("limit"):
        raise InvalidField(f"{field}.limit", "required")
    limit, currency = money(value.limit, f"{field}.limit", allow_zero=True)
    if value.period not in _PERIODS:
        raise InvalidField(f"{field}.period", f"unknown period {value.period}")
    tz = text(value.time_zone, f"{field}.time_zone", 64) or ""
    try:
        periods.zone(tz)
    except ValueError as exc:
        raise InvalidField(f"{field}.time_zone", str(exc)) from None
    if any(math.isnan(t) or math.isinf(t) for t in value.alert_thresholds):
        raise InvalidField(f"{field}.alert_thresholds", "must be finite numbers")
    try:
        thresholds = rules.thresholds_from_fractions(list(value.alert_thresholds))
    except ValueError as exc:
        raise InvalidField(f"{field}.alert_thresholds", str(exc)) from None
    overrides: dict[str, dict[str, str]] = {}
    if value.routing.tiers:
        overrides["tiers"] = dict(value.routing.tiers)
    if value.routing.task_classes:
        for task_class in value.routing.task_classes:
            _name(task_class, f"{field}.routing.task_classes")
        overrides["taskClasses"] = dict(value.routing.task_classes)
    for model in overrides.get("tiers", {}).values():
        text(model, f"{field}.routing.tiers", 200)
    try:
        routing.resolve(overrides)
    except ValueError as exc:
        raise InvalidField(f"{field}.routing", str(exc)) from None
    return Spec(
        limit=limit,
        currency=currency,
        period=_PERIODS[value.period],
        time_zone=tz,
        thresholds=thresholds,
        paused=value.paused,
        labels=labels(value.labels, f"{field}.labels"),
        routing=overrides,
        agent_principals=principals(value.agent_principals, f"{field}.agent_principals"),
    )


_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._@/-]{0,252}$")


def principals(values: Sequence[str], field: str) -> tuple[str, ...]:
    """Principal names as authentication reports them: no spaces, at most 253 characters."""
    if len(values) > 16:
        raise InvalidField(field, "at most 16 principals")
    for value in values:
        if not _PRINCIPAL.match(value):
            raise InvalidField(field, f"{value!r} is not a principal name (e.g. system:serviceaccount:ns:name)")
    return tuple(sorted(set(values)))


def upsert(req: pb.UpsertBudgetRequest) -> c.Upsert:
    name = budget_name(req.name, "name")
    if not req.HasField("spec"):
        raise InvalidField("spec", "required")
    return c.Upsert(name, spec(req.spec))


def transfer(req: pb.TransferRequest) -> c.Transfer:
    rid = client_id(req.request_id, "request_id")
    source = budget_name(req.from_budget, "from_budget")
    target = budget_name(req.to_budget, "to_budget")
    if source == target:
        raise InvalidField("to_budget", "must differ from from_budget")
    if not req.HasField("amount"):
        raise InvalidField("amount", "required")
    amount, currency = money(req.amount, "amount", allow_zero=False)
    reason = text(req.reason, "reason", 1024) or ""
    return c.Transfer(rid, source, target, amount, currency, reason, fingerprint("Transfer", req))


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidField(field, f"must be between 0 and {MAX_PAGE}")
    return value or DEFAULT_PAGE


def encode_token(kind: str, after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": kind, "a": after}).encode()).decode()


def decode_token(token: str, kind: str, expected: type, field: str = "page_token") -> Any:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if data["k"] == kind and isinstance(data["a"], expected):
            return data["a"]
    except (ValueError, KeyError, TypeError, UnicodeError):
        pass
    raise InvalidField(field, "not a page token this call returned")


def timestamp(value: Timestamp, field: str) -> datetime:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidField(field, "not a valid timestamp") from None


def list_entries(req: pb.ListLedgerEntriesRequest) -> c.ListEntries:
    name = budget_name(req.budget, "budget")
    start = timestamp(req.start_time, "start_time") if req.HasField("start_time") else None
    end = timestamp(req.end_time, "end_time") if req.HasField("end_time") else None
    if start and end and end <= start:
        raise InvalidField("end_time", "must be after start_time")
    after = decode_token(req.page_token, "entries", int) or 0
    return c.ListEntries(name, start, end, page_size(req.page_size), after)


def list_budgets(req: pb.ListBudgetsRequest) -> tuple[str, str, int]:
    namespace = req.namespace
    if namespace and not _NAMESPACE.match(namespace):
        raise InvalidField("namespace", "must be a Kubernetes namespace name")
    after = decode_token(req.page_token, "budgets", str) or ""
    return namespace, after, page_size(req.page_size)


def watch(req: pb.WatchEventsRequest) -> c.WatchFilter:
    if req.after_id < 0:
        raise InvalidField("after_id", "must not be negative")
    if len(req.budgets) > 1000:
        raise InvalidField("budgets", "at most 1000 budgets")
    names = tuple(budget_name(n, f"budgets[{i}]") for i, n in enumerate(req.budgets))
    types = []
    for i, t in enumerate(req.types):
        if t == pb.EVENT_TYPE_UNSPECIFIED or t not in pb.EventType.values():
            raise InvalidField(f"types[{i}]", f"unknown event type {t}")
        types.append(pb.EventType.Name(t).removeprefix("EVENT_"))
    return c.WatchFilter(req.after_id, names, tuple(types))


def route(req: pb.RouteRequest) -> tuple[str, str]:
    name = budget_name(req.budget, "budget")
    task_class = _name(req.task_class, "task_class")
    if not task_class:
        raise InvalidField("task_class", "required")
    return name, task_class


_DIMENSIONS = {
    pb.SPEND_BY_BUDGET: spend.Dimension.BUDGET,
    pb.SPEND_BY_MODEL: spend.Dimension.MODEL,
    pb.SPEND_BY_TASK_TYPE: spend.Dimension.TASK_TYPE,
    pb.SPEND_BY_KIND: spend.Dimension.KIND,
    pb.SPEND_BY_DAY: spend.Dimension.DAY,
    pb.SPEND_BY_WEEK: spend.Dimension.WEEK,
    pb.SPEND_BY_MONTH: spend.Dimension.MONTH,
}
MAX_FILTER_VALUES = 1000


def _values(values: Any, field: str, limit: int) -> tuple[str, ...]:
    """Filter values: "" matches costs recorded without one."""
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidField(field, f"at most {MAX_FILTER_VALUES} values")
    for i, value in enumerate(values):
        text(value, f"{field}[{i}]", limit)
    return tuple(dict.fromkeys(values))


def query_spend(req: pb.QuerySpendRequest) -> spend.SpendQuery:
    if len(req.budgets) > MAX_FILTER_VALUES:
        raise InvalidField("budgets", f"at most {MAX_FILTER_VALUES} budgets")
    names = tuple(dict.fromkeys(budget_name(n, f"budgets[{i}]") for i, n in enumerate(req.budgets)))
    if req.namespace and not _NAMESPACE.match(req.namespace):
        raise InvalidField("namespace", "must be a Kubernetes namespace name")
    kinds = []
    for i, k in enumerate(req.kinds):
        if k != pb.COST_KIND_UNSPECIFIED and k not in _KINDS:
            raise InvalidField(f"kinds[{i}]", f"unknown cost kind {k}")
        kinds.append(_KINDS.get(k, ""))
    start = timestamp(req.start_time, "start_time") if req.HasField("start_time") else None
    end = timestamp(req.end_time, "end_time") if req.HasField("end_time") else None
    if start and end and end <= start:
        raise InvalidField("end_time", "must be after start_time")
    group_by: list[spend.Dimension] = []
    for i, d in enumerate(req.group_by):
        if d not in _DIMENSIONS:
            raise InvalidField(f"group_by[{i}]", f"unknown dimension {d}")
        if _DIMENSIONS[d] in group_by:
            raise InvalidField(f"group_by[{i}]", f"{pb.SpendDimension.Name(d)} is given twice")
        group_by.append(_DIMENSIONS[d])
    if sum(d in spend.TIME_DIMENSIONS for d in group_by) > 1:
        raise InvalidField("group_by", "at most one of SPEND_BY_DAY, SPEND_BY_WEEK and SPEND_BY_MONTH")
    tz = text(req.time_zone, "time_zone", 64) or ""
    try:
        periods.zone(tz)
    except ValueError as exc:
        raise InvalidField("time_zone", str(exc)) from None
    currency = ""
    if req.currency:
        try:
            currency = check_currency(req.currency)
        except MoneyError as exc:
            raise InvalidField("currency", str(exc)) from None
    size = page_size(req.page_size)
    query = spend.SpendQuery(
        budgets=names,
        namespace=req.namespace,
        kinds=tuple(dict.fromkeys(kinds)),
        models=_values(req.models, "models", 200),
        task_types=_values(req.task_types, "task_types", 128),
        labels=tuple(sorted(labels(req.labels, "labels").items())),
        principals=_values(req.principals, "principals", 253),
        start=start,
        end=end,
        group_by=tuple(group_by),
        time_zone=tz,
        currency=currency,
        count_tasks=req.count_tasks,
        page_size=size,
    )
    # A page token belongs to one query: its offset, and a digest of everything but the page.
    digest = _spend_digest(req)
    token = decode_token(req.page_token, "spend", list)
    if token is not None:
        if len(token) != 2 or not isinstance(token[0], int) or token[0] < 0 or token[1] != digest:
            raise InvalidField("page_token", "not a page token of this query")
        query = replace(query, offset=token[0])
    return query


def _spend_digest(req: pb.QuerySpendRequest) -> str:
    unpaged = pb.QuerySpendRequest()
    unpaged.CopyFrom(req)
    unpaged.ClearField("page_token")
    unpaged.ClearField("page_size")
    return fingerprint("QuerySpend", unpaged).hex()[:32]


def spend_page_token(req: pb.QuerySpendRequest, query: spend.SpendQuery) -> str:
    return encode_token("spend", [query.offset + query.page_size, _spend_digest(req)])
