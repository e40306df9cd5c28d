"""The Grafana dashboard asks only for metrics the authority really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from agentbudget_server.settings import Webhook
from conftest import expect_error, make_budget, server_settings, usd
from google.protobuf.duration_pb2 import Duration
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parent.parent / "charts" / "agentbudget" / "dashboards" / "agentbudget.json"
# PromQL's functions, aggregations and keywords: every other name in an expression is a metric.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "sort", "sort_desc", "vector", "scalar", "abs", "clamp_min", "clamp_max", "round", "ceil", "floor",
    "time", "label_replace", "label_join", "absent", "sum_over_time", "avg_over_time", "max_over_time",
    "min_over_time", "predict_linear", "e", "inf", "nan",
}  # fmt: skip
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("_sum", "_count", ""),
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label names, ranges, strings and variables dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", "", expr)
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if t not in PROMQL_WORDS}


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in items:
        out.append(p)
        out.extend(panels(p.get("panels", [])))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [(p["title"], t["expr"]) for p in panels(board["panels"]) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {var['name']}: {q}"
            found.append((f"variable {var['name']}", m.group(1)))
    return found


async def exported(port: int) -> set[str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


async def traffic(stub: Any) -> None:
    await make_budget(stub, "team/a", "10")
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r1", amount=usd("9")))
    details = pb.CostDetails(kind=pb.MODEL_INFERENCE, model="claude-sonnet-4-5")
    await stub.Commit(pb.CommitRequest(budget="team/a", reservation_id="r1", actual=usd("8.5"), details=details))
    ttl = Duration(nanos=200_000_000)
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r2", amount=usd("0.1"), ttl=ttl))
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r3", amount=usd("0.1")))
    await stub.Release(pb.ReleaseRequest(budget="team/a", reservation_id="r3"))
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r4", amount=usd("5"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )
    await stub.RecordCost(pb.RecordCostRequest(budget="team/a", request_id="c1", amount=usd("2")))


def test_the_dashboard_is_valid_grafana_json():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "agentbudget" and board["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels(board["panels"])}
    for wanted in ("Burn rate by agent", "Burn rate by model", "Spend by agent", "Spend by model",
                   "Utilization against thresholds", "Denials", "Latency by method"):  # fmt: skip
        assert wanted in titles
    for where, expr in queries(board):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), where
        assert metric_names(expr), f"{where}: no metric in {expr}"


async def test_every_query_uses_only_metrics_the_authority_exports(dsn):
    authority = await app.start(server_settings(webhooks=(Webhook("json", "http://127.0.0.1:9/unreachable"),)), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as ch:
            await traffic(pb_grpc.BudgetAuthorityStub(ch))
        names = await exported(authority.metrics_port)
    finally:
        await authority.stop(grace=0.5)
    board = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for where, expr in queries(board):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(where) for name, where in used.items() if name not in names}
    assert not unknown, f"the dashboard asks for metrics the server does not export: {unknown}"
    assert all(name.startswith("agentbudget_") for name in used)
    assert "agentbudget_committed_cost_total" in used and "agentbudget_rpc_duration_seconds_bucket" in used


def test_metric_names_are_found_in_promql():
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{service="x", code=~"A|B"}[5m]))) '
        '/ on (method) group_left max by (budget) (b{budget=~"$budget"}) or vector(0) * 1e9'
    )
    assert metric_names(expr) == {"a_bucket", "b"}
