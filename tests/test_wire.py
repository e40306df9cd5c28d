"""The hold path's encoders, which build messages in place for speed, agree with protobuf's own."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import wire
from agentbudget_server.ledger import HoldResult
from agentbudget_server.model import EMPTY_DETAILS, Details, ReservationView
from google.protobuf.timestamp_pb2 import Timestamp


def test_timestamps_are_exact_to_the_microsecond_like_from_datetime():
    rng = random.Random(7)
    zones = [UTC, ZoneInfo("Asia/Kolkata"), ZoneInfo("America/St_Johns")]
    samples = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch: nanos stay >= 0
        datetime(2026, 12, 4, 2, 3, 4, 567_891),  # naive: UTC, as FromDatetime takes it
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    samples += [
        datetime(2000, 1, 1, tzinfo=UTC).astimezone(rng.choice(zones))
        + timedelta(seconds=rng.randrange(10**9), microseconds=rng.randrange(10**6))
        for _ in range(500)
    ]
    for value in samples:
        expected = Timestamp()
        expected.FromDatetime(value)
        assert wire.ts(value) == expected, value


def _view(state: str, details: Details, ended: datetime | None, committed: int | None) -> ReservationView:
    created = datetime(2026, 12, 4, 2, 3, 4, 567_891, tzinfo=UTC)
    return ReservationView(
        budget="team/a",
        currency="EUR",
        reservation_id="r-1",
        amount=12_500_000_001,
        state=state,
        created_at=created,
        expires_at=created + timedelta(minutes=5),
        ended_at=ended,
        committed=committed,
        overrun=committed is not None and committed > 12_500_000_001,
        late=False,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        details=details,
    )


def test_a_hold_response_carries_every_field_of_the_reservation():
    ended = datetime(2026, 12, 4, 2, 4, tzinfo=UTC)
    priced = Details(kind="MODEL_INFERENCE", model="gpt-4o", input_tokens=0, output_tokens=7, labels={"team": "a"})
    for view in (
        _view("ACTIVE", EMPTY_DETAILS, None, None),
        _view("COMMITTED", priced, ended, 13_000_000_000),
        _view("COMMITTED", priced, ended, 0),
        _view("RELEASED", EMPTY_DETAILS, ended, None),
    ):
        for cls in (pb.ReserveResponse, pb.CommitResponse, pb.ReleaseResponse):
            msg = cls.FromString(wire.hold_response(cls, HoldResult(view, -250_000_000, "gpt-4o", "cheap")))
            r = msg.reservation
            assert (r.budget, r.reservation_id, r.state) == (
                "team/a",
                "r-1",
                pb.ReservationState.Value(f"RESERVATION_{view.state}"),
            )
            assert (r.amount.currency_code, r.amount.units, r.amount.nanos) == ("EUR", 12, 500_000_001)
            assert (msg.remaining.units, msg.remaining.nanos) == (0, -250_000_000)
            assert r.create_time.ToDatetime(UTC) == view.created_at
            assert r.expire_time.ToDatetime(UTC) == view.expires_at
            assert r.period_start.ToDatetime(UTC) == view.period_start
            assert r.HasField("details")  # present even when empty, as the stored responses have it
            assert r.details.model == (view.details.model or "")
            assert r.details.HasField("input_tokens") == (view.details.input_tokens is not None)
            assert dict(r.details.labels) == view.details.labels
            assert r.HasField("end_time") == (view.ended_at is not None)
            assert r.HasField("committed") == (view.committed is not None)
            if view.committed is not None:
                assert r.committed.units * 10**9 + r.committed.nanos == view.committed
            assert r.overrun == view.overrun
            if cls is pb.ReserveResponse:
                assert (msg.model, msg.tier) == ("gpt-4o", "cheap")
