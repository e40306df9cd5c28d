"""Pricing end to end: the authority prices usage from genai-prices and a configuration file,
reserves by estimate or by task class, commits and records by usage — over gRPC on the real server.

Every expectation is computed here, independently of the server's code: genai-prices'
``calc_price(...).total_price`` (or the configuration's prices) in Decimal, rounded up to the nano.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext
from pathlib import Path

import grpc
import pytest
from agentbudget import routing
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from conftest import audit, expect_error, ledger_rows, make_budget, nanos, server_settings, usd
from genai_prices import Usage, calc_price
from google.protobuf.duration_pb2 import Duration

Code = grpc.StatusCode
GENAI_VERSION = f"genai-prices {importlib.metadata.version('genai-prices')}"
BUDGET = "team/agent"
SERVICE = "/agentbudget.v1.BudgetAuthority"


# ---------------------------------------------------------------------------------------------
# Independent expectations


def ceil_nanos(amount: Decimal) -> int:
    """USD to nanos, rounded up, exactly (a wide context: nothing rounds before the ceiling)."""
    with localcontext() as ctx:
        ctx.prec = 100
        return int((amount * 1_000_000_000).to_integral_value(rounding=ROUND_CEILING))


def exact_nanos(amount: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return amount * 1_000_000_000


def genai_total(
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    provider: str | None = None,
) -> Decimal:
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    return calc_price(usage, model_ref=model, provider_id=provider).total_price


def genai_nanos(model: str, *args: int, provider: str | None = None) -> int:
    return ceil_nanos(genai_total(model, *args, provider=provider))


def per_mtok(tokens: int, price: str) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 100
        return tokens * Decimal(price) / 1_000_000


def model_details(
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read: int = 0,
    cache_write: int = 0,
    provider: str = "",
    **extra: object,
) -> pb.CostDetails:
    return pb.CostDetails(
        model=model,
        provider=provider,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        **extra,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# Servers


@contextlib.asynccontextmanager
async def serving(
    dsn: str, config: Path | None = None
) -> AsyncIterator[tuple[pb_grpc.BudgetAuthorityStub, grpc.aio.Channel]]:
    settings = server_settings(price_config=str(config)) if config else server_settings()
    authority = await app.start(settings, dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            yield pb_grpc.BudgetAuthorityStub(channel), channel
    finally:
        await authority.stop(grace=0.5)


CONFIG = """\
models:
  claude-opus-4-1:        # known to genai-prices: repriced here
    input_mtok: 1
    output_mtok: 2
    cache_read_mtok: "0.1"
    cache_write_mtok: "1.25"
  acme-house-7b:          # unknown to genai-prices: added
    input_mtok: "0.3333"
    output_mtok: "1.4"
  acme-cached:
    input_mtok: "0.50"
    output_mtok: "1.50"
    cache_read_mtok: "0.05"
sandboxes:
  e2b-small: {per_second: "0.000014"}
  gpu-a100: "0.000972"    # the shorthand: the price per second itself
apis:
  tavily-search: {per_call: "0.008"}
  serpapi: "0.015"
  plausible: {per_call: "0"}
"""


@pytest.fixture
def price_config(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(CONFIG, "utf-8")
    return path


@pytest.fixture
async def cstub(dsn: str, price_config: Path) -> AsyncIterator[pb_grpc.BudgetAuthorityStub]:
    """A stub of an authority with the price configuration above."""
    async with serving(dsn, price_config) as (stub, _):
        yield stub


async def entry_count(dsn: str, budget: str = BUDGET) -> int:
    return len(await ledger_rows(dsn, budget))


async def get(stub: pb_grpc.BudgetAuthorityStub, name: str = BUDGET) -> pb.Budget:
    return (await stub.GetBudget(pb.GetBudgetRequest(name=name))).budget


# ---------------------------------------------------------------------------------------------
# 1. genai-prices, across providers


@dataclass(frozen=True)
class Case:
    model: str
    input_tokens: int
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0
    provider: str = ""


CASES = [
    # anthropic: plain, cache read + write, the long-context tier (above 200k input tokens)
    Case("claude-sonnet-4-5", 150_000, 4_000),
    Case("claude-sonnet-4-5", 250_000, 4_000, 100_000, 20_000),
    Case("claude-opus-4-1", 12_345, 6_789, 5_000, 2_000),
    Case("claude-haiku-4-5", 1, 1),
    Case("claude-3-5-haiku-latest", 33_333, 777, 0, 3_000),
    Case("claude-haiku-5-5", 120_000, 3_000, 40_000, 10_000),
    Case("claude-sonnet-4-6", 10_000, 1_000, 2_500, 0),
    # the same model through another provider (Vertex AI), disambiguated by provider
    Case("claude-sonnet-4-5", 220_000, 1_000, 0, 0, "google"),
    # openai: cache reads, tiers above 272k, tiny and huge counts
    Case("gpt-4o", 100_000, 2_000, 60_000),
    Case("gpt-4.1-mini", 7, 13),
    Case("gpt-5.4", 100_000, 10_000, 50_000),
    Case("gpt-5.4", 300_000, 10_000, 50_000),
    Case("o3-mini", 5_555, 44_444, 1_024),
    Case("gpt-5-nano", 123_456, 654_321),
    Case("gpt-6-sol", 300_000, 10_000, 100_000, 20_000),
    Case("gpt-4o-mini", 10**12, 10**9),
    # google: tiers above 200k (2.5 pro) and 128k (1.5 flash), cache reads
    Case("gemini-2.5-pro", 150_000, 8_000),
    Case("gemini-2.5-pro", 250_000, 8_000, 30_000),
    Case("gemini-2.5-flash", 90_000, 3_000, 45_000),
    Case("gemini-1.5-flash", 200_000, 1_000),
    # others genai-prices knows
    Case("mistral-large-2512", 40_000, 2_500),
    Case("deepseek-v3.1-terminus", 64_000, 4_096, 32_000),
    Case("grok-3", 20_000, 2_000, 10_000),
    Case("grok-4.3", 250_000, 5_000),
    Case("command-r-plus", 11_111, 2_222),
    Case("command-r7b", 3, 0),  # 112.5 nanos: rounds up
    Case("llama-3.3-70b-versatile", 9_999, 999, 0, 0, "groq"),
    Case("kimi-k2.5", 50_000, 5_000, 20_000),
    Case("amazon.nova-pro-v1:0", 10_000, 1_000, 0, 0, "aws"),
    Case("amazon.nova-micro-v1:0", 1, 0, 1, 0, "aws"),  # a cache read of 8.75 nanos: rounds up
    Case("MiniMax-M2", 30_000, 3_000, 10_000, 5_000),
]


def expected_for(case: Case) -> Decimal:
    return genai_total(
        case.model,
        case.input_tokens,
        case.output_tokens,
        case.cache_read,
        case.cache_write,
        provider=case.provider or None,
    )


def test_the_cases_span_providers_tiers_caches_and_rounding() -> None:
    """The table above exercises what it claims to (checked against genai-prices itself)."""
    providers = set()
    for case in CASES:
        usage = Usage(
            input_tokens=case.input_tokens,
            output_tokens=case.output_tokens,
            cache_read_tokens=case.cache_read,
            cache_write_tokens=case.cache_write,
        )
        providers.add(calc_price(usage, model_ref=case.model, provider_id=case.provider or None).provider.id)
    assert {"anthropic", "openai", "google", "mistral", "deepseek", "x-ai", "cohere", "groq", "aws"} <= providers
    assert len(CASES) >= 20
    assert any(c.cache_read for c in CASES) and any(c.cache_write for c in CASES)
    # Some expectations are not whole nanos: the ceiling matters.
    assert sum(exact_nanos(expected_for(c)) != ceil_nanos(expected_for(c)) for c in CASES) >= 2
    # Long-context tiers: the rate per input token rises above the threshold.
    for model, short, long in (
        ("claude-sonnet-4-5", 150_000, 250_000),
        ("gpt-5.4", 200_000, 300_000),
        ("gemini-2.5-pro", 150_000, 250_000),
        ("gemini-1.5-flash", 100_000, 200_000),
        ("grok-4.3", 150_000, 250_000),
    ):
        assert genai_total(model, long) / long > genai_total(model, short) / short, model
    # The provider matters: Anthropic's Sonnet 4.5 on Vertex AI is priced by Google's entry.
    assert calc_price(Usage(input_tokens=1), model_ref="claude-sonnet-4-5", provider_id="google").provider.id == (
        "google"
    )


async def test_record_cost_priced_from_usage_charges_genai_prices_rounded_up(stub, dsn) -> None:
    await make_budget(stub, limit="10000000")
    expected: dict[str, int] = {}
    for i, case in enumerate(CASES):
        rid = f"rc-{i}"
        resp = await stub.RecordCost(
            pb.RecordCostRequest(
                budget=BUDGET,
                request_id=rid,
                details=model_details(
                    case.model, case.input_tokens, case.output_tokens, case.cache_read, case.cache_write, case.provider
                ),
            )
        )
        expected[rid] = ceil_nanos(expected_for(case))
        assert resp.entry.type == pb.ENTRY_CHARGE
        assert nanos(resp.entry.spent_delta) == expected[rid], case
        assert resp.entry.spent_delta.currency_code == "USD"
        assert resp.entry.catalog_version == GENAI_VERSION, case
        assert resp.entry.details.model == case.model
    rows = {r["request_id"]: r for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] == "CHARGE"}
    assert {rid: r["spent_delta"] for rid, r in rows.items()} == expected
    assert {r["catalog_version"] for r in rows.values()} == {GENAI_VERSION}
    assert GENAI_VERSION.startswith("genai-prices ") and "+config:" not in GENAI_VERSION
    budget = await get(stub)
    assert nanos(budget.spent) == sum(expected.values())
    assert await audit(dsn) == []


async def test_reasoning_tokens_are_within_output_and_not_charged_twice(stub, dsn) -> None:
    await make_budget(stub)
    details = model_details("o3-mini", 2_000, 9_000, reasoning_tokens=8_000)
    resp = await stub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="think", details=details))
    assert nanos(resp.entry.spent_delta) == genai_nanos("o3-mini", 2_000, 9_000)
    assert resp.entry.details.reasoning_tokens == 8_000
    assert await audit(dsn) == []


async def test_an_explicit_amount_is_charged_as_given_without_a_catalog_version(stub, dsn) -> None:
    await make_budget(stub)
    resp = await stub.RecordCost(
        pb.RecordCostRequest(
            budget=BUDGET, request_id="given", amount=usd("0.5"), details=model_details("gpt-4o", 1_000, 1_000)
        )
    )
    assert nanos(resp.entry.spent_delta) == 500_000_000
    assert resp.entry.catalog_version == ""
    row = (await ledger_rows(dsn, BUDGET))[-1]
    assert row["catalog_version"] is None


# ---------------------------------------------------------------------------------------------
# 2. The configuration file


async def test_config_overrides_a_known_model_and_adds_new_ones(cstub, dsn) -> None:
    await make_budget(cstub)

    async def record(rid: str, details: pb.CostDetails) -> pb.LedgerEntry:
        return (await cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id=rid, details=details))).entry

    # The override wins: 7000 plain input + 2000 cache read + 1000 cache write, 3000 output.
    opus = await record("opus", model_details("claude-opus-4-1", 10_000, 3_000, 2_000, 1_000))
    want = per_mtok(7_000, "1") + per_mtok(3_000, "2") + per_mtok(2_000, "0.1") + per_mtok(1_000, "1.25")
    assert nanos(opus.spent_delta) == ceil_nanos(want) == 14_450_000
    assert nanos(opus.spent_delta) != genai_nanos("claude-opus-4-1", 10_000, 3_000, 2_000, 1_000)
    # Models genai-prices does not know are priced by the configuration.
    house = await record("house", model_details("acme-house-7b", 1_234, 567))
    assert nanos(house.spent_delta) == ceil_nanos(per_mtok(1_234, "0.3333") + per_mtok(567, "1.4"))
    one = await record("one-token", model_details("acme-house-7b", 1, 0))
    assert exact_nanos(per_mtok(1, "0.3333")) == Decimal("333.3")
    assert nanos(one.spent_delta) == 334  # rounded up
    cached = await record("cached", model_details("acme-cached", 10_000, 1_000, 8_000))
    want = per_mtok(2_000, "0.50") + per_mtok(8_000, "0.05") + per_mtok(1_000, "1.50")
    assert nanos(cached.spent_delta) == ceil_nanos(want)
    # Models the configuration does not name are still priced by genai-prices.
    gpt = await record("gpt", model_details("gpt-4o", 5_000, 500, 1_000))
    assert nanos(gpt.spent_delta) == genai_nanos("gpt-4o", 5_000, 500, 1_000)

    versions = {e.catalog_version for e in (opus, house, one, cached, gpt)}
    assert len(versions) == 1
    version = versions.pop()
    assert version.startswith(GENAI_VERSION + "+config:") and len(version) > len(GENAI_VERSION + "+config:")
    assert {r["catalog_version"] for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] == "CHARGE"} == {version}
    assert await audit(dsn) == []


async def test_config_prices_sandbox_classes_by_the_second(cstub, dsn) -> None:
    await make_budget(cstub, limit="100")

    async def sandbox(rid: str, cls: str, seconds: int, nanos_: int, **extra: object) -> pb.LedgerEntry:
        details = pb.CostDetails(sandbox_class=cls, sandbox_time=Duration(seconds=seconds, nanos=nanos_), **extra)
        resp = await cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id=rid, details=details))
        return resp.entry

    small = await sandbox("small", "e2b-small", 90, 250_000_000, kind=pb.SANDBOX)
    assert nanos(small.spent_delta) == ceil_nanos(Decimal("90.25") * Decimal("0.000014")) == 1_263_500
    assert small.details.sandbox_time == Duration(seconds=90, nanos=250_000_000)
    # Fractional seconds to the nanosecond, rounded up: 1.000000001 s x 0.000972 = 972000.000972 nanos.
    gpu = await sandbox("gpu", "gpu-a100", 1, 1)
    assert exact_nanos(Decimal("1.000000001") * Decimal("0.000972")) == Decimal("972000.000972")
    assert nanos(gpu.spent_delta) == 972_001
    long = await sandbox("long", "gpu-a100", 3 * 3600, 123_456_789)
    assert nanos(long.spent_delta) == ceil_nanos(Decimal("10800.123456789") * Decimal("0.000972"))
    assert {small.catalog_version, gpu.catalog_version, long.catalog_version} == {small.catalog_version}
    assert "+config:" in small.catalog_version
    # A sandbox hold by estimate, then the actual time.
    hold = await cstub.Reserve(
        pb.ReserveRequest(
            budget=BUDGET,
            reservation_id="sbx",
            details=pb.CostDetails(sandbox_class="gpu-a100", sandbox_time=Duration(seconds=600)),
        )
    )
    assert nanos(hold.reservation.amount) == ceil_nanos(600 * Decimal("0.000972"))
    done = await cstub.Commit(
        pb.CommitRequest(
            budget=BUDGET, reservation_id="sbx", details=pb.CostDetails(sandbox_time=Duration(seconds=42, nanos=5))
        )
    )
    assert nanos(done.reservation.committed) == ceil_nanos(Decimal("42.000000005") * Decimal("0.000972"))
    assert not done.reservation.overrun
    assert done.reservation.details.sandbox_class == "gpu-a100"
    assert await audit(dsn) == []


async def test_config_prices_external_apis_per_call_and_zero_is_allowed(cstub, dsn) -> None:
    await make_budget(cstub)

    async def api(rid: str, name: str, calls: int | None = None) -> pb.LedgerEntry:
        details = pb.CostDetails(api_name=name, api_calls=calls)  # None leaves the count unset
        return (await cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id=rid, details=details))).entry

    assert nanos((await api("tavily", "tavily-search", 3)).spent_delta) == 24_000_000
    assert nanos((await api("serp", "serpapi")).spent_delta) == 15_000_000  # api_calls unset: one call
    free = await api("plausible", "plausible", 500)
    assert nanos(free.spent_delta) == 0
    assert "+config:" in free.catalog_version
    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] == "CHARGE"]
    assert [(r["api_name"], r["spent_delta"]) for r in rows] == [
        ("tavily-search", 24_000_000),
        ("serpapi", 15_000_000),
        ("plausible", 0),
    ]

    # A zero-priced hold is granted, and commits at zero.
    hold = await cstub.Reserve(
        pb.ReserveRequest(
            budget=BUDGET, reservation_id="free", details=pb.CostDetails(kind=pb.EXTERNAL_API, api_name="plausible")
        )
    )
    assert hold.reservation.state == pb.RESERVATION_ACTIVE
    assert nanos(hold.reservation.amount) == 0
    done = await cstub.Commit(
        pb.CommitRequest(budget=BUDGET, reservation_id="free", details=pb.CostDetails(api_calls=10))
    )
    assert done.reservation.state == pb.RESERVATION_COMMITTED
    assert nanos(done.reservation.committed) == 0 and not done.reservation.overrun
    budget = await get(cstub)
    assert nanos(budget.spent) == 39_000_000 and nanos(budget.held) == 0
    assert await audit(dsn) == []


async def test_a_json_config_is_read_and_the_version_follows_its_content(dsn, tmp_path) -> None:
    config = {"models": {"claude-opus-4-1": {"input_mtok": "2", "output_mtok": "4"}}, "apis": {"stripe": 0.01}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(config), "utf-8")
    versions = []
    async with serving(dsn, path) as (stub, _):
        await make_budget(stub)
        resp = await stub.RecordCost(
            pb.RecordCostRequest(budget=BUDGET, request_id="j1", details=model_details("claude-opus-4-1", 1_000, 1_000))
        )
        assert nanos(resp.entry.spent_delta) == ceil_nanos(per_mtok(1_000, "2") + per_mtok(1_000, "4")) == 6_000_000
        resp2 = await stub.RecordCost(
            pb.RecordCostRequest(budget=BUDGET, request_id="j2", details=pb.CostDetails(api_name="stripe"))
        )
        assert nanos(resp2.entry.spent_delta) == 10_000_000
        versions.append(resp.entry.catalog_version)
    config["apis"] = {"stripe": 0.02}
    path.write_text(json.dumps(config), "utf-8")
    async with serving(dsn, path) as (stub, _):
        resp = await stub.RecordCost(
            pb.RecordCostRequest(budget=BUDGET, request_id="j3", details=pb.CostDetails(api_name="stripe"))
        )
        assert nanos(resp.entry.spent_delta) == 20_000_000
        versions.append(resp.entry.catalog_version)
    assert all(v.startswith(GENAI_VERSION + "+config:") for v in versions)
    assert versions[0] != versions[1]  # another configuration, another version
    assert [r["catalog_version"] for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] == "CHARGE"] == [
        versions[0],
        versions[0],
        versions[1],
    ]
    assert await audit(dsn) == []


# ---------------------------------------------------------------------------------------------
# 3. Reserve by estimate / by task class, Commit and RecordCost by usage


async def test_reserve_by_estimate_holds_the_worst_case_and_commit_charges_the_usage(stub, dsn) -> None:
    await make_budget(stub, limit="10")
    hold = await stub.Reserve(
        pb.ReserveRequest(
            budget=BUDGET, reservation_id="est", details=model_details("claude-sonnet-4-5", 12_000, 4_000, 8_000)
        )
    )
    worst = genai_nanos("claude-sonnet-4-5", 12_000, 4_000, 8_000)
    assert nanos(hold.reservation.amount) == worst
    assert hold.reservation.details.model == "claude-sonnet-4-5"
    assert nanos(hold.remaining) == 10 * 10**9 - worst
    budget = await get(stub)
    assert nanos(budget.held) == worst and nanos(budget.spent) == 0

    # The actual usage: fewer output tokens; the model (and input, cache) carry over from the reserve.
    done = await stub.Commit(
        pb.CommitRequest(budget=BUDGET, reservation_id="est", details=pb.CostDetails(output_tokens=1_234))
    )
    actual = genai_nanos("claude-sonnet-4-5", 12_000, 1_234, 8_000)
    assert actual < worst
    assert done.reservation.state == pb.RESERVATION_COMMITTED
    assert nanos(done.reservation.committed) == actual
    assert not done.reservation.overrun
    assert done.reservation.details.model == "claude-sonnet-4-5"
    assert done.reservation.details.output_tokens == 1_234
    assert nanos(done.remaining) == 10 * 10**9 - actual  # the rest of the hold is released
    budget = await get(stub)
    assert nanos(budget.held) == 0 and nanos(budget.spent) == actual

    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["reservation_id"] == "est"]
    assert [(r["entry_type"], r["held_delta"], r["spent_delta"]) for r in rows] == [
        ("HOLD", worst, 0),
        ("COMMIT", -worst, actual),
    ]
    assert [r["catalog_version"] for r in rows] == [GENAI_VERSION, GENAI_VERSION]
    assert rows[1]["model"] == "claude-sonnet-4-5" and rows[1]["output_tokens"] == 1_234

    # RecordCost by usage, in the same budget.
    charge = await stub.RecordCost(
        pb.RecordCostRequest(budget=BUDGET, request_id="after", details=model_details("gpt-4o-mini", 3_000, 300))
    )
    assert nanos(charge.entry.spent_delta) == genai_nanos("gpt-4o-mini", 3_000, 300)
    assert nanos(charge.remaining) == 10 * 10**9 - actual - nanos(charge.entry.spent_delta)
    assert await audit(dsn) == []


async def test_a_commit_of_zero_output_tokens_overrides_the_estimate(stub, dsn) -> None:
    """Counts have presence: 0 output tokens in the Commit is not 'unset', and is not billed as the maximum."""
    await make_budget(stub, limit="10")
    await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="z", details=model_details("gpt-4o-mini", 1_000, 1_000))
    )
    done = await stub.Commit(
        pb.CommitRequest(budget=BUDGET, reservation_id="z", details=pb.CostDetails(output_tokens=0))
    )
    assert nanos(done.reservation.committed) == genai_nanos("gpt-4o-mini", 1_000, 0)
    assert done.reservation.details.HasField("output_tokens") and done.reservation.details.output_tokens == 0
    assert await audit(dsn) == []


async def test_commit_priced_above_the_hold_is_an_overrun(stub, dsn) -> None:
    await make_budget(stub, limit="10")
    hold = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="small", details=model_details("gpt-4o", 1_000, 100))
    )
    held = nanos(hold.reservation.amount)
    assert held == genai_nanos("gpt-4o", 1_000, 100)
    done = await stub.Commit(
        pb.CommitRequest(
            budget=BUDGET, reservation_id="small", details=pb.CostDetails(input_tokens=50_000, output_tokens=20_000)
        )
    )
    actual = genai_nanos("gpt-4o", 50_000, 20_000)
    assert actual > held
    assert nanos(done.reservation.committed) == actual
    assert done.reservation.overrun
    row = (await ledger_rows(dsn, BUDGET))[-1]
    assert (row["entry_type"], row["held_delta"], row["spent_delta"], row["overrun"]) == ("COMMIT", -held, actual, True)
    assert row["catalog_version"] == GENAI_VERSION
    budget = await get(stub)
    assert nanos(budget.spent) == actual and nanos(budget.held) == 0
    assert await audit(dsn) == []


async def test_reserve_by_task_class_routes_to_the_default_premium_model(stub, dsn) -> None:
    await make_budget(stub, limit="50")
    hold = await stub.Reserve(
        pb.ReserveRequest(
            budget=BUDGET,
            reservation_id="research-1",
            task_class="research",
            details=pb.CostDetails(input_tokens=20_000, output_tokens=8_000),
        )
    )
    assert hold.reservation.details.model == "claude-opus-4-1"  # the premium tier's
    worst = genai_nanos("claude-opus-4-1", 20_000, 8_000)
    assert nanos(hold.reservation.amount) == worst
    assert hold.reservation.details.model == "claude-opus-4-1"
    # Commit with no actual: the routed model carries over.
    done = await stub.Commit(
        pb.CommitRequest(budget=BUDGET, reservation_id="research-1", details=pb.CostDetails(output_tokens=2_000))
    )
    actual = genai_nanos("claude-opus-4-1", 20_000, 2_000)
    assert nanos(done.reservation.committed) == actual
    assert done.reservation.details.model == "claude-opus-4-1"
    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["reservation_id"] == "research-1"]
    assert [(r["entry_type"], r["model"], r["catalog_version"]) for r in rows] == [
        ("HOLD", "claude-opus-4-1", GENAI_VERSION),
        ("COMMIT", "claude-opus-4-1", GENAI_VERSION),
    ]
    # Other default classes: cheap and mid.
    for rid, task_class, tier, model in (
        ("lookup-1", "lookup", "cheap", "claude-haiku-4-5"),
        ("analysis-1", "analysis", "mid", "claude-sonnet-4-5"),
    ):
        resp = await stub.Reserve(
            pb.ReserveRequest(
                budget=BUDGET,
                reservation_id=rid,
                task_class=task_class,
                details=pb.CostDetails(input_tokens=1_000, output_tokens=500),
            )
        )
        assert resp.reservation.details.model == model, tier
        assert nanos(resp.reservation.amount) == genai_nanos(model, 1_000, 500)
        await stub.Release(pb.ReleaseRequest(budget=BUDGET, reservation_id=rid))
    assert nanos((await get(stub)).held) == 0
    assert await audit(dsn) == []


async def test_reserve_by_task_class_follows_the_budgets_routing_override(stub, dsn) -> None:
    overrides = pb.Routing(tiers={"cheap": "gpt-4o-mini"}, task_classes={"research": "mid", "triage": "cheap"})
    upsert = await stub.UpsertBudget(
        pb.UpsertBudgetRequest(name=BUDGET, spec=pb.BudgetSpec(limit=usd("20"), routing=overrides))
    )
    assert dict(upsert.budget.spec.routing.task_classes) == {"research": "mid", "triage": "cheap"}
    usage = pb.CostDetails(input_tokens=30_000, output_tokens=3_000, cache_read_tokens=10_000)
    research = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="r", task_class="research", details=usage)
    )
    assert research.reservation.details.model == "claude-sonnet-4-5"  # research -> mid
    assert nanos(research.reservation.amount) == genai_nanos("claude-sonnet-4-5", 30_000, 3_000, 10_000)
    triage = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="t", task_class="triage", details=usage)
    )
    assert triage.reservation.details.model == "gpt-4o-mini"  # triage -> cheap -> the override
    assert nanos(triage.reservation.amount) == genai_nanos("gpt-4o-mini", 30_000, 3_000, 10_000)
    planning = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="p", task_class="planning", details=usage)
    )
    assert planning.reservation.details.model == "claude-opus-4-1"  # not overridden: the default

    done = await stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="t"))  # the estimate was right
    assert nanos(done.reservation.committed) == nanos(triage.reservation.amount)
    assert not done.reservation.overrun
    for rid in ("r", "p"):
        await stub.Release(pb.ReleaseRequest(budget=BUDGET, reservation_id=rid))
    budget = await get(stub)
    assert nanos(budget.spent) == nanos(triage.reservation.amount) and nanos(budget.held) == 0
    assert await audit(dsn) == []


async def test_a_routed_hold_that_does_not_fit_is_denied_not_downgraded(stub, dsn) -> None:
    await make_budget(stub, limit="0.01")
    before = await entry_count(dsn)
    req = pb.ReserveRequest(
        budget=BUDGET,
        reservation_id="big",
        task_class="research",
        details=pb.CostDetails(input_tokens=100_000, output_tokens=10_000),
    )
    meta = await expect_error(stub.Reserve(req), Code.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert meta["remaining_nanos"] == str(10_000_000)
    assert await entry_count(dsn) == before
    assert nanos((await get(stub)).held) == 0
    assert await audit(dsn) == []


async def test_a_priced_commit_after_expiry_is_a_late_charge_with_the_catalog_version(stub, dsn) -> None:
    await make_budget(stub)
    await stub.Reserve(
        pb.ReserveRequest(
            budget=BUDGET,
            reservation_id="slow",
            ttl=Duration(nanos=300_000_000),
            details=model_details("claude-haiku-4-5", 5_000, 1_000),
        )
    )
    await asyncio.sleep(0.8)
    done = await stub.Commit(
        pb.CommitRequest(budget=BUDGET, reservation_id="slow", details=pb.CostDetails(output_tokens=700))
    )
    actual = genai_nanos("claude-haiku-4-5", 5_000, 700)
    assert done.reservation.late and nanos(done.reservation.committed) == actual
    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["reservation_id"] == "slow"]
    assert [r["entry_type"] for r in rows] == ["HOLD", "EXPIRY", "CHARGE"]
    assert (rows[-1]["spent_delta"], rows[-1]["late"], rows[-1]["catalog_version"]) == (actual, True, GENAI_VERSION)
    assert await audit(dsn) == []


async def test_the_reserve_response_names_the_model_and_tier(stub, dsn) -> None:
    await stub.UpsertBudget(
        pb.UpsertBudgetRequest(
            name=BUDGET,
            spec=pb.BudgetSpec(limit=usd("50"), routing=pb.Routing(task_classes={"triage": "cheap"})),
        )
    )
    usage = pb.CostDetails(input_tokens=2_000, output_tokens=1_000)
    estimate = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="e", details=model_details("gpt-4o", 2_000, 1_000))
    )
    research = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="r", task_class="research", details=usage)
    )
    triage = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="t", task_class="triage", details=usage)
    )
    assert (estimate.model, estimate.tier) == ("gpt-4o", "")
    assert (research.model, research.tier) == ("claude-opus-4-1", "premium")
    assert (triage.model, triage.tier) == ("claude-haiku-4-5", "cheap")
    assert nanos(research.reservation.amount) == genai_nanos("claude-opus-4-1", 2_000, 1_000)


# ---------------------------------------------------------------------------------------------
# 4. Route


async def test_route_answers_tier_model_and_the_whole_table(stub) -> None:
    await make_budget(stub, name="team/plain")
    resp = await stub.Route(pb.RouteRequest(budget="team/plain", task_class="research"))
    assert (resp.tier, resp.model) == ("premium", "claude-opus-4-1")
    assert dict(resp.routing.tiers) == {
        "cheap": "claude-haiku-4-5",
        "mid": "claude-sonnet-4-5",
        "premium": "claude-opus-4-1",
    }
    assert dict(resp.routing.tiers) == routing.DEFAULT_MODELS
    assert dict(resp.routing.task_classes) == routing.DEFAULT_TASK_CLASSES
    for task_class, tier in (
        ("lookup", "cheap"),
        ("monitoring", "cheap"),
        ("reporting", "mid"),
        ("planning", "premium"),
    ):
        r = await stub.Route(pb.RouteRequest(budget="team/plain", task_class=task_class))
        assert (r.tier, r.model) == (tier, routing.DEFAULT_MODELS[tier])

    overrides = pb.Routing(tiers={"premium": "gpt-5", "cheap": "gemini-2.5-flash"}, task_classes={"triage": "cheap"})
    await stub.UpsertBudget(
        pb.UpsertBudgetRequest(name="team/custom", spec=pb.BudgetSpec(limit=usd("1"), routing=overrides))
    )
    resp = await stub.Route(pb.RouteRequest(budget="team/custom", task_class="triage"))
    assert (resp.tier, resp.model) == ("cheap", "gemini-2.5-flash")
    assert dict(resp.routing.tiers) == {"cheap": "gemini-2.5-flash", "mid": "claude-sonnet-4-5", "premium": "gpt-5"}
    assert dict(resp.routing.task_classes) == {**routing.DEFAULT_TASK_CLASSES, "triage": "cheap"}
    resp = await stub.Route(pb.RouteRequest(budget="team/custom", task_class="research"))
    assert (resp.tier, resp.model) == ("premium", "gpt-5")
    # Route and Reserve agree.
    hold = await stub.Reserve(
        pb.ReserveRequest(
            budget="team/custom",
            reservation_id="agree",
            task_class="research",
            details=pb.CostDetails(input_tokens=1_000, output_tokens=1_000),
        )
    )
    assert hold.reservation.details.model == resp.model


async def test_an_unknown_task_class_is_invalid(stub, dsn) -> None:
    await make_budget(stub)
    await expect_error(
        stub.Route(pb.RouteRequest(budget=BUDGET, task_class="daydreaming")),
        Code.INVALID_ARGUMENT,
        "UNKNOWN_TASK_CLASS",
        "task_class",
    )
    before = await entry_count(dsn)
    req = pb.ReserveRequest(
        budget=BUDGET,
        reservation_id="dream",
        task_class="daydreaming",
        details=pb.CostDetails(input_tokens=10, output_tokens=10),
    )
    await expect_error(stub.Reserve(req), Code.INVALID_ARGUMENT, "UNKNOWN_TASK_CLASS", "task_class")
    assert await entry_count(dsn) == before
    await expect_error(
        stub.Route(pb.RouteRequest(budget=BUDGET, task_class="")), Code.INVALID_ARGUMENT, "INVALID_FIELD", "task_class"
    )
    await expect_error(
        stub.Route(pb.RouteRequest(budget="team/nobody", task_class="research")), Code.NOT_FOUND, "BUDGET_NOT_FOUND"
    )


# ---------------------------------------------------------------------------------------------
# 5. Bad input: refused, naming the field, nothing written


BAD_COUNTS = [
    ({"input_tokens": -1}, "details.input_tokens"),
    ({"input_tokens": 10**12 + 1}, "details.input_tokens"),
    ({"output_tokens": -5}, "details.output_tokens"),
    ({"output_tokens": 2**62}, "details.output_tokens"),
    ({"cache_read_tokens": -1}, "details.cache_read_tokens"),
    ({"cache_write_tokens": 10**15}, "details.cache_write_tokens"),
    ({"reasoning_tokens": -1}, "details.reasoning_tokens"),
    ({"api_calls": -3}, "details.api_calls"),
]


@pytest.mark.parametrize(("counts", "field"), BAD_COUNTS, ids=[f for _, f in BAD_COUNTS])
async def test_negative_or_absurd_counts_are_refused_naming_the_field(cstub, dsn, counts, field) -> None:
    await make_budget(cstub)
    await cstub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="ok", details=model_details("gpt-4o", 1_000, 1_000))
    )
    before = await entry_count(dsn)
    base: dict[str, object] = {"model": "gpt-4o", "input_tokens": 1_000, "output_tokens": 100}
    if "api_calls" in counts:
        base = {"api_name": "tavily-search"}
    details = pb.CostDetails(**{**base, **counts})  # type: ignore[arg-type]
    calls = [
        cstub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="bad", details=details)),
        cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="bad", details=details)),
        cstub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="ok", details=details)),
    ]
    for call in calls:
        await expect_error(call, Code.INVALID_ARGUMENT, "INVALID_FIELD", field)
    assert await entry_count(dsn) == before
    budget = await get(cstub)
    assert nanos(budget.spent) == 0 and nanos(budget.held) == genai_nanos("gpt-4o", 1_000, 1_000)


async def test_an_absurd_sandbox_time_is_refused(cstub, dsn) -> None:
    await make_budget(cstub)
    before = await entry_count(dsn)
    for duration in (Duration(seconds=-1), Duration(seconds=10**9), Duration(seconds=1, nanos=-1)):
        details = pb.CostDetails(sandbox_class="e2b-small", sandbox_time=duration)
        await expect_error(
            cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="t", details=details)),
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "details.sandbox_time",
        )
    assert await entry_count(dsn) == before


UNKNOWN = [
    (pb.CostDetails(model="gpt-17-ultra", input_tokens=10, output_tokens=10), "UNKNOWN_MODEL", "details.model"),
    (pb.CostDetails(model="claude-sonnet-4-5", provider="openai", input_tokens=10), "UNKNOWN_MODEL", "details.model"),
    (pb.CostDetails(kind=pb.MODEL_INFERENCE, input_tokens=10, output_tokens=10), "UNKNOWN_MODEL", "details.model"),
    (
        pb.CostDetails(sandbox_class="quantum-xl", sandbox_time=Duration(seconds=5)),
        "UNKNOWN_SANDBOX_CLASS",
        "details.sandbox_class",
    ),
    (
        pb.CostDetails(kind=pb.SANDBOX, sandbox_time=Duration(seconds=5)),
        "UNKNOWN_SANDBOX_CLASS",
        "details.sandbox_class",
    ),
    (pb.CostDetails(api_name="no-such-api", api_calls=2), "UNKNOWN_API", "details.api_name"),
    (pb.CostDetails(kind=pb.EXTERNAL_API, api_calls=2), "UNKNOWN_API", "details.api_name"),
]


@pytest.mark.parametrize(
    ("details", "reason", "field"), UNKNOWN, ids=[f"{r}-{i}" for i, (_, r, _f) in enumerate(UNKNOWN)]
)
async def test_unpriceable_details_are_refused_and_never_charged_as_zero(cstub, dsn, details, reason, field) -> None:
    await make_budget(cstub)
    before = await entry_count(dsn)
    await expect_error(
        cstub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="x", details=details)),
        Code.INVALID_ARGUMENT,
        reason,
        field,
    )
    await expect_error(
        cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="x", details=details)),
        Code.INVALID_ARGUMENT,
        reason,
        field,
    )
    assert await entry_count(dsn) == before
    budget = await get(cstub)
    assert nanos(budget.spent) == 0 and nanos(budget.held) == 0
    # The ids were not consumed: a good request with them succeeds.
    ok = await cstub.RecordCost(
        pb.RecordCostRequest(budget=BUDGET, request_id="x", details=pb.CostDetails(api_name="serpapi"))
    )
    assert nanos(ok.entry.spent_delta) == 15_000_000


async def test_a_commit_priced_for_an_unknown_model_keeps_the_hold(stub, dsn) -> None:
    await make_budget(stub)
    hold = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="h", details=model_details("gpt-4o", 1_000, 1_000))
    )
    before = await entry_count(dsn)
    await expect_error(
        stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="h", details=pb.CostDetails(model="nonesuch-9"))),
        Code.INVALID_ARGUMENT,
        "UNKNOWN_MODEL",
        "details.model",
    )
    assert await entry_count(dsn) == before
    assert nanos((await get(stub)).held) == nanos(hold.reservation.amount)
    done = await stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="h"))
    assert nanos(done.reservation.committed) == nanos(hold.reservation.amount)
    assert await audit(dsn) == []


async def test_a_budget_in_another_currency_must_be_given_amounts(stub, dsn) -> None:
    await stub.UpsertBudget(pb.UpsertBudgetRequest(name=BUDGET, spec=pb.BudgetSpec(limit=usd("100", "EUR"))))
    before = await entry_count(dsn)
    details = model_details("gpt-4o", 1_000, 1_000)
    await expect_error(
        stub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="c", details=details)),
        Code.INVALID_ARGUMENT,
        "CURRENCY_MISMATCH",
        "amount",
    )
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="r", details=details)),
        Code.INVALID_ARGUMENT,
        "CURRENCY_MISMATCH",
        "amount",
    )
    await expect_error(
        stub.Reserve(
            pb.ReserveRequest(
                budget=BUDGET, reservation_id="r", task_class="research", details=pb.CostDetails(input_tokens=10)
            )
        ),
        Code.INVALID_ARGUMENT,
        "CURRENCY_MISMATCH",
        "amount",
    )
    assert await entry_count(dsn) == before
    # Given amounts work, and a commit priced from usage does not.
    hold = await stub.Reserve(
        pb.ReserveRequest(budget=BUDGET, reservation_id="r", amount=usd("1", "EUR"), details=details)
    )
    assert hold.reservation.amount.currency_code == "EUR"
    before = await entry_count(dsn)
    await expect_error(
        stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="r")),
        Code.INVALID_ARGUMENT,
        "CURRENCY_MISMATCH",
        "actual",
    )
    assert await entry_count(dsn) == before
    done = await stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="r", actual=usd("0.25", "EUR")))
    assert nanos(done.reservation.committed) == 250_000_000
    assert await audit(dsn) == []


async def test_nothing_to_price_is_a_missing_amount(stub, dsn) -> None:
    await make_budget(stub)
    before = await entry_count(dsn)
    for details in (
        pb.CostDetails(),
        pb.CostDetails(input_tokens=100, output_tokens=10),
        pb.CostDetails(kind=pb.OTHER),
    ):
        await expect_error(
            stub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="n", details=details)),
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "amount",
        )
        await expect_error(
            stub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="n", details=details)),
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "amount",
        )
    assert await entry_count(dsn) == before
    # A hold given as an amount, with no details: a commit with no actual has nothing to price.
    await stub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="given", amount=usd("1")))
    before = await entry_count(dsn)
    await expect_error(
        stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="given")),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "actual",
    )
    assert await entry_count(dsn) == before
    assert nanos((await get(stub)).held) == 1_000_000_000


async def test_a_task_class_with_a_model_is_invalid(stub, dsn) -> None:
    await make_budget(stub)
    before = await entry_count(dsn)
    req = pb.ReserveRequest(
        budget=BUDGET, reservation_id="both", task_class="research", details=model_details("gpt-4o", 10, 10)
    )
    await expect_error(stub.Reserve(req), Code.INVALID_ARGUMENT, "INVALID_FIELD", "details.model")
    assert await entry_count(dsn) == before


async def test_cache_tokens_above_the_input_tokens_are_refused_genai_prices_model(stub, dsn) -> None:
    await make_budget(stub)
    before = await entry_count(dsn)
    details = model_details("claude-sonnet-4-5", 100, 10, cache_read=1_000)
    for call in (
        stub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="c", details=details)),
        stub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="c", details=details)),
    ):
        meta = await expect_error(call, Code.INVALID_ARGUMENT, "INVALID_FIELD")
        assert meta["field"] in ("details.cache_read_tokens", "details.input_tokens")
    assert await entry_count(dsn) == before


async def test_cache_tokens_above_the_input_tokens_are_refused_configured_model(cstub, dsn) -> None:
    await make_budget(cstub)
    before = await entry_count(dsn)
    details = model_details("acme-cached", 100, 10, cache_read=1_000)
    meta = await expect_error(
        cstub.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="c", details=details)),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert meta["field"] in ("details.cache_read_tokens", "details.input_tokens")
    assert await entry_count(dsn) == before


# ---------------------------------------------------------------------------------------------
# 6. Idempotency of priced calls


def raw(channel: grpc.aio.Channel, method: str, request_type: type) -> grpc.aio.UnaryUnaryMultiCallable:
    """A call that answers the response's bytes as the server sent them."""
    return channel.unary_unary(f"{SERVICE}/{method}", request_serializer=request_type.SerializeToString)


async def test_priced_calls_replay_identical_bytes_with_one_ledger_effect(stub, channel, dsn) -> None:
    await make_budget(stub, limit="100")
    record = raw(channel, "RecordCost", pb.RecordCostRequest)
    reserve = raw(channel, "Reserve", pb.ReserveRequest)
    commit = raw(channel, "Commit", pb.CommitRequest)

    rc = pb.RecordCostRequest(budget=BUDGET, request_id="rc", details=model_details("gemini-2.5-pro", 250_000, 8_000))
    first = await record(rc)
    assert await record(rc) == first
    assert pb.RecordCostResponse.FromString(first).entry.catalog_version == GENAI_VERSION
    await expect_error(
        stub.RecordCost(
            pb.RecordCostRequest(
                budget=BUDGET, request_id="rc", details=model_details("gemini-2.5-pro", 250_000, 8_001)
            )
        ),
        Code.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        "request_id",
    )

    rv = pb.ReserveRequest(
        budget=BUDGET,
        reservation_id="rv",
        task_class="planning",
        details=pb.CostDetails(input_tokens=10_000, output_tokens=5_000),
    )
    held = await reserve(rv)
    assert await reserve(rv) == held
    parsed = pb.ReserveResponse.FromString(held)
    assert parsed.reservation.details.model == "claude-opus-4-1"
    assert nanos(parsed.reservation.amount) == genai_nanos("claude-opus-4-1", 10_000, 5_000)
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="rv", task_class="research", details=rv.details)),
        Code.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        "reservation_id",
    )

    cm = pb.CommitRequest(budget=BUDGET, reservation_id="rv", details=pb.CostDetails(output_tokens=4_000))
    done = await commit(cm)
    assert await commit(cm) == done
    assert nanos(pb.CommitResponse.FromString(done).reservation.committed) == genai_nanos(
        "claude-opus-4-1", 10_000, 4_000
    )
    await expect_error(
        stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="rv", details=pb.CostDetails(output_tokens=4_001))),
        Code.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        "reservation_id",
    )

    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] != "PERIOD_OPENED"]
    assert [(r["entry_type"], r["request_id"] or r["reservation_id"]) for r in rows] == [
        ("CHARGE", "rc"),
        ("HOLD", "rv"),
        ("COMMIT", "rv"),
    ]
    budget = await get(stub)
    assert nanos(budget.spent) == genai_nanos("gemini-2.5-pro", 250_000, 8_000) + genai_nanos(
        "claude-opus-4-1", 10_000, 4_000
    )
    assert nanos(budget.held) == 0
    assert await audit(dsn) == []


async def test_a_replay_answers_the_first_price_after_the_catalog_changed(dsn, tmp_path) -> None:
    first_config, second_config = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first_config.write_text("models:\n  acme-house-7b: {input_mtok: '1', output_mtok: '2'}\n", "utf-8")
    second_config.write_text("models:\n  acme-house-7b: {input_mtok: '10', output_mtok: '20'}\n", "utf-8")
    rc = pb.RecordCostRequest(budget=BUDGET, request_id="once", details=model_details("acme-house-7b", 1_000, 1_000))
    rv = pb.ReserveRequest(budget=BUDGET, reservation_id="held", details=model_details("acme-house-7b", 1_000, 1_000))
    async with serving(dsn, first_config) as (stub, channel):
        await make_budget(stub)
        charged = await raw(channel, "RecordCost", pb.RecordCostRequest)(rc)
        held = await raw(channel, "Reserve", pb.ReserveRequest)(rv)
    async with serving(dsn, second_config) as (stub, channel):
        assert await raw(channel, "RecordCost", pb.RecordCostRequest)(rc) == charged
        assert await raw(channel, "Reserve", pb.ReserveRequest)(rv) == held
        assert nanos(pb.RecordCostResponse.FromString(charged).entry.spent_delta) == 3_000_000
        # A new call is priced by the new catalog, and says so.
        new = await stub.RecordCost(
            pb.RecordCostRequest(
                budget=BUDGET, request_id="twice", details=model_details("acme-house-7b", 1_000, 1_000)
            )
        )
        assert nanos(new.entry.spent_delta) == 30_000_000
        assert new.entry.catalog_version != pb.RecordCostResponse.FromString(charged).entry.catalog_version
        # The commit of the old hold is priced now: by the catalog in force at the commit.
        done = await stub.Commit(pb.CommitRequest(budget=BUDGET, reservation_id="held"))
        assert nanos(done.reservation.committed) == 30_000_000 and done.reservation.overrun
    rows = [r for r in await ledger_rows(dsn, BUDGET) if r["entry_type"] != "PERIOD_OPENED"]
    assert [(r["entry_type"], r["spent_delta"], r["held_delta"]) for r in rows] == [
        ("CHARGE", 3_000_000, 0),
        ("HOLD", 0, 3_000_000),
        ("CHARGE", 30_000_000, 0),
        ("COMMIT", 30_000_000, -3_000_000),
    ]
    assert await audit(dsn) == []
