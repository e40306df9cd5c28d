"""How report numbers read: money to the cent (or exactly, when finer), counts, durations, shares."""

from __future__ import annotations

from decimal import Decimal

from agentbudget.client import to_decimal
from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.duration_pb2 import Duration
from google.type.money_pb2 import Money

CENT = Decimal("0.01")


def amount(value: Decimal) -> str:
    """12.50, or every digit there is when the amount is finer than a cent (0.0042)."""
    return f"{value:.2f}" if value == value.quantize(CENT) else f"{value.normalize():f}"


def money(m: Money) -> str:
    return f"{amount(to_decimal(m))} {m.currency_code}".strip()


def count(value: int) -> str:
    return f"{value:,}"


def seconds(d: Duration) -> Decimal:
    return Decimal(d.seconds) + Decimal(d.nanos) / 1_000_000_000


def duration(d: Duration) -> str:
    total = d.seconds
    if total == 0 and d.nanos == 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{amount(seconds(d)).rstrip('0').rstrip('.')}s"


def share(part: Decimal, whole: Decimal) -> str:
    if whole <= 0:
        return "-"
    return f"{(part / whole * 100):.1f}%"


def kind(value: pb.CostKind.ValueType) -> str:
    return pb.CostKind.Name(value).lower() if value else "(none)"


def key_text(value: str) -> str:
    return value or "(none)"
