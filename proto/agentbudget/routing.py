"""Model routing: task classes map to tiers, tiers map to models; defaults overridable per budget."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

TIERS = ("cheap", "mid", "premium")
DEFAULT_MODELS: dict[str, str] = {
    "cheap": "claude-haiku-4-5",
    "mid": "claude-sonnet-4-5",
    "premium": "claude-opus-4-1",
}
# The usual practice: routine work on the cheap tier, judgement on mid, open-ended thinking on premium.
DEFAULT_TASK_CLASSES: dict[str, str] = {
    "lookup": "cheap",
    "monitoring": "cheap",
    "memory": "cheap",
    "reflection": "mid",
    "analysis": "mid",
    "reporting": "mid",
    "research": "premium",
    "planning": "premium",
}
ANNOTATION = "agentbudget.io/routing"


def resolve(routing: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """The full table from an AgentBudget's ``spec.routing``: the defaults with its overrides."""
    routing = routing or {}
    return resolve_parts(routing.get("tiers"), routing.get("taskClasses"))


def resolve_parts(tiers: Mapping[str, str] | None, task_classes: Mapping[str, str] | None) -> dict[str, dict[str, str]]:
    """The full table: the defaults with these overrides; unknown tier names are refused."""
    for tier in tiers or {}:
        if tier not in TIERS:
            raise ValueError(f"routing.tiers: unknown tier {tier!r} (known: {', '.join(TIERS)})")
    merged_tiers = {**DEFAULT_MODELS, **dict(tiers or {})}
    classes = {**DEFAULT_TASK_CLASSES, **dict(task_classes or {})}
    for task_class, tier in classes.items():
        if tier not in TIERS:
            raise ValueError(f"routing.taskClasses.{task_class}: unknown tier {tier!r}")
    return {"tiers": dict(sorted(merged_tiers.items())), "taskClasses": dict(sorted(classes.items()))}


def route(table: Mapping[str, Mapping[str, str]], task_class: str) -> tuple[str, str]:
    """(tier, model) of a task class; KeyError when the table does not know it."""
    tier = table["taskClasses"][task_class]
    return tier, table["tiers"][tier]


def pod_annotations(routing: Mapping[str, Any] | None) -> dict[str, str]:
    """What the operator writes onto the target's pod template (one deterministic JSON value)."""
    return {ANNOTATION: json.dumps(resolve(routing), sort_keys=True, separators=(",", ":"))}
