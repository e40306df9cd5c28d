"""The AgentBudget CRD: its schema against sample manifests, its shape, and Kubernetes' own rules for it.

The schema is validated the way the API server applies it. A structural schema is OpenAPI 3.0, whose
``exclusiveMinimum`` / ``exclusiveMaximum`` are booleans: ``jsonschema.Draft4Validator`` has exactly
those semantics. ``x-kubernetes-*`` keys are vendor extensions and are stripped; before that, every
object node with ``properties`` that does not preserve unknown fields is closed, because the API server
prunes unknown fields there and, under strict field validation (``kubectl``'s default), rejects them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import crd
import jsonschema
import pytest
import yaml
from agentbudget import routing
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_operator import decisions, handlers
from agentbudget_operator.kube import GROUP, PLURAL, VERSION
from agentbudget_server.money import MAX_AMOUNT_NANOS
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.money_pb2 import Money

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = crd.CRD_PATH
SAMPLES = ROOT / "operator" / "samples"
VALID = sorted((SAMPLES / "valid").glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
INT64 = (-(2**63), 2**63 - 1)


def load_crd() -> dict[str, Any]:
    return crd.load()


CRD = load_crd()
VERSION_0: dict[str, Any] = CRD["spec"]["versions"][0]
SCHEMA: dict[str, Any] = VERSION_0["schema"]["openAPIV3Schema"]
as_json_schema = crd.as_json_schema
VALIDATOR = crd.validator()


def test_the_validator_has_openapi_3_0_semantics() -> None:
    jsonschema.Draft4Validator.check_schema(as_json_schema(SCHEMA))
    items = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "exclusiveMaximum": True}
    check = jsonschema.Draft4Validator(items)
    assert [check.is_valid(v) for v in (0, 0.5, 1)] == [False, True, False]


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def header(path: Path) -> dict[str, str]:
    """The leading comment lines ``# key: value`` of a sample."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line.lstrip("# ").partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def locations(error: jsonschema.ValidationError) -> list[str]:
    """Where an error is, as dotted paths down to the field (a missing or unexpected one included)."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        return [".".join([*path, name]) for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        declared = set(error.schema.get("properties", {}))
        return [".".join([*path, name]) for name in sorted(set(error.instance) - declared)]
    return [".".join(path)]


def errors_of(doc: Any) -> list[jsonschema.ValidationError]:
    return sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))


# --------------------------------------------------------------------------- samples


def test_there_are_enough_samples() -> None:
    assert len(VALID) >= 5
    assert len(INVALID) >= 10
    assert {p.name for p in VALID} >= {
        "minimal.yaml",
        "full.yaml",
        "weekly.yaml",
        "daily-eur.yaml",
        "nine-decimals.yaml",
    }


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_sample_passes(path: Path) -> None:
    doc = load(path)
    assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
    assert doc["kind"] == CRD["spec"]["names"]["kind"]
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    problems = [f"{locations(e)}: {e.message}" for e in errors_of(doc)]
    assert problems == []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_sample_is_taken_by_the_operator(path: Path) -> None:
    """What the schema lets through, the operator can turn into an authority request and a routing table."""
    spec = load(path)["spec"]
    request = decisions.upsert_request("agents", "sample", spec)
    assert request.spec.limit.currency_code == spec.get("currency", "USD")
    routing.resolve(spec.get("routing"))


def test_full_sample_uses_every_spec_field() -> None:
    spec = load(SAMPLES / "valid" / "full.yaml")["spec"]
    assert set(spec) == set(SCHEMA["properties"]["spec"]["properties"])
    assert set(spec["targetRef"]) == {"apiVersion", "kind", "name"}
    assert set(spec["routing"]) == {"tiers", "taskClasses"}
    assert set(spec["routing"]["tiers"]) == set(routing.TIERS)


def test_nine_decimal_sample_is_exact() -> None:
    spec = load(SAMPLES / "valid" / "nine-decimals.yaml")["spec"]
    limit = decisions.upsert_request("agents", "precise", spec).spec.limit
    assert (limit.units, limit.nanos) == (12, 123_456_789)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_sample_fails_for_its_stated_reason(path: Path) -> None:
    assert path.read_text().startswith("# INVALID: "), "an invalid sample opens with a comment saying what is wrong"
    meta = header(path)
    assert meta.get("invalid"), "the comment says what is wrong"
    where = meta["wrong at"]
    doc = load(path)
    assert doc["apiVersion"] == f"{GROUP}/{VERSION}" and doc["kind"] == "AgentBudget"
    errors = errors_of(doc)
    assert errors, f"{path.name} passes the schema, but {meta['invalid']}"
    found = [loc for e in errors for loc in locations(e)]
    # a single way of being wrong: every error is at (or under) the field the comment names
    assert all(loc == where or loc.startswith(where + ".") for loc in found), (found, where)


def test_invalid_samples_each_are_wrong_in_a_different_place_or_way() -> None:
    reasons = [header(p)["invalid"] for p in INVALID]
    assert len(set(reasons)) == len(reasons)


# --------------------------------------------------------------------------- the CRD's shape


def test_identity() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["kind"] == "CustomResourceDefinition"
    spec = CRD["spec"]
    assert spec["group"] == GROUP == "agentbudget.io"
    assert CRD["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" == "agentbudgets.agentbudget.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == "AgentBudget"
    assert names["listKind"] == "AgentBudgetList"
    assert names["plural"] == PLURAL == "agentbudgets"
    assert names["singular"] == "agentbudget"
    assert "ab" in names["shortNames"]


def test_one_served_storage_version_the_operator_uses() -> None:
    versions = CRD["spec"]["versions"]
    assert [v["name"] for v in versions if v["storage"]] == [VERSION] == ["v1alpha1"]
    assert VERSION_0["name"] == VERSION and VERSION_0["served"] is True
    assert handlers.CR == (GROUP, VERSION, PLURAL)


def test_status_subresource() -> None:
    assert VERSION_0["subresources"]["status"] == {}


def schema_at(json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's simple jsonPath (.a.b.c) points at, or None."""
    node: dict[str, Any] | None = SCHEMA
    for part in json_path.lstrip(".").split("."):
        if node is None:
            return None
        node = node.get("properties", {}).get(part)
    return node


def test_printer_columns() -> None:
    columns = VERSION_0["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Limit", "Spent", "Remaining", "Used", "Target", "Age"]
    by_name = {c["name"]: c for c in columns}
    assert {n: c["jsonPath"] for n, c in by_name.items()} == {
        "Phase": ".status.phase",
        "Limit": ".status.limit",
        "Spent": ".status.spent",
        "Remaining": ".status.remaining",
        "Used": ".status.used",
        "Target": ".spec.targetRef.name",
        "Age": ".metadata.creationTimestamp",
    }
    assert by_name["Age"]["type"] == "date"
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            continue  # ObjectMeta is the API server's, not in the CRD schema
        node = schema_at(column["jsonPath"])
        assert node is not None, f"column {column['name']}: {column['jsonPath']} is not in the schema"
        assert node["type"] == column["type"] == "string", column


def test_printer_columns_show_what_the_operator_writes() -> None:
    status = decisions.budget_status(pb.Budget(phase=pb.ACTIVE))
    for column in VERSION_0["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.removeprefix(".status.") in status, column


# --------------------------------------------------------------------------- spec schema vs the operator


SPEC = SCHEMA["properties"]["spec"]


def test_spec_fields_are_the_operators() -> None:
    assert SCHEMA["required"] == ["spec"]
    assert SPEC["required"] == ["limit"]
    assert set(SPEC["properties"]) == {
        "limit",
        "currency",
        "period",
        "timeZone",
        "alertThresholds",
        "paused",
        "targetRef",
        "serviceAccountName",
        "injectToken",
        "routing",
    }


def test_spec_defaults_match_the_operators() -> None:
    props = SPEC["properties"]
    assert props["currency"]["default"] == "USD"
    assert props["period"]["default"] == "Monthly"
    assert set(props["period"]["enum"]) == set(decisions.PERIODS)
    assert props["alertThresholds"]["default"] == [0.8]
    assert list(decisions.upsert_request("a", "b", {"limit": "1"}).spec.alert_thresholds) == [0.8]
    assert props["paused"]["default"] is False
    assert props["timeZone"]["default"] == ""


def test_routing_schema_matches_the_operators_tiers() -> None:
    route = SPEC["properties"]["routing"]["properties"]
    assert set(route["tiers"]["properties"]) == set(routing.TIERS)
    assert set(route["taskClasses"]["additionalProperties"]["enum"]) == set(routing.TIERS)


def test_target_is_a_deployment() -> None:
    target = SPEC["properties"]["targetRef"]["properties"]
    assert target["kind"]["enum"] == ["Deployment"]
    assert target["apiVersion"]["enum"] == ["apps/v1"]


def spec_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentBudget", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("limit", ["0", "1", "12.50", "0.000000001", "999999999.999999999", "1000000000"])
def test_limits_the_authority_takes_pass(limit: str) -> None:
    assert errors_of(spec_doc(limit=limit)) == []
    nanos = int(limit.partition(".")[0]) * 10**9 + int(limit.partition(".")[2].ljust(9, "0"))
    assert nanos <= MAX_AMOUNT_NANOS
    decisions.upsert_request("a", "b", {"limit": limit})


@pytest.mark.parametrize("limit", ["1000000000.000000001", "1000000001", "9999999999.999999999"])
def test_limits_above_the_authoritys_maximum_are_rejected(limit: str) -> None:
    assert errors_of(spec_doc(limit=limit)) != []


@pytest.mark.parametrize("threshold", [0.0000001, 0.9999999])
def test_thresholds_the_authority_cannot_keep_are_rejected(threshold: float) -> None:
    assert errors_of(spec_doc(limit="1", alertThresholds=[threshold])) != []


@pytest.mark.parametrize("threshold", [0.000001, 0.5, 0.999999])
def test_thresholds_to_a_millionth_pass(threshold: float) -> None:
    assert errors_of(spec_doc(limit="1", alertThresholds=[threshold])) == []


# --------------------------------------------------------------------------- status schema vs the operator


STATUS = SCHEMA["properties"]["status"]


def written_status() -> dict[str, Any]:
    """A full status as the operator writes it: budget_status plus its own bookkeeping keys."""
    budget = pb.Budget(
        name="agents/research",
        phase=pb.WARNING,
        effective_limit=Money(currency_code="USD", units=20),
        spent=Money(currency_code="USD", units=16, nanos=1),
        held=Money(currency_code="USD", units=1),
        remaining=Money(currency_code="USD", units=2, nanos=999_999_999),
        utilization=0.80000000005,
        period_start=Timestamp(seconds=1_717_200_000),
        period_end=Timestamp(seconds=1_719_792_000),
    )
    status = decisions.budget_status(budget)
    now = "2024-06-02T12:00:00Z"
    status["observedGeneration"] = 3
    status["lastEventId"] = 42
    status["conditions"] = decisions.merge_conditions(
        [],
        [
            decisions.condition("Synced", True, "Synced", "in force", 3, now, []),
            decisions.condition("TargetFound", False, "TargetNotFound", "Deployment x does not exist", 3, now, []),
        ],
    )
    return status


def test_every_status_key_the_operator_writes_is_declared() -> None:
    declared = set(STATUS["properties"])
    written = set(decisions.budget_status(pb.Budget())) | {"observedGeneration", "lastEventId", "conditions"}
    assert written <= declared, written - declared
    condition_keys = set(decisions.condition("Synced", True, "r", "m", 1, "2024-06-01T00:00:00Z", []))
    assert condition_keys <= set(STATUS["properties"]["conditions"]["items"]["properties"])


def test_the_status_the_operator_writes_validates() -> None:
    status = written_status()
    check = jsonschema.Draft4Validator(as_json_schema(STATUS, root=False))
    assert [e.message for e in check.iter_errors(status)] == []


def test_status_formats() -> None:
    """Kubernetes checks ``format`` too; Draft 4 here does not, so check what the operator writes."""
    status = written_status()
    for key in ("periodStart", "periodEnd"):
        assert STATUS["properties"][key]["format"] == "date-time"
        assert RFC3339.match(status[key]), status[key]
        datetime.fromisoformat(status[key])
    for c in status["conditions"]:
        assert RFC3339.match(c["lastTransitionTime"])
        assert INT64[0] <= c["observedGeneration"] <= INT64[1]
    for key in ("observedGeneration", "lastEventId"):
        assert STATUS["properties"][key]["format"] == "int64"
        assert isinstance(status[key], int) and INT64[0] <= status[key] <= INT64[1]


def test_every_phase_the_operator_writes_is_in_the_enum() -> None:
    phases = {decisions.budget_status(pb.Budget(phase=p))["phase"] for p in pb.Phase.values()}
    assert phases == {"Active", "Warning", "Exhausted", "Paused", "Unknown"}
    assert phases <= set(STATUS["properties"]["phase"]["enum"])


def test_conditions_status_enum() -> None:
    item = STATUS["properties"]["conditions"]["items"]
    assert set(item["properties"]["status"]["enum"]) == {"True", "False", "Unknown"}
    assert set(item["required"]) == {"type", "status"}


def test_status_keeps_what_it_does_not_declare() -> None:
    # kopf's default progress storage also writes .status.kopf: it must not be pruned
    assert STATUS.get("x-kubernetes-preserve-unknown-fields") is True


# --------------------------------------------------------------------------- Kubernetes' rules for a CRD schema


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or ".", node
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def test_structural_every_node_has_a_type() -> None:
    untyped = [
        p
        for p, n in nodes(SCHEMA)
        if not n.get("type")
        and not n.get("x-kubernetes-preserve-unknown-fields")
        and not n.get("x-kubernetes-int-or-string")
    ]
    assert untyped == []


def test_structural_no_forbidden_keywords() -> None:
    forbidden = {"$ref", "patternProperties", "dependencies", "definitions", "id", "$schema"}
    found = [(p, k) for p, n in nodes(SCHEMA) for k in n if k in forbidden]
    assert found == []
    assert [p for p, n in nodes(SCHEMA) if n.get("uniqueItems") is True] == []


def test_structural_root_constrains_no_metadata() -> None:
    assert "metadata" not in SCHEMA.get("properties", {})


def test_structural_properties_and_additional_properties_are_exclusive() -> None:
    both = [p for p, n in nodes(SCHEMA) if n.get("properties") and "additionalProperties" in n]
    assert both == []


def test_defaults_and_enums_validate_against_their_own_node() -> None:
    """The API server refuses a CRD whose defaults or enum values its own schema would reject."""
    bad = []
    for path, node in nodes(SCHEMA):
        plain = {k: v for k, v in node.items() if k not in ("default", "enum")}
        check = jsonschema.Draft4Validator(as_json_schema(copy.deepcopy(plain), root=False))
        if "default" in node and not check.is_valid(node["default"]):
            bad.append((path, "default", node["default"]))
        bad += [(path, "enum", v) for v in node.get("enum", []) if not check.is_valid(v)]
    assert bad == []


def test_patterns_compile() -> None:
    patterns = [(p, n["pattern"]) for p, n in nodes(SCHEMA) if "pattern" in n]
    assert {p for p, _ in patterns} == {
        ".spec.limit",
        ".spec.currency",
        ".spec.timeZone",
        ".spec.targetRef.name",
        ".spec.serviceAccountName",
    }
    for _, pattern in patterns:
        re.compile(pattern)
