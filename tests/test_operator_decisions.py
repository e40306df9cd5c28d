"""Unit tests of the operator's pure decisions (decisions.py) and model routing (routing.py).

No cluster, no authority: protobuf messages in, plain values out.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from agentbudget import routing
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_operator import decisions
from agentbudget_operator.decisions import REPLICAS_ANNOTATION, ScalePlan, SpecError
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.money_pb2 import Money

JUNE_1 = 1_717_200_000  # 2024-06-01T00:00:00Z
JULY_1 = 1_719_792_000  # 2024-07-01T00:00:00Z


def m(amount: str, currency: str = "USD") -> Money:
    """An exact Money from a decimal string (test helper, independent of the client's money())."""
    value = Decimal(amount)
    total = int(value * 1_000_000_000)
    sign = -1 if total < 0 else 1
    units, nanos = divmod(abs(total), 1_000_000_000)
    return Money(currency_code=currency, units=sign * units, nanos=sign * nanos)


def budget(
    *,
    phase: pb.Phase.ValueType = pb.ACTIVE,
    limit: str = "20",
    spent: str = "0",
    held: str = "0",
    remaining: str | None = None,
    utilization: float = 0.0,
    currency: str = "USD",
    start: int = JUNE_1,
    end: int = JULY_1,
) -> pb.Budget:
    if remaining is None:
        remaining = str(max(Decimal(0), Decimal(limit) - Decimal(spent) - Decimal(held)))
    return pb.Budget(
        name="agents/research",
        phase=phase,
        effective_limit=m(limit, currency),
        spent=m(spent, currency),
        held=m(held, currency),
        remaining=m(remaining, currency),
        utilization=utilization,
        period_start=Timestamp(seconds=start),
        period_end=Timestamp(seconds=end),
    )


# --------------------------------------------------------------------------- upsert_request


class TestUpsertRequest:
    def test_minimal_spec_takes_the_defaults(self) -> None:
        req = decisions.upsert_request("agents", "research", {"limit": "20"})
        assert isinstance(req, pb.UpsertBudgetRequest)
        assert req.name == "agents/research"
        assert req.spec.limit == Money(currency_code="USD", units=20, nanos=0)
        assert req.spec.period == pb.MONTHLY
        assert req.spec.time_zone == ""
        assert list(req.spec.alert_thresholds) == [0.8]
        assert req.spec.paused is False

    def test_budget_name_is_namespace_slash_name(self) -> None:
        assert decisions.budget_name("team-a", "agent-7") == "team-a/agent-7"
        assert decisions.upsert_request("team-a", "agent-7", {"limit": "1"}).name == "team-a/agent-7"

    @pytest.mark.parametrize(
        ("text", "units", "nanos"),
        [
            ("0", 0, 0),
            ("20", 20, 0),
            ("12.50", 12, 500_000_000),
            ("12.5", 12, 500_000_000),
            ("0.000000001", 0, 1),
            ("12.123456789", 12, 123_456_789),
            ("9999999999.999999999", 9_999_999_999, 999_999_999),
            ("1.100000000", 1, 100_000_000),  # 9 decimals with trailing zeros
        ],
    )
    def test_limit_decimal_strings_are_exact(self, text: str, units: int, nanos: int) -> None:
        req = decisions.upsert_request("agents", "research", {"limit": text})
        assert (req.spec.limit.units, req.spec.limit.nanos) == (units, nanos)
        assert req.spec.limit.currency_code == "USD"

    @pytest.mark.parametrize("text", ["0.0000000001", "12.1234567891", "1.0000000000", "1e-10"])
    def test_limit_finer_than_a_nano_is_a_spec_error(self, text: str) -> None:
        with pytest.raises(SpecError, match=r"spec\.limit"):
            decisions.upsert_request("agents", "research", {"limit": text})

    def test_missing_limit_is_a_spec_error(self) -> None:
        with pytest.raises(SpecError, match=r"spec\.limit"):
            decisions.upsert_request("agents", "research", {"period": "Daily"})

    @pytest.mark.parametrize("bad", ["", "twenty", "12,50", "1.2.3", None, True, "NaN", "Infinity", "-Infinity"])
    def test_limit_that_is_no_finite_decimal_is_a_spec_error(self, bad: Any) -> None:
        with pytest.raises(SpecError, match=r"spec\.limit"):
            decisions.upsert_request("agents", "research", {"limit": bad})

    def test_limit_beyond_the_money_range_is_a_spec_error(self) -> None:
        with pytest.raises(SpecError, match=r"spec\.limit"):
            decisions.upsert_request("agents", "research", {"limit": "99999999999999999999"})

    def test_spec_error_is_a_value_error(self) -> None:
        assert issubclass(SpecError, ValueError)

    @pytest.mark.parametrize(("period", "want"), [("Monthly", pb.MONTHLY), ("Weekly", pb.WEEKLY), ("Daily", pb.DAILY)])
    def test_periods(self, period: str, want: int) -> None:
        req = decisions.upsert_request("agents", "research", {"limit": "20", "period": period})
        assert req.spec.period == want

    @pytest.mark.parametrize("period", ["Yearly", "monthly", "DAILY", "", None, 1])
    def test_bad_period_is_a_spec_error(self, period: Any) -> None:
        with pytest.raises(SpecError, match=r"spec\.period"):
            decisions.upsert_request("agents", "research", {"limit": "20", "period": period})

    def test_currency(self) -> None:
        req = decisions.upsert_request("agents", "research", {"limit": "12.50", "currency": "EUR"})
        assert req.spec.limit == Money(currency_code="EUR", units=12, nanos=500_000_000)

    def test_time_zone(self) -> None:
        req = decisions.upsert_request("agents", "research", {"limit": "1", "timeZone": "Europe/Berlin"})
        assert req.spec.time_zone == "Europe/Berlin"

    def test_thresholds_default_to_eighty_percent(self) -> None:
        assert list(decisions.upsert_request("a", "b", {"limit": "1"}).spec.alert_thresholds) == [0.8]

    def test_thresholds_are_passed_in_order(self) -> None:
        req = decisions.upsert_request("a", "b", {"limit": "1", "alertThresholds": [0.5, 0.75, 0.9]})
        assert list(req.spec.alert_thresholds) == [0.5, 0.75, 0.9]

    def test_empty_thresholds_stay_empty(self) -> None:
        # The authority reads an empty list as its default [0.8]; the operator does not invent one.
        req = decisions.upsert_request("a", "b", {"limit": "1", "alertThresholds": []})
        assert list(req.spec.alert_thresholds) == []

    @pytest.mark.parametrize(("given", "want"), [(None, False), (False, False), (True, True)])
    def test_paused(self, given: bool | None, want: bool) -> None:
        spec: dict[str, Any] = {"limit": "1"}
        if given is not None:
            spec["paused"] = given
        assert decisions.upsert_request("a", "b", spec).spec.paused is want

    def test_the_routing_reaches_the_authority_and_the_target_does_not(self) -> None:
        spec = {
            "limit": "20",
            "targetRef": {"name": "agent"},
            "routing": {"tiers": {"cheap": "x"}, "taskClasses": {"lookup": "mid"}},
        }
        request = decisions.upsert_request("a", "b", spec)
        assert dict(request.spec.routing.tiers) == {"cheap": "x"}
        assert dict(request.spec.routing.task_classes) == {"lookup": "mid"}
        request.spec.ClearField("routing")
        assert request == decisions.upsert_request("a", "b", {"limit": "20", "targetRef": {"name": "other"}})

    def test_a_routing_with_an_unknown_tier_is_a_spec_error(self) -> None:
        with pytest.raises(SpecError, match="routing"):
            decisions.upsert_request("a", "b", {"limit": "1", "routing": {"taskClasses": {"lookup": "ultra"}}})

    def test_the_spec_is_not_modified(self) -> None:
        spec = {"limit": "20", "alertThresholds": [0.5]}
        decisions.upsert_request("a", "b", spec)
        assert spec == {"limit": "20", "alertThresholds": [0.5]}


# --------------------------------------------------------------------------- show_money / budget_status


class TestShowMoney:
    @pytest.mark.parametrize(
        ("amount", "shown"),
        [
            ("12.5", "12.50 USD"),
            ("12.50", "12.50 USD"),
            ("7", "7.00 USD"),
            ("0", "0.00 USD"),
            ("0.1", "0.10 USD"),
            ("0.125", "0.125 USD"),
            ("0.000000001", "0.000000001 USD"),
            ("7.499999999", "7.499999999 USD"),
            ("1234567890.123456789", "1234567890.123456789 USD"),
            ("-1.5", "-1.50 USD"),
            ("-0.000000001", "-0.000000001 USD"),
        ],
    )
    def test_exact_with_at_least_cents(self, amount: str, shown: str) -> None:
        assert decisions.show_money(m(amount)) == shown

    def test_the_largest_money_is_exact(self) -> None:
        big = Money(currency_code="USD", units=9_223_372_036_854_775_807, nanos=999_999_999)
        assert decisions.show_money(big) == "9223372036854775807.999999999 USD"

    def test_currency_is_shown(self) -> None:
        assert decisions.show_money(m("3", "EUR")) == "3.00 EUR"


class TestBudgetStatus:
    def test_mirrors_the_budget(self) -> None:
        status = decisions.budget_status(
            budget(phase=pb.WARNING, limit="50", spent="12.5", held="0.000000001", utilization=0.25)
        )
        assert status == {
            "phase": "Warning",
            "limit": "50.00 USD",
            "spent": "12.50 USD",
            "held": "0.000000001 USD",
            "remaining": "37.499999999 USD",
            "utilization": 0.25,
            "used": "25%",
            "periodStart": "2024-06-01T00:00:00Z",
            "periodEnd": "2024-07-01T00:00:00Z",
        }

    @pytest.mark.parametrize(
        ("phase", "name"),
        [
            (pb.ACTIVE, "Active"),
            (pb.WARNING, "Warning"),
            (pb.EXHAUSTED, "Exhausted"),
            (pb.PAUSED, "Paused"),
            (pb.PHASE_UNSPECIFIED, "Unknown"),
        ],
    )
    def test_phase_names(self, phase: pb.Phase.ValueType, name: str) -> None:
        assert decisions.budget_status(budget(phase=phase))["phase"] == name

    @pytest.mark.parametrize(
        ("utilization", "used"),
        [(0.0, "0%"), (0.42, "42%"), (0.8, "80%"), (1.0, "100%"), (1.25, "125%"), (0.254, "25%")],
    )
    def test_used_percentage(self, utilization: float, used: str) -> None:
        assert decisions.budget_status(budget(utilization=utilization))["used"] == used

    def test_utilization_is_rounded_to_six_places(self) -> None:
        assert decisions.budget_status(budget(utilization=1 / 3))["utilization"] == 0.333333

    def test_period_bounds_are_rfc3339_utc(self) -> None:
        # 2024-03-31T22:00:00Z: a month start in Europe/Berlin (CEST), still shown in UTC with Z
        status = decisions.budget_status(budget(start=1_711_922_400, end=1_714_514_400))
        assert status["periodStart"] == "2024-03-31T22:00:00Z"
        assert status["periodEnd"] == "2024-04-30T22:00:00Z"

    def test_sub_second_timestamps_are_truncated(self) -> None:
        b = budget()
        b.period_start.nanos = 999_999_999
        assert decisions.budget_status(b)["periodStart"] == "2024-06-01T00:00:00Z"

    def test_other_currency(self) -> None:
        status = decisions.budget_status(budget(limit="100", spent="0.000000001", currency="EUR"))
        assert status["limit"] == "100.00 EUR"
        assert status["spent"] == "0.000000001 EUR"
        assert status["remaining"] == "99.999999999 EUR"


# --------------------------------------------------------------------------- wants_paused / pause_reason


@pytest.mark.parametrize(
    ("phase", "paused"),
    [(pb.PHASE_UNSPECIFIED, False), (pb.ACTIVE, False), (pb.WARNING, False), (pb.EXHAUSTED, True), (pb.PAUSED, True)],
)
def test_wants_paused(phase: pb.Phase.ValueType, paused: bool) -> None:
    assert decisions.wants_paused(budget(phase=phase)) is paused


def test_pause_reason() -> None:
    assert decisions.pause_reason(budget(phase=pb.PAUSED)) == "the budget is paused"
    assert decisions.pause_reason(budget(phase=pb.EXHAUSTED)) == "the budget is exhausted"


# --------------------------------------------------------------------------- scale_plan


WHY = "the budget is exhausted"


class TestScalePlan:
    def test_pause_remembers_the_replica_count(self) -> None:
        plan = decisions.scale_plan(True, 3, None, WHY)
        assert plan.replicas == 0
        assert plan.annotation == "3"
        assert plan.event is not None
        kind, reason, message = plan.event
        assert (kind, reason) == ("Normal", "Paused")
        assert "3" in message and WHY in message

    def test_pause_of_one_replica(self) -> None:
        assert decisions.scale_plan(True, 1, None, WHY).annotation == "1"

    def test_pause_at_zero_without_annotation_does_nothing(self) -> None:
        assert decisions.scale_plan(True, 0, None, WHY) == ScalePlan()
        assert ScalePlan() == ScalePlan(None, None, None)

    def test_pause_scaled_up_by_hand_goes_back_to_zero_with_a_warning(self) -> None:
        plan = decisions.scale_plan(True, 5, "3", WHY)
        assert plan.replicas == 0
        assert plan.annotation is None  # the remembered "3" is never overwritten by the 5
        assert plan.event is not None
        kind, reason, message = plan.event
        assert (kind, reason) == ("Warning", "Paused")
        assert "5" in message and WHY in message

    @pytest.mark.parametrize("remembered", ["3", "1", "garbage", ""])
    def test_pause_never_overwrites_the_annotation(self, remembered: str) -> None:
        for replicas in (0, 1, 7):
            assert decisions.scale_plan(True, replicas, remembered, WHY).annotation is None

    def test_pause_while_remembered_and_at_zero_does_nothing(self) -> None:
        assert decisions.scale_plan(True, 0, "3", WHY) == ScalePlan()

    def test_resume_restores_and_removes_the_annotation(self) -> None:
        plan = decisions.scale_plan(False, 0, "3", "")
        assert plan.replicas == 3
        assert plan.annotation == ""  # "" means: remove it
        assert plan.event is not None
        kind, reason, message = plan.event
        assert (kind, reason) == ("Normal", "Resumed")
        assert "3" in message

    def test_resume_restores_even_when_scaled_by_hand_meanwhile(self) -> None:
        assert decisions.scale_plan(False, 2, "4", "").replicas == 4

    @pytest.mark.parametrize("replicas", [0, 1, 4])
    def test_resume_without_annotation_does_nothing(self, replicas: int) -> None:
        assert decisions.scale_plan(False, replicas, None, "") == ScalePlan()

    @pytest.mark.parametrize("damaged", ["garbage", "", "3.5", "three", "0x3"])
    def test_damaged_annotation_brings_one_replica_back(self, damaged: str) -> None:
        plan = decisions.scale_plan(False, 0, damaged, "")
        assert plan.replicas == 1
        assert plan.annotation == ""
        assert plan.event is not None and plan.event[1] == "Resumed"

    def test_whitespace_around_the_count_is_tolerated(self) -> None:
        assert decisions.scale_plan(False, 0, " 3 ", "").replicas == 3

    def test_negative_annotation_is_damaged_and_brings_one_replica_back(self) -> None:
        assert decisions.scale_plan(False, 0, "-3", "").replicas == 1

    def test_out_of_range_annotation_is_damaged_and_brings_one_replica_back(self) -> None:
        assert decisions.scale_plan(False, 0, "99999999999", "").replicas == 1

    def test_plans_are_immutable(self) -> None:
        plan = decisions.scale_plan(True, 3, None, WHY)
        with pytest.raises(AttributeError):
            plan.replicas = 1  # type: ignore[misc]

    def test_annotation_name(self) -> None:
        assert REPLICAS_ANNOTATION == "agentbudget.io/paused-replicas"

    def test_pause_then_resume_round_trip(self) -> None:
        paused = decisions.scale_plan(True, 4, None, WHY)
        assert paused.replicas == 0
        resumed = decisions.scale_plan(False, paused.replicas, paused.annotation, "")
        assert resumed.replicas == 4 and resumed.annotation == ""


# --------------------------------------------------------------------------- kube_event


def event(kind: pb.EventType.ValueType, **fields: Any) -> pb.Event:
    base: dict[str, Any] = {
        "id": 7,
        "type": kind,
        "budget": "agents/research",
        "effective_limit": m("20"),
        "spent": m("16"),
        "held": m("0"),
    }
    base.update(fields)
    return pb.Event(**base)


class TestKubeEvent:
    def test_threshold_reached(self) -> None:
        got = decisions.kube_event(event(pb.EVENT_THRESHOLD_CROSSED, threshold=0.8))
        assert got == ("Warning", "ThresholdReached", "80% of the budget reached: spent 16.00 USD of 20.00 USD")

    def test_threshold_message_keeps_the_thresholds_precision(self) -> None:
        got = decisions.kube_event(event(pb.EVENT_THRESHOLD_CROSSED, threshold=0.333))
        assert got is not None and got[2].startswith("33.3% of the budget reached")
        got = decisions.kube_event(event(pb.EVENT_THRESHOLD_CROSSED, threshold=0.995))
        assert got is not None and got[2].startswith("99.5% of the budget reached")  # not "100%"

    def test_budget_exhausted(self) -> None:
        got = decisions.kube_event(event(pb.EVENT_BUDGET_EXHAUSTED, spent=m("20.000000001")))
        assert got == (
            "Warning",
            "BudgetExhausted",
            "budget exhausted: spent 20.000000001 USD of 20.00 USD; the agent is paused until budget is available",
        )

    def test_budget_denied(self) -> None:
        got = decisions.kube_event(event(pb.EVENT_RESERVATION_DENIED, amount=m("5"), reservation_id="r-abc"))
        assert got == (
            "Warning",
            "BudgetDenied",
            "a hold of 5.00 USD was denied (spent 16.00 USD of 20.00 USD); reservation r-abc",
        )

    def test_denied_amounts_are_exact(self) -> None:
        got = decisions.kube_event(event(pb.EVENT_RESERVATION_DENIED, amount=m("0.000000001"), reservation_id="r"))
        assert got is not None and "a hold of 0.000000001 USD was denied" in got[2]

    @pytest.mark.parametrize(
        "kind",
        [
            pb.EVENT_TYPE_UNSPECIFIED,
            pb.EVENT_BUDGET_CREATED,
            pb.EVENT_BUDGET_DELETED,
            pb.EVENT_LIMIT_CHANGED,
            pb.EVENT_BUDGET_PAUSED,
            pb.EVENT_BUDGET_RESUMED,
            pb.EVENT_BUDGET_TRANSFERRED,
            pb.EVENT_PERIOD_ROLLED,
            pb.EVENT_OVERRUN,
        ],
    )
    def test_other_events_post_nothing(self, kind: pb.EventType.ValueType) -> None:
        assert decisions.kube_event(event(kind)) is None

    def test_every_event_type_is_decided(self) -> None:
        posted = {t for t in pb.EventType.values() if decisions.kube_event(event(t)) is not None}
        assert posted == {pb.EVENT_THRESHOLD_CROSSED, pb.EVENT_BUDGET_EXHAUSTED, pb.EVENT_RESERVATION_DENIED}


# --------------------------------------------------------------------------- conditions


T0 = "2024-06-01T00:00:00Z"
T1 = "2024-06-02T12:00:00Z"


class TestCondition:
    def test_new_condition(self) -> None:
        got = decisions.condition("Synced", True, "Synced", "in force", 3, T0, [])
        assert got == {
            "type": "Synced",
            "status": "True",
            "reason": "Synced",
            "message": "in force",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }

    def test_false_status(self) -> None:
        assert decisions.condition("Synced", False, "SpecRejected", "no", 1, T0, [])["status"] == "False"

    def test_unchanged_status_keeps_the_transition_time(self) -> None:
        previous = [decisions.condition("Synced", True, "Synced", "old", 1, T0, [])]
        got = decisions.condition("Synced", True, "Other", "new message", 2, T1, previous)
        assert got["lastTransitionTime"] == T0
        assert (got["reason"], got["message"], got["observedGeneration"]) == ("Other", "new message", 2)

    def test_flipped_status_changes_the_transition_time(self) -> None:
        previous = [decisions.condition("Synced", True, "Synced", "ok", 1, T0, [])]
        got = decisions.condition("Synced", False, "SpecRejected", "bad", 2, T1, previous)
        assert got["status"] == "False"
        assert got["lastTransitionTime"] == T1
        again = decisions.condition("Synced", True, "Synced", "ok", 3, "2024-06-03T00:00:00Z", [got])
        assert again["lastTransitionTime"] == "2024-06-03T00:00:00Z"

    def test_only_the_same_type_counts(self) -> None:
        previous = [decisions.condition("TargetFound", True, "TargetFound", "x", 1, T0, [])]
        assert decisions.condition("Synced", True, "Synced", "ok", 1, T1, previous)["lastTransitionTime"] == T1

    def test_previous_without_a_time_gets_now(self) -> None:
        previous = [{"type": "Synced", "status": "True"}]
        assert decisions.condition("Synced", True, "Synced", "ok", 1, T1, previous)["lastTransitionTime"] == T1


class TestMergeConditions:
    def test_updates_replace_and_others_stay_sorted_by_type(self) -> None:
        previous = [
            {"type": "TargetFound", "status": "True", "reason": "TargetFound"},
            {"type": "Synced", "status": "False", "reason": "SpecRejected"},
        ]
        update = decisions.condition("Synced", True, "Synced", "ok", 2, T1, previous)
        merged = decisions.merge_conditions(previous, [update])
        assert [c["type"] for c in merged] == ["Synced", "TargetFound"]
        assert merged[0] == update
        assert merged[1] == previous[0]

    def test_new_types_are_added(self) -> None:
        previous = [{"type": "Synced", "status": "True"}]
        new = {"type": "Alpha", "status": "True"}
        assert [c["type"] for c in decisions.merge_conditions(previous, [new])] == ["Alpha", "Synced"]

    def test_entries_without_type_are_dropped(self) -> None:
        assert decisions.merge_conditions([{"status": "True"}], []) == []

    def test_empty(self) -> None:
        assert decisions.merge_conditions([], []) == []

    def test_previous_is_not_modified(self) -> None:
        previous = [{"type": "Synced", "status": "True"}]
        merged = decisions.merge_conditions(previous, [])
        merged[0]["status"] = "False"
        assert previous == [{"type": "Synced", "status": "True"}]

    def test_no_change_merges_to_an_equal_list(self) -> None:
        previous = [decisions.condition("Synced", True, "Synced", "ok", 1, T0, [])]
        again = decisions.condition("Synced", True, "Synced", "ok", 1, T1, previous)
        assert decisions.merge_conditions(previous, [again]) == previous


# --------------------------------------------------------------------------- patches


class TestStatusChanges:
    def test_no_keys_when_equal(self) -> None:
        status = decisions.budget_status(budget(spent="1"))
        assert decisions.status_changes(dict(status), status) == {}

    def test_only_changed_keys(self) -> None:
        current = decisions.budget_status(budget(spent="1", utilization=0.05))
        desired = decisions.budget_status(budget(spent="2", utilization=0.1))
        assert decisions.status_changes(current, desired) == {
            "spent": "2.00 USD",
            "remaining": "18.00 USD",
            "utilization": 0.1,
            "used": "10%",
        }

    def test_new_keys_are_changes(self) -> None:
        assert decisions.status_changes({}, {"phase": "Active"}) == {"phase": "Active"}

    def test_keys_not_desired_are_left_alone(self) -> None:
        assert decisions.status_changes({"phase": "Active", "kopf": {"x": 1}}, {"phase": "Active"}) == {}

    def test_nested_values_compare_by_value(self) -> None:
        conditions = [{"type": "Synced", "status": "True"}]
        assert decisions.status_changes({"conditions": conditions}, {"conditions": [dict(conditions[0])]}) == {}


class TestTemplateAnnotationChanges:
    def test_no_annotations_yet(self) -> None:
        assert decisions.template_annotation_changes(None, {"a": "1"}) == {"a": "1"}
        assert decisions.template_annotation_changes({}, {"a": "1"}) == {"a": "1"}

    def test_equal(self) -> None:
        assert decisions.template_annotation_changes({"a": "1", "other": "x"}, {"a": "1"}) == {}

    def test_changed_only(self) -> None:
        got = decisions.template_annotation_changes({"a": "1", "b": "2"}, {"a": "1", "b": "3"})
        assert got == {"b": "3"}

    def test_routing_annotation_written_once(self) -> None:
        wanted = routing.pod_annotations(None)
        assert decisions.template_annotation_changes({}, wanted) == wanted
        assert decisions.template_annotation_changes(dict(wanted), routing.pod_annotations({})) == {}


# --------------------------------------------------------------------------- routing


class TestRouting:
    def test_default_models(self) -> None:
        table = routing.resolve(None)
        assert table["tiers"] == {
            "cheap": "claude-haiku-4-5",
            "mid": "claude-sonnet-4-5",
            "premium": "claude-opus-4-1",
        }

    @pytest.mark.parametrize(
        ("task_class", "tier"),
        [
            ("lookup", "cheap"),
            ("monitoring", "cheap"),
            ("memory", "cheap"),
            ("reflection", "mid"),
            ("analysis", "mid"),
            ("reporting", "mid"),
            ("research", "premium"),
            ("planning", "premium"),
        ],
    )
    def test_default_task_classes(self, task_class: str, tier: str) -> None:
        assert routing.resolve(None)["taskClasses"][task_class] == tier

    def test_default_task_classes_are_exactly_these(self) -> None:
        assert set(routing.resolve(None)["taskClasses"]) == {
            "lookup",
            "monitoring",
            "memory",
            "reflection",
            "analysis",
            "reporting",
            "research",
            "planning",
        }

    @pytest.mark.parametrize(
        "empty", [None, {}, {"tiers": None, "taskClasses": None}, {"tiers": {}, "taskClasses": {}}]
    )
    def test_empty_routing_is_the_defaults(self, empty: Any) -> None:
        assert routing.resolve(empty) == routing.resolve(None)

    def test_tier_override(self) -> None:
        table = routing.resolve({"tiers": {"cheap": "gemini-2.5-flash"}})
        assert table["tiers"] == {"cheap": "gemini-2.5-flash", "mid": "claude-sonnet-4-5", "premium": "claude-opus-4-1"}
        assert table["taskClasses"] == routing.resolve(None)["taskClasses"]

    def test_task_class_override_and_addition(self) -> None:
        table = routing.resolve({"taskClasses": {"lookup": "premium", "triage": "mid"}})
        assert table["taskClasses"]["lookup"] == "premium"
        assert table["taskClasses"]["triage"] == "mid"
        assert table["taskClasses"]["planning"] == "premium"
        assert table["tiers"] == routing.resolve(None)["tiers"]

    def test_tables_are_sorted(self) -> None:
        table = routing.resolve({"taskClasses": {"aaa": "cheap", "zzz": "mid"}})
        assert list(table) == ["tiers", "taskClasses"]
        assert list(table["tiers"]) == sorted(table["tiers"])
        assert list(table["taskClasses"]) == sorted(table["taskClasses"])

    @pytest.mark.parametrize("tier", ["ultra", "Cheap", "", "gold"])
    def test_unknown_tier_is_a_value_error(self, tier: str) -> None:
        with pytest.raises(ValueError, match=r"routing\.taskClasses\.lookup"):
            routing.resolve({"taskClasses": {"lookup": tier}})

    def test_defaults_are_not_modified_by_overrides(self) -> None:
        routing.resolve({"tiers": {"cheap": "x"}, "taskClasses": {"lookup": "premium", "new": "mid"}})
        assert routing.DEFAULT_MODELS["cheap"] == "claude-haiku-4-5"
        assert routing.DEFAULT_TASK_CLASSES["lookup"] == "cheap"
        assert "new" not in routing.DEFAULT_TASK_CLASSES

    def test_the_input_is_not_modified(self) -> None:
        given = {"tiers": {"cheap": "x"}, "taskClasses": {"lookup": "premium"}}
        routing.resolve(given)
        assert given == {"tiers": {"cheap": "x"}, "taskClasses": {"lookup": "premium"}}

    def test_every_default_task_class_names_a_known_tier(self) -> None:
        assert set(routing.DEFAULT_TASK_CLASSES.values()) <= set(routing.TIERS)
        assert set(routing.DEFAULT_MODELS) == set(routing.TIERS)


class TestPodAnnotations:
    def test_one_annotation_with_the_resolved_table(self) -> None:
        annotations = routing.pod_annotations({"tiers": {"mid": "gpt-5"}})
        assert list(annotations) == ["agentbudget.io/routing"] == [routing.ANNOTATION]
        assert json.loads(annotations[routing.ANNOTATION]) == routing.resolve({"tiers": {"mid": "gpt-5"}})

    def test_compact_json(self) -> None:
        value = routing.pod_annotations(None)[routing.ANNOTATION]
        assert " " not in value and "\n" not in value
        assert value.startswith('{"taskClasses":{')

    def test_deterministic_regardless_of_dict_order(self) -> None:
        a = {
            "tiers": {"premium": "p", "cheap": "c", "mid": "m"},
            "taskClasses": {"zeta": "mid", "alpha": "cheap", "lookup": "premium"},
        }
        b = {
            "taskClasses": {"lookup": "premium", "alpha": "cheap", "zeta": "mid"},
            "tiers": {"mid": "m", "premium": "p", "cheap": "c"},
        }
        one = routing.pod_annotations(a)[routing.ANNOTATION]
        two = routing.pod_annotations(b)[routing.ANNOTATION]
        assert one.encode() == two.encode()
        assert routing.pod_annotations(a) == routing.pod_annotations(a)

    def test_defaults_spelled_out_equal_the_defaults(self) -> None:
        spelled = {"tiers": dict(routing.DEFAULT_MODELS), "taskClasses": dict(routing.DEFAULT_TASK_CLASSES)}
        assert routing.pod_annotations(spelled) == routing.pod_annotations(None)

    def test_unknown_tier_raises(self) -> None:
        with pytest.raises(ValueError):
            routing.pod_annotations({"taskClasses": {"lookup": "ultra"}})


def test_an_unknown_tier_name_in_the_tiers_map_is_refused() -> None:
    with pytest.raises(ValueError, match="gold"):
        routing.resolve({"tiers": {"gold": "some-model"}})


def test_spec_values_of_the_wrong_type_are_spec_errors_not_retried() -> None:
    with pytest.raises(decisions.SpecError, match="alertThresholds"):
        decisions.upsert_request("ns", "a", {"limit": "1", "alertThresholds": ["high"]})
    with pytest.raises(decisions.SpecError, match="paused"):
        decisions.upsert_request("ns", "a", {"limit": "1", "paused": "false"})


def test_used_is_never_shown_as_100_percent_while_money_is_left() -> None:
    budget = pb.Budget(utilization=0.995)
    assert decisions.budget_status(budget)["used"] == "99%"


# --------------------------------------------------------------------------- who may spend: the agent principal


def deployment_with(pod: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "research-agent"}, "spec": {"template": {"spec": pod}}}


TARGETED = {"limit": "1", "targetRef": {"name": "research-agent"}}


class TestServiceAccount:
    def test_the_deployments_service_account(self) -> None:
        deployment = deployment_with({"serviceAccountName": "research-sa", "containers": []})
        assert decisions.service_account(TARGETED, deployment) == "research-sa"

    def test_a_deployment_that_names_none_runs_as_default(self) -> None:
        assert decisions.service_account(TARGETED, deployment_with({"containers": []})) == "default"
        assert decisions.service_account(TARGETED, {"metadata": {}}) == "default"

    def test_the_deprecated_service_account_field_is_honoured(self) -> None:
        assert decisions.service_account(TARGETED, deployment_with({"serviceAccount": "old-style"})) == "old-style"

    def test_the_spec_names_it_and_wins(self) -> None:
        spec = {**TARGETED, "serviceAccountName": "other-sa"}
        assert decisions.service_account(spec, deployment_with({"serviceAccountName": "research-sa"})) == "other-sa"
        assert decisions.service_account(spec, None) == "other-sa"  # no Deployment needed
        assert decisions.service_account({"limit": "1", "serviceAccountName": "batch"}, None) == "batch"

    def test_no_target_and_no_name_no_agent(self) -> None:
        assert decisions.service_account({"limit": "1"}, None) is None
        # a Deployment lying around is not the target without a targetRef
        assert decisions.service_account({"limit": "1"}, deployment_with({"serviceAccountName": "x"})) is None

    def test_a_target_that_does_not_exist_yet_no_agent_yet(self) -> None:
        assert decisions.service_account(TARGETED, None) is None

    def test_the_principal_is_the_token_reviews_username(self) -> None:
        assert decisions.agent_principal("agents", "research-sa") == "system:serviceaccount:agents:research-sa"
        assert decisions.agent_principal("agents", None) is None


class TestUpsertRequestPrincipal:
    def test_the_service_account_becomes_the_one_agent_principal(self) -> None:
        req = decisions.upsert_request("agents", "research", TARGETED, "research-sa")
        assert list(req.spec.agent_principals) == ["system:serviceaccount:agents:research-sa"]

    def test_without_a_service_account_there_is_no_agent(self) -> None:
        assert list(decisions.upsert_request("agents", "research", TARGETED).spec.agent_principals) == []
        assert list(decisions.upsert_request("agents", "research", TARGETED, None).spec.agent_principals) == []

    def test_the_namespace_is_the_budgets(self) -> None:
        req = decisions.upsert_request("team-b", "research", TARGETED, "default")
        assert list(req.spec.agent_principals) == ["system:serviceaccount:team-b:default"]

    def test_other_fields_are_unchanged(self) -> None:
        with_agent = decisions.upsert_request("agents", "research", TARGETED, "sa")
        with_agent.spec.ClearField("agent_principals")
        assert with_agent == decisions.upsert_request("agents", "research", TARGETED)

    @pytest.mark.parametrize("bad", ["Research_Agent", "-sa", "sa-", "a b", "x" * 254, "sa:evil"])
    def test_a_name_that_is_no_service_account_is_a_spec_error(self, bad: str) -> None:
        with pytest.raises(SpecError, match="ServiceAccount"):
            decisions.upsert_request("agents", "research", TARGETED, bad)

    def test_a_principal_longer_than_the_authority_keeps_is_a_spec_error(self) -> None:
        with pytest.raises(SpecError, match="253"):
            decisions.upsert_request("n" * 63, "research", TARGETED, "s" * 200)


# --------------------------------------------------------------------------- the injected token


def pod_template(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "agent", "image": "a:1"}], **spec}}


def applied(template: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON merge patch applied (lists replace lists)."""

    def merge(target: Any, change: Any) -> Any:
        if not isinstance(change, dict):
            return change
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in change.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(out.get(k), v)
        return out

    return template if patch is None else merge(template, patch)


TOKEN_VOLUME = {
    "name": "agentbudget-token",
    "projected": {
        "sources": [{"serviceAccountToken": {"audience": "agentbudget", "expirationSeconds": 3600, "path": "token"}}]
    },
}
TOKEN_MOUNT = {"name": "agentbudget-token", "mountPath": "/var/run/secrets/agentbudget.io", "readOnly": True}
TOKEN_ENV = {"name": "AGENTBUDGET_TOKEN_FILE", "value": "/var/run/secrets/agentbudget.io/token"}


class TestTokenInjection:
    def test_a_template_without_it_gets_the_volume_the_mount_and_the_variable(self) -> None:
        patch = decisions.token_injection_patch(pod_template())
        assert patch == {
            "spec": {
                "volumes": [TOKEN_VOLUME],
                "containers": [{"name": "agent", "image": "a:1", "volumeMounts": [TOKEN_MOUNT], "env": [TOKEN_ENV]}],
            }
        }

    def test_once_applied_there_is_nothing_more_to_do(self) -> None:
        template = pod_template()
        once = applied(template, decisions.token_injection_patch(template))
        assert decisions.token_injection_patch(once) is None

    def test_every_container_and_init_container_and_what_they_had_is_kept(self) -> None:
        template = pod_template(
            initContainers=[{"name": "init", "image": "i:1"}],
            containers=[
                {"name": "agent", "image": "a:1", "env": [{"name": "MODE", "value": "fast"}]},
                {
                    "name": "sidecar",
                    "image": "s:1",
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                },
            ],
            volumes=[{"name": "cache", "emptyDir": {}}],
        )
        result = applied(template, decisions.token_injection_patch(template))["spec"]
        assert result["volumes"] == [{"name": "cache", "emptyDir": {}}, TOKEN_VOLUME]
        assert [c["name"] for c in result["containers"]] == ["agent", "sidecar"]
        assert result["containers"][0]["env"] == [{"name": "MODE", "value": "fast"}, TOKEN_ENV]
        assert result["containers"][1]["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}, TOKEN_MOUNT]
        assert result["initContainers"][0]["volumeMounts"] == [TOKEN_MOUNT]
        assert all(c["image"] for c in result["containers"] + result["initContainers"])

    def test_the_api_servers_defaults_do_not_count_as_different(self) -> None:
        defaulted_volume = {**TOKEN_VOLUME, "projected": {**TOKEN_VOLUME["projected"], "defaultMode": 420}}
        container = {
            "name": "agent",
            "image": "a:1",
            "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log",
            "volumeMounts": [{**TOKEN_MOUNT, "mountPropagation": "None"}],
            "env": [TOKEN_ENV],
        }
        assert decisions.token_injection_patch(pod_template(volumes=[defaulted_volume], containers=[container])) is None

    def test_a_volume_of_that_name_that_is_something_else_is_put_right(self) -> None:
        template = pod_template(volumes=[{"name": "agentbudget-token", "secret": {"secretName": "old"}}])
        result = applied(template, decisions.token_injection_patch(template))["spec"]
        assert result["volumes"] == [TOKEN_VOLUME]
        wrong_audience = copy.deepcopy(TOKEN_VOLUME)
        wrong_audience["projected"]["sources"][0]["serviceAccountToken"]["audience"] = "https://kubernetes.default.svc"
        patch = decisions.token_injection_patch(pod_template(volumes=[wrong_audience]))
        assert patch is not None and patch["spec"]["volumes"] == [TOKEN_VOLUME]

    def test_a_variable_or_mount_that_differs_is_replaced_where_it_is(self) -> None:
        template = pod_template(
            containers=[
                {
                    "name": "agent",
                    "image": "a:1",
                    "env": [
                        {"name": "AGENTBUDGET_TOKEN_FILE", "value": "/elsewhere"},
                        {"name": "AFTER", "value": "$(AGENTBUDGET_TOKEN_FILE).bak"},
                    ],
                    "volumeMounts": [{"name": "other", "mountPath": "/var/run/secrets/agentbudget.io"}],
                }
            ],
            volumes=[TOKEN_VOLUME],
        )
        patch = decisions.token_injection_patch(template)
        assert patch is not None and "volumes" not in patch["spec"]  # the volume was right
        (container,) = patch["spec"]["containers"]
        assert [e["name"] for e in container["env"]] == ["AGENTBUDGET_TOKEN_FILE", "AFTER"]
        assert container["env"][0] == TOKEN_ENV
        assert container["volumeMounts"] == [TOKEN_MOUNT]

    def test_the_template_is_not_modified(self) -> None:
        template = pod_template(volumes=[{"name": "cache", "emptyDir": {}}])
        before = copy.deepcopy(template)
        decisions.token_injection_patch(template)
        assert template == before

    def test_a_template_with_no_containers_only_gets_the_volume(self) -> None:
        assert decisions.token_injection_patch({"spec": {}}) == {"spec": {"volumes": [TOKEN_VOLUME]}}

    def test_the_names_are_the_documented_ones(self) -> None:
        from agentbudget import credentials

        assert decisions.TOKEN_FILE == credentials.DEFAULT_TOKEN_FILE  # where the client looks by default
        assert decisions.TOKEN_AUDIENCE == "agentbudget"


def test_merge_patches_merges_maps_and_the_second_wins() -> None:
    first = {"metadata": {"annotations": {"a": "1"}}, "spec": {"template": {"metadata": {"annotations": {"r": "x"}}}}}
    second = {"metadata": {"resourceVersion": "7"}, "spec": {"template": {"spec": {"volumes": []}}}}
    assert decisions.merge_patches(first, second) == {
        "metadata": {"annotations": {"a": "1"}, "resourceVersion": "7"},
        "spec": {"template": {"metadata": {"annotations": {"r": "x"}}, "spec": {"volumes": []}}},
    }
    assert decisions.merge_patches({"a": {"b": 1}}, {"a": None}) == {"a": None}  # a removal stays a removal
