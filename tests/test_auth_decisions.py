"""The pure decisions of the authentication layer: mode, policy, rate limits, caches, tokens, files."""

from __future__ import annotations

import asyncio
import time

import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import settings
from agentbudget_server.auth import apikeys, mode, policy, roles, tokenreview
from agentbudget_server.auth.authenticate import bearer
from agentbudget_server.auth.cache import TtlCache
from agentbudget_server.auth.errors import CredentialsInvalid, CredentialsMissing
from agentbudget_server.auth.gate import narrow, peer_host
from agentbudget_server.auth.ratelimit import Bucket, RateLimiter, take
from agentbudget_server.principal import ADMIN, AGENT, COORDINATOR, VIEWER, Principal
from auth_support import jwt

# -- the mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "database_url", "resolved"),
    [
        ("auto", "", "none"),  # make serve / agentbudget demo: the embedded quick start
        ("auto", "postgresql://db/agentbudget", "required"),
        ("required", "", "required"),
        ("none", "postgresql://db/agentbudget", "none"),
    ],
)
def test_authentication_is_required_once_a_database_is_configured(auth: str, database_url: str, resolved: str):
    assert mode.resolve(auth, database_url) == resolved


def test_the_default_is_auto_and_an_unknown_mode_is_refused():
    assert settings.Settings().auth == "auto"
    assert settings.load(None, {"AGENTBUDGET_DATABASE_URL": "postgresql://db/x"}).auth == "auto"
    with pytest.raises(ValueError, match="auth must be one of"):
        settings.load(None, {"AGENTBUDGET_AUTH": "optional"})
    with pytest.raises(ValueError, match="auth must be one of"):
        mode.resolve("off", "")


def test_the_banner_says_that_every_caller_is_an_admin():
    text = mode.banner("auto", "127.0.0.1:50051")
    assert "AUTHENTICATION IS OFF" in text and "127.0.0.1:50051" in text and "admin" in text
    lines = text.strip().splitlines()
    assert len({len(line) for line in lines}) == 1  # a box


def test_settings_of_the_security_layer_parse_from_flags_and_environment():
    import argparse

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    admins = ["--admin-principal", "system:serviceaccount:agentbudget:op", "--admin-principal", "apikey:ops"]
    args = parser.parse_args([*admins, "--rate-limit-per-second", "0.5", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
    s = settings.load(args, {})
    assert s.admin_principals == ("system:serviceaccount:agentbudget:op", "apikey:ops")
    assert (s.rate_limit_per_second, s.rate_limit_burst, s.tls_cert) == (0.5, 400, "c.pem")
    env = {"AGENTBUDGET_ADMIN_PRINCIPALS": "a, b,,c", "AGENTBUDGET_TOKEN_CACHE_SECONDS": "10"}
    s = settings.load(None, env)
    assert s.admin_principals == ("a", "b", "c") and s.token_cache_seconds == 10.0
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        settings.load(None, {"AGENTBUDGET_TLS_CERT": "c.pem"})
    with pytest.raises(ValueError, match="tls_client_ca needs"):
        settings.load(None, {"AGENTBUDGET_TLS_CLIENT_CA": "ca.pem"})
    with pytest.raises(ValueError, match="rate_limit_burst"):
        settings.load(None, {"AGENTBUDGET_RATE_LIMIT_BURST": "0"})
    assert settings.load(None, {"AGENTBUDGET_RATE_LIMIT_PER_SECOND": "0", "AGENTBUDGET_RATE_LIMIT_BURST": "0"})


# -- the policy ----------------------------------------------------------------------------------

AGENT_A = Principal("system:serviceaccount:team:a", AGENT)
KEYED_AGENT = Principal("apikey:bot", AGENT, ("team/a",))
CEO = Principal("apikey:ceo", COORDINATOR, ("team/*",))
AUDITOR = Principal("apikey:audit", VIEWER, ("team/*",))
OPS = Principal("apikey:ops", ADMIN)
AGENTS = {"team/a": (AGENT_A.name,), "team/b": ("system:serviceaccount:team:b",)}
ONE = policy.Target(("team/a",))
OTHER = policy.Target(("team/b",))


def allowed(who: Principal, method: str, target: policy.Target) -> bool:
    return policy.decide(who, method, target, AGENTS).allowed


@pytest.mark.parametrize("method", sorted(policy.AGENT_METHODS))
def test_an_agent_acts_on_the_budgets_that_name_it_or_its_scope_matches(method: str):
    assert allowed(AGENT_A, method, ONE) and allowed(KEYED_AGENT, method, ONE)
    assert not allowed(AGENT_A, method, OTHER) and not allowed(KEYED_AGENT, method, OTHER)
    assert not allowed(AGENT_A, method, policy.Target(("team/missing",)))  # looks like someone else's


@pytest.mark.parametrize("method", ["UpsertBudget", "DeleteBudget", "Transfer", "ListLedgerEntries", "Unknown"])
def test_an_agent_may_not_administer_even_its_own_budget(method: str):
    verdict = policy.decide(AGENT_A, method, ONE, AGENTS)
    assert not verdict.allowed and "agent role does not include" in verdict.why


def test_a_coordinator_spends_reads_and_moves_budget_within_its_scope():
    for method in [*policy.AGENT_METHODS, "ListLedgerEntries"]:
        assert allowed(CEO, method, ONE) and not allowed(CEO, method, policy.Target(("other/x",)))
    assert allowed(CEO, "Transfer", policy.Target(("team/a", "team/b")))
    assert not allowed(CEO, "Transfer", policy.Target(("team/a", "other/x")))
    assert not allowed(CEO, "UpsertBudget", ONE) and not allowed(CEO, "DeleteBudget", ONE)


def test_a_viewer_reads_within_its_scope_and_spends_nothing():
    for method in ("GetBudget", "Route", "ListLedgerEntries"):
        assert allowed(AUDITOR, method, ONE) and not allowed(AUDITOR, method, policy.Target(("other/x",)))
    for method in (*policy.SPEND, "Transfer", "UpsertBudget"):
        assert not allowed(AUDITOR, method, ONE)


def test_an_admin_may_do_everything_on_every_budget():
    for method in ("UpsertBudget", "DeleteBudget", "Reserve", "Transfer", "ListBudgets", "Anything"):
        assert policy.decide(OPS, method, policy.Target(("other/x",)), {}) == policy.ALLOWED
    assert policy.needs_agents(OPS, OTHER) == ()


def test_only_budgets_the_scope_does_not_match_need_their_agents_read():
    assert policy.needs_agents(CEO, policy.Target(("team/a", "other/x", "other/x"))) == ("other/x",)
    assert policy.needs_agents(AGENT_A, ONE) == ("team/a",)


def test_list_budgets_is_narrowed_to_a_one_namespace_scope_or_needs_a_namespace_in_scope():
    many = policy.Target(many=True)
    assert policy.decide(CEO, "ListBudgets", many, {}) == policy.Verdict(True, namespace="team")
    assert allowed(CEO, "ListBudgets", policy.Target(namespace="team", many=True))
    assert not allowed(CEO, "ListBudgets", policy.Target(namespace="other", many=True))
    two = Principal("apikey:two", VIEWER, ("team/*", "lab/*"))
    assert not allowed(two, "ListBudgets", many) and allowed(two, "ListBudgets", policy.Target((), "lab", True))
    everything = Principal("apikey:all", VIEWER, ("*",))
    assert policy.decide(everything, "ListBudgets", many, {}) == policy.ALLOWED
    partial = Principal("apikey:p", VIEWER, ("team/re*",))
    assert not allowed(partial, "ListBudgets", policy.Target((), "team", True))  # not the whole namespace


def test_query_spend_is_narrowed_to_the_scope_or_to_the_budgets_named():
    named = Principal("apikey:n", VIEWER, ("team/a", "team/b"))
    many = policy.Target(many=True)
    assert policy.decide(named, "QuerySpend", many, {}) == policy.Verdict(True, budgets=("team/a", "team/b"))
    assert policy.decide(CEO, "QuerySpend", many, {}) == policy.Verdict(True, namespace="team")
    assert allowed(CEO, "QuerySpend", policy.Target(("team/a",), "other", True))  # the namespace only narrows
    assert not allowed(CEO, "QuerySpend", policy.Target(("team/a", "other/x"), "", True))
    mixed = Principal("apikey:m", VIEWER, ("team/*", "lab/x"))
    assert not allowed(mixed, "QuerySpend", many)


def test_an_unfiltered_event_stream_of_a_scoped_principal_is_filtered():
    assert policy.decide(CEO, "WatchEvents", policy.Target(many=True), {}) == policy.Verdict(True, filter_stream=True)
    assert policy.decide(CEO, "WatchEvents", policy.Target(("team/a",), many=True), {}) == policy.ALLOWED
    assert not allowed(CEO, "WatchEvents", policy.Target(("other/x",), many=True))
    assert not allowed(AGENT_A, "WatchEvents", policy.Target(("team/a",), many=True))


def test_the_budgets_of_a_request_are_read_from_its_fields():
    assert policy.target_of("Reserve", pb.ReserveRequest(budget="team/a")) == ONE
    assert policy.target_of("GetBudget", pb.GetBudgetRequest(name="team/a")) == ONE
    assert policy.target_of("Transfer", pb.TransferRequest(from_budget="a/1", to_budget="b/2")).budgets == (
        "a/1",
        "b/2",
    )
    assert policy.target_of("QuerySpend", pb.QuerySpendRequest(budgets=["a/1"], namespace="b")) == policy.Target(
        ("a/1",), "b", True
    )
    assert policy.target_of("ListBudgets", pb.ListBudgetsRequest()) == policy.Target(many=True)
    assert policy.target_of("WatchEvents", pb.WatchEventsRequest(budgets=["a/1"])) == policy.Target(("a/1",), "", True)
    assert policy.target_of("Reserve", pb.ReserveRequest()) == policy.Target(("",))
    assert not allowed(AGENT_A, "Reserve", policy.Target(("",)))


def test_narrowing_rewrites_the_request():
    q = pb.QuerySpendRequest(budgets=["x/y"])
    narrow(q, policy.Verdict(True, budgets=("team/a",)))
    assert list(q.budgets) == ["team/a"]
    lb = pb.ListBudgetsRequest()
    narrow(lb, policy.Verdict(True, namespace="team"))
    assert lb.namespace == "team"


def test_scope_patterns_are_globs():
    assert policy.covers_all(["*"]) and not policy.covers_all(["team/*"])
    assert policy.covers_namespace(["team/*"], "team") and policy.covers_namespace(["te*"], "team")
    assert not policy.covers_namespace(["team/a*"], "team")
    assert policy.matches(["team/re*"], "team/research") and not policy.matches(["team/re*"], "lab/research")


# -- rate limits -----------------------------------------------------------------------------------


def test_a_bucket_grants_its_burst_then_refills_at_the_rate():
    b = Bucket(tokens=2.0, at=0.0)
    assert take(b, 0.0, rate=1.0, burst=2) == 0.0 and take(b, 0.0, 1.0, 2) == 0.0
    assert take(b, 0.0, 1.0, 2) == pytest.approx(1.0)
    assert take(b, 0.5, 1.0, 2) == pytest.approx(0.5)  # nothing taken by a refusal
    assert take(b, 1.0, 1.0, 2) == 0.0
    assert take(b, 100.0, 1.0, 2) == 0.0 and b.tokens == pytest.approx(1.0)  # never more than the burst


def test_one_key_tripping_its_limit_leaves_the_others_alone():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=3, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") > 0
    assert [limiter.check("b") for _ in range(3)] == [0.0, 0.0, 0.0]
    now[0] = 1.0
    assert limiter.check("a") == 0.0
    assert RateLimiter(rate=0, burst=0).check("x") == 0.0  # off


def test_the_limiter_keeps_a_bounded_number_of_keys():
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=lambda: 0.0)
    for key in ("a", "b", "c"):
        assert limiter.check(key) == 0.0
    assert limiter.check("a") == 0.0  # forgotten, so it starts again with a full burst
    assert limiter.check("c") > 0


def test_the_peer_address_without_its_port_is_the_key_of_unauthenticated_callers():
    assert peer_host("ipv4:10.0.0.7:53412") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:53412") == "[::1]"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s" and peer_host(None) == ""


# -- the cache -------------------------------------------------------------------------------------


async def test_the_cache_loads_a_key_once_for_concurrent_callers_and_expires_entries():
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(size=2, clock=lambda: now[0])
    loads = 0
    gate = asyncio.Event()

    async def load() -> tuple[int, float]:
        nonlocal loads
        loads += 1
        await gate.wait()
        return loads, 10.0

    waiting = [asyncio.ensure_future(cache.get_or_load("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [1] * 5 and loads == 1
    now[0] = 9.9
    assert await cache.get_or_load("k", load) == 1
    now[0] = 10.0
    assert await cache.get_or_load("k", load) == 2
    cache.put("x", 0, 10)
    cache.put("y", 0, 10)
    assert len(cache) == 2 and cache.get("k") == (False, None)  # least recently used went first
    cache.put("x", 0, 0)
    assert cache.get("x") == (False, None)


async def test_a_failed_load_is_not_cached_and_a_cancelled_waiter_does_not_cancel_it():
    cache: TtlCache[str, str] = TtlCache(size=10)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> tuple[str, float]:
        started.set()
        await release.wait()
        return "v", 10.0

    first = asyncio.ensure_future(cache.get_or_load("k", slow))
    await started.wait()
    second = asyncio.ensure_future(cache.get_or_load("k", slow))
    first.cancel()
    release.set()
    assert await second == "v"

    async def fail() -> tuple[str, float]:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await cache.get_or_load("f", fail)
    assert cache.get("f") == (False, None)


# -- tokens ----------------------------------------------------------------------------------------


def test_the_expiry_of_a_jwt_is_read_without_verification():
    assert tokenreview.jwt_expiry(jwt("s", exp=2_000_000_000)) == 2_000_000_000
    assert tokenreview.jwt_expiry(jwt("s")) is None
    for junk in ("", "abc", "a.b.c", "a.!!!.c", "a." + "e30" + ".c"):
        assert tokenreview.jwt_expiry(junk) is None


def test_a_valid_token_is_cached_no_longer_than_it_lives():
    assert tokenreview.positive_ttl(now=100.0, expiry=None, cache_seconds=30) == 30
    assert tokenreview.positive_ttl(now=100.0, expiry=110.0, cache_seconds=30) == 10
    assert tokenreview.positive_ttl(now=100.0, expiry=1000.0, cache_seconds=30) == 30


def test_a_review_counts_only_if_authenticated_for_our_audience():
    ok = {
        "status": {
            "authenticated": True,
            "user": {"username": "system:serviceaccount:a:b"},
            "audiences": ["agentbudget"],
        }
    }
    assert tokenreview.reviewed_user(ok) == "system:serviceaccount:a:b"
    assert (
        tokenreview.reviewed_user({"status": {**ok["status"], "audiences": ["https://kubernetes.default.svc"]}}) is None
    )
    assert tokenreview.reviewed_user({"status": {**ok["status"], "audiences": None}}) is None
    assert tokenreview.reviewed_user({"status": {**ok["status"], "authenticated": False}}) is None
    assert tokenreview.reviewed_user({}) is None
    assert tokenreview.review_body("t")["spec"] == {"token": "t", "audiences": ["agentbudget"]}


async def test_an_expired_token_is_refused_without_asking_and_answers_are_cached():
    asked: list[str] = []

    async def review(body: dict[str, object]) -> dict[str, object]:
        token = body["spec"]["token"]  # type: ignore[index]
        asked.append(token)
        ok = token != "bad"
        user = {"username": "system:serviceaccount:a:b"}
        return {"status": {"authenticated": ok, "user": user, "audiences": ["agentbudget"]}}

    reviewer = tokenreview.TokenReviewer(review, cache_seconds=30)
    with pytest.raises(CredentialsInvalid):
        await reviewer.username(jwt("s", exp=time.time() - 1))
    assert asked == []
    good = jwt("s", exp=time.time() + 3600)
    assert [await reviewer.username(good) for _ in range(3)] == ["system:serviceaccount:a:b"] * 3
    for _ in range(3):
        with pytest.raises(CredentialsInvalid):
            await reviewer.username("bad")
    assert asked == [good, "bad"]


# -- metadata, keys, roles -------------------------------------------------------------------------


def test_the_bearer_token_comes_from_the_authorization_metadata():
    assert bearer([("authorization", "Bearer abc")]) == "abc"
    assert bearer([("x-other", "1"), ("Authorization", "bearer  abc ")]) == "abc"
    with pytest.raises(CredentialsMissing):
        bearer([("x-other", "1")])
    with pytest.raises(CredentialsMissing):
        bearer(None)
    for bad in ("Basic abc", "Bearer", "Bearer ", "Bearer a b", "abc"):
        with pytest.raises(CredentialsInvalid):
            bearer([("authorization", bad)])
    with pytest.raises(CredentialsInvalid):
        bearer([("authorization", "Bearer a"), ("authorization", "Bearer b")])


def test_an_api_key_is_found_by_its_digest_only():
    key = apikeys.new_key()
    assert key.startswith("abk_") and len(key) == 4 + 43 and apikeys.new_key() != key
    entry = apikeys.entry("finance", "viewer", ["team/*"], key)
    assert entry == {"principal": "apikey:finance", "role": "viewer", "scope": ["team/*"], "sha256": entry["sha256"]}
    assert key not in apikeys.render_entry(entry)
    keys = apikeys.parse({"keys": [entry]})
    assert keys.lookup(key) == Principal("apikey:finance", "viewer", ("team/*",))
    assert keys.lookup(key + "x") is None and keys.lookup("abk_") is None
    assert apikeys.parse([{**entry, "principal": "apikey:finance"}]).lookup(key) is not None  # a bare list too
    assert len(apikeys.parse(None)) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "owner"}, "role must be one of"),
        ({"sha256": "abc"}, "64 hex digits"),
        ({"principal": ""}, "principal is required"),
        ({"principal": "has space"}, "not a usable key name"),
        ({"scope": [1]}, "scope must be a list"),
        ({"key": "abk_x"}, "unknown field"),
    ],
)
def test_a_malformed_keys_file_is_refused(change: dict[str, object], message: str):
    entry = {**apikeys.entry("x", "agent", [], apikeys.new_key()), **change}
    with pytest.raises(ValueError, match=message):
        apikeys.parse({"keys": [entry]})


def test_the_same_key_twice_is_refused():
    entry = apikeys.entry("x", "agent", [], apikeys.new_key())
    with pytest.raises(ValueError, match="twice"):
        apikeys.parse([entry, {**entry, "principal": "y"}])


def test_service_accounts_are_admins_assigned_a_role_or_agents():
    assigned = roles.parse({"system:serviceaccount:agents:ceo": {"role": "coordinator", "scope": "agents/*"}})
    r = roles.Roles(frozenset({"system:serviceaccount:agentbudget:op"}), assigned)
    assert r.principal("system:serviceaccount:agentbudget:op").role == ADMIN
    assert r.principal("system:serviceaccount:agents:ceo") == Principal(
        "system:serviceaccount:agents:ceo", COORDINATOR, ("agents/*",)
    )
    assert r.principal("system:serviceaccount:agents:a") == Principal("system:serviceaccount:agents:a", AGENT)
    with pytest.raises(ValueError, match="role must be one of"):
        roles.parse({"x": {"role": "boss"}})
    with pytest.raises(ValueError, match="unknown field"):
        roles.parse({"x": {"role": "viewer", "scopes": ["*"]}})
    with pytest.raises(ValueError, match="a mapping"):
        roles.parse(["x"])


def test_apikey_create_prints_the_key_once_and_an_entry_that_accepts_it(capsys: pytest.CaptureFixture[str]):
    import yaml
    from agentbudget_server import cli

    assert cli.main(["apikey", "create", "--name", "ceo", "--role", "coordinator", "--scope", "demo/*"]) == 0
    out = capsys.readouterr().out
    (key,) = [w for w in out.split() if w.startswith("abk_")]
    assert out.count(key) == 1
    entries = yaml.safe_load(out[out.index("- principal:") :])
    assert apikeys.parse(entries).lookup(key) == Principal("apikey:ceo", COORDINATOR, ("demo/*",))
    assert cli.main(["apikey", "create", "--name", "bad name", "--role", "agent"]) == 2
