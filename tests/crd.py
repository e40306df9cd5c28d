"""The AgentBudget CRD as the tests use it: that very file of the chart, and its schema applied the
way the API server applies it.

A structural schema is OpenAPI 3.0, whose ``exclusiveMinimum`` / ``exclusiveMaximum`` are booleans:
``jsonschema.Draft4Validator`` has exactly those semantics. ``x-kubernetes-*`` keys are vendor
extensions and are stripped; before that, every object node with ``properties`` that does not
preserve unknown fields is closed, because the API server prunes unknown fields there and, under
strict field validation (``kubectl``'s default), rejects them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "charts" / "agentbudget" / "crds" / "agentbudgets.agentbudget.io.yaml"


@cache
def load() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        crd: dict[str, Any] = yaml.safe_load(f)
    return crd


def schema() -> dict[str, Any]:
    version: dict[str, Any] = load()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


def as_json_schema(node: Any, *, root: bool = True) -> Any:
    """The CRD schema as a Draft 4 JSON Schema with the API server's semantics (see the module doc)."""
    if isinstance(node, list):
        return [as_json_schema(item, root=False) for item in node]
    if not isinstance(node, dict):
        return node
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out = {k: as_json_schema(v, root=False) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node:
        # "properties" maps names to schemas: keep the names, convert the schemas
        out["properties"] = {name: as_json_schema(s, root=False) for name, s in node["properties"].items()}
        if root:  # every object carries these, whatever its schema says
            out["properties"] = {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                **out["properties"],
            }
        if "additionalProperties" not in node and not preserve:
            out["additionalProperties"] = False
    return out


@cache
def validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(as_json_schema(schema()))


def errors(body: dict[str, Any]) -> list[str]:
    """What the API server would refuse in ``body`` ("" when nothing)."""
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator().iter_errors(body)
    ]


def resource() -> kmock.resource:
    crd = load()["spec"]
    return kmock.resource(crd["group"], crd["versions"][0]["name"], crd["names"]["plural"])


def resource_info(verbs: set[str]) -> kmock.ResourceInfo:
    spec = load()["spec"]
    names = spec["names"]
    return kmock.ResourceInfo(
        kind=names["kind"],
        singular=names["singular"],
        namespaced=spec["scope"] == "Namespaced",
        verbs=verbs,
        shortnames=set(names.get("shortNames", [])),
        subresources=set(spec["versions"][0].get("subresources", {})),
    )
