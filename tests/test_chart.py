"""The Helm chart, rendered and linted by the real Helm engine (Helm v4's Go SDK, embedded by the
``helm-python-sdk`` package as ``libhelm_c``: no helm binary, no cluster, no network).

Every values file of ``charts/agentbudget/ci/`` is rendered as an install would render it; the
assertions are about what a cluster would do with the objects: which pods a Service or a
PodDisruptionBudget selects, what the kubelet probes, what the RBAC grants, what the authority and
the operator read from the environment the chart gives them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import crd
import helm_python as helm
import pytest
import yaml
from agentbudget import credentials
from agentbudget_operator.config import OperatorConfig
from agentbudget_server import pricing, settings
from agentbudget_server.auth import roles
from agentbudget_server.auth.access import Access
from agentbudget_server.principal import Principal

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "agentbudget"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
OPERATOR_RBAC = ROOT / "operator" / "deploy" / "rbac.yaml"
RELEASE = "agentbudget"
NAMESPACE = "agentbudget"
# Authority settings the chart sets that settings.py may not define yet: the TLS contract, and the
# metrics address (whose default is the chart's default port).
TLS_CONTRACT = {"AGENTBUDGET_TLS_CERT", "AGENTBUDGET_TLS_KEY", "AGENTBUDGET_TLS_CLIENT_CA"}
CONTRACT = {*TLS_CONTRACT, "AGENTBUDGET_METRICS_LISTEN"}
POD_KINDS = {"Deployment", "StatefulSet", "Job"}
TOKENREVIEW = {("authentication.k8s.io", "tokenreviews", "create")}
# Where the operator's token for the authority is mounted: the clients' default token directory.
TOKEN_DIR = "/var/run/secrets/agentbudget.io"

Obj = dict[str, Any]
Triple = tuple[str, str, str]


def load_values(name: str) -> Obj:
    """The values of ci/<name>-values.yaml ("defaults": none)."""
    if name == "defaults":
        return {}
    loaded: Obj = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return loaded


def load_values_defaults() -> Obj:
    defaults: Obj = yaml.safe_load((CHART / "values.yaml").read_text())
    return defaults


VALUE_SETS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def merged(base: Obj, over: Obj) -> Obj:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def effective(name: str) -> Obj:
    """values.yaml with ci/<name>-values.yaml over it, as Helm merges them."""
    return merged(load_values_defaults(), load_values(name))


def auth_required(name: str) -> bool:
    return bool(effective(name)["authority"]["auth"]["mode"] == "required")


AUTH_SETS = [name for name in VALUE_SETS if auth_required(name)]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_chart(chart: helm.Chart, values: Obj | None = None, release: str = RELEASE) -> list[Obj]:
    manifests = chart.render(values or {}, name=release, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@cache
def rendered(name: str) -> tuple[Obj, ...]:
    with helm.Chart.load(CHART) as loaded:
        return tuple(render_chart(loaded, load_values(name)))


def find(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def container(workload: Obj, name: str) -> Obj:
    found: list[Obj] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def plain_env(c: Obj) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(c).items() if "value" in e}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objs if o["kind"] in POD_KINDS]


def authority(objs: tuple[Obj, ...]) -> Obj:
    return one(objs, "Deployment", RELEASE)


def operator(objs: tuple[Obj, ...]) -> Obj:
    return one(objs, "Deployment", f"{RELEASE}-operator")


def of_component(objs: tuple[Obj, ...] | list[Obj], kind: str, component: str) -> list[Obj]:
    """The objects of a kind and component, whatever the release and its names."""
    return [o for o in find(objs, kind) if o["metadata"]["labels"]["app.kubernetes.io/component"] == component]


def operator_principal(objs: tuple[Obj, ...] | list[Obj]) -> str:
    """What a TokenReview calls the operator: its ServiceAccount, as the chart creates it and the
    operator's pods run as it."""
    (workload,) = of_component(objs, "Deployment", "operator")
    name = pod_spec(workload)["serviceAccountName"]
    created = of_component(objs, "ServiceAccount", "operator")
    if created:
        assert [o["metadata"]["name"] for o in created] == [name]
    namespace = (created[0] if created else workload)["metadata"]["namespace"]
    return f"system:serviceaccount:{namespace}:{name}"


def authority_env(objs: tuple[Obj, ...] | list[Obj]) -> dict[str, str]:
    (workload,) = of_component(objs, "Deployment", "authority")
    return plain_env(container(workload, "authority"))


def volume(workload: Obj, name: str) -> Obj:
    found: list[Obj] = [v for v in pod_spec(workload)["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def mount(c: Obj, name: str) -> Obj:
    found: list[Obj] = [m for m in c["volumeMounts"] if m["name"] == name]
    assert len(found) == 1, name
    return found[0]


def triples(rules: list[Obj]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# --- Helm's own checks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_finds_nothing_even_strict(name: str) -> None:
    report = helm.lint(CHART, load_values(name), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": 3}, "replicaCount"),  # authority.replicaCount at the wrong level
        ({"authority": {"replicaCout": 3}}, "replicaCout"),
        ({"authority": {"containerSecurityContext": {"readOnlyRootFileSystem": True}}}, "readOnlyRootFileSystem"),
        ({"operator": {"namespace": ["agents"]}}, "namespace"),
        ({"database": {"existingSecretkey": "dsn"}}, "existingSecretkey"),
        ({"authority": {"replicaCount": "two"}}, "/authority/replicaCount"),
        # a float price would not stay exact
        ({"prices": {"config": {"models": {"m": {"input_mtok": 0.5, "output_mtok": "1"}}}}}, "input_mtok"),
        ({"prices": {"config": {"model": {}}}}, "model"),
        # authentication is a mode now, and auto is the server's choice, not the chart's
        ({"authority": {"auth": {"enabled": True}}}, "'enabled' not allowed"),
        ({"authority": {"auth": {"mode": "auto"}}}, "/authority/auth/mode"),
        ({"authority": {"auth": {"mode": "off"}}}, "/authority/auth/mode"),
        ({"authority": {"auth": {"mode": False}}}, "/authority/auth/mode"),
        # AGENTBUDGET_ADMIN_PRINCIPALS is comma-separated: a comma would make two principals
        ({"authority": {"auth": {"adminPrincipals": ["apikey:a,apikey:b"]}}}, "/authority/auth/adminPrincipals/0"),
        ({"authority": {"auth": {"roles": {"system:serviceaccount:a:b": {"role": "boss"}}}}}, "a:b/role"),
        (
            {"authority": {"auth": {"roles": {"system:serviceaccount:a:b": {"role": "viewer", "scopes": []}}}}},
            "'scopes'",
        ),
        ({"authority": {"auth": {"roles": {"system:serviceaccount:a:b": {"scope": ["*"]}}}}}, "'role'"),
        ({"authority": {"auth": {"roles": {"ceo, cfo": {"role": "viewer"}}}}}, "'ceo, cfo'"),
        ({"authority": {"auth": {"apiKeysSecret": "Api_Keys"}}}, "/authority/auth/apiKeysSecret"),
        ({"authority": {"auth": {"tokenCacheSeconds": -1}}}, "/authority/auth/tokenCacheSeconds"),
        ({"authority": {"config": {"workers": 0}}}, "/authority/config/workers"),
        ({"authority": {"config": {"maxBatch": 10001}}}, "/authority/config/maxBatch"),
        ({"authority": {"config": {"rateLimitBurst": 0}}}, "/authority/config/rateLimitBurst"),
    ],
)
def test_schema_refuses_misspelt_and_mistyped_values(chart: helm.Chart, values: Obj, where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_closes_every_object() -> None:
    """additionalProperties: false wherever the chart names the keys; a value schema for maps."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                extra = node.get("additionalProperties")
                closed = extra is False or (isinstance(extra, dict) and "properties" not in node)
                if not closed and path != "/properties/global":  # Helm's globals are free-form by design
                    open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    assert open_objects == []


def _schema_keys(node: Obj, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of the keys the chart itself defines (Kubernetes types and the price file, behind a $ref, excluded)."""
    for key, sub in node.get("properties", {}).items():
        yield (*path, key)
        if "$ref" not in sub:
            yield from _schema_keys(sub, (*path, key))


def _values_lines() -> dict[tuple[str, ...], bool]:
    """Every key of values.yaml (outside lists) and whether a comment sits right above it."""
    found: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        key = re.match(r"^( *)([A-Za-z_][\w-]*):", line)
        if key:
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(2)))
            found[tuple(k for _, k in stack)] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return found


def test_every_value_is_in_values_yaml_with_a_comment_above_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    declared = set(_schema_keys(schema)) - {("global",)}
    lines = _values_lines()
    missing = sorted(declared - set(lines))
    undocumented = sorted(k for k in declared & set(lines) if not lines[k])
    assert missing == [] and undocumented == []


# --- the CRD ----------------------------------------------------------------------------------


def test_the_chart_installs_the_crd_the_tests_validate_against(chart: helm.Chart) -> None:
    (installed,) = chart.crds
    assert CHART / installed["name"] == crd.CRD_PATH
    assert installed["data"].encode() == crd.CRD_PATH.read_bytes()
    assert yaml.safe_load(installed["data"]) == crd.load()


def test_the_crd_is_kept_on_uninstall() -> None:
    # Helm never deletes crds/; a templated CRD would be deleted with the release, and its resources with it.
    assert crd.load()["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name in VALUE_SETS:
        assert find(rendered(name), "CustomResourceDefinition") == []


@pytest.mark.parametrize(("example", "limit"), [("research", "20"), ("reporting", "10"), ("coordinator", "30")])
def test_examples_are_valid_agentbudgets(example: str, limit: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())
    assert crd.errors(body) == []
    assert (body["kind"], body["metadata"]["name"], body["spec"]["limit"]) == ("AgentBudget", example, limit)
    assert body["spec"].get("currency", "USD") == "USD" and body["spec"].get("period", "Monthly") == "Monthly"


# --- labels, selectors, Services ----------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_labelled_and_namespaced(name: str) -> None:
    for obj in rendered(name):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "agentbudget"
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}:
            wanted = load_values(name).get("metrics", {}).get("dashboards", {}).get("namespace")
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboards") and wanted:
                assert obj["metadata"]["namespace"] == wanted
            else:
                assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", VALUE_SETS)
def test_workload_selectors_match_their_pods_and_no_others(name: str) -> None:
    objs = rendered(name)
    for workload in workloads(objs):
        if workload["kind"] == "Job":
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, pod_labels(workload))
        others = [w for w in workloads(objs) if w is not workload]
        assert not any(selects(selector, pod_labels(w)) for w in others), workload["metadata"]["name"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_services_target_named_ports_of_the_pods_they_select(name: str) -> None:
    objs = rendered(name)
    for service in find(objs, "Service"):
        chosen = [w for w in workloads(objs) if selects(service["spec"]["selector"], pod_labels(w))]
        assert len(chosen) == 1, service["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in pod_spec(chosen[0])["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_the_authority_service_exposes_grpc_and_metrics() -> None:
    objs = rendered("defaults")
    service = one(objs, "Service", RELEASE)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "metrics": 9464}
    c = container(authority(objs), "authority")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = plain_env(c)
    assert (env["AGENTBUDGET_LISTEN"], env["AGENTBUDGET_METRICS_LISTEN"]) == (
        f"0.0.0.0:{ports['grpc']}",
        f"0.0.0.0:{ports['metrics']}",
    )
    assert selects(service["spec"]["selector"], pod_labels(authority(objs)))
    headless = one(objs, "Service", f"{RELEASE}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels(authority(objs)))


def test_names_fit_kubernetes_limits_for_a_long_release_name(chart: helm.Chart) -> None:
    release = "a-very-long-release-name-for-the-budget-authority-x"  # 51 characters
    objs = render_chart(chart, {"postgresql": {"enabled": True}}, release=release)
    for obj in objs:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]


# --- the authority ----------------------------------------------------------------------------


def test_replicas_are_configurable_and_two_by_default(chart: helm.Chart) -> None:
    assert authority(rendered("defaults"))["spec"]["replicas"] == 2
    assert authority(rendered("production"))["spec"]["replicas"] == 3
    assert authority(tuple(render_chart(chart, {"authority": {"replicaCount": 5}})))["spec"]["replicas"] == 5


def test_the_authority_is_probed_with_native_grpc_health_checks() -> None:
    objs = rendered("defaults")
    c = container(authority(objs), "authority")
    grpc_port = {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    assert c["livenessProbe"]["grpc"]["service"] == ""
    # NOT_SERVING during shutdown takes a replica out of the Service before it stops.
    assert c["readinessProbe"]["grpc"]["service"] == "agentbudget.v1.BudgetAuthority"


def test_with_tls_the_probes_check_the_port_since_kubelet_grpc_probes_are_plaintext() -> None:
    c = container(authority(rendered("tls")), "authority")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe] == {**c[probe], "tcpSocket": {"port": "grpc"}} and "grpc" not in c[probe]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_authority_reads_the_environment_the_chart_gives_it(name: str) -> None:
    objs = rendered(name)
    c = container(authority(objs), "authority")
    env = plain_env(c)
    known = {settings.ENV_PREFIX + f.upper() for f in settings.Settings.__dataclass_fields__}
    assert set(env) - known <= CONTRACT
    loaded = settings.load(None, {**env, "AGENTBUDGET_DATABASE_URL": "postgresql://db/agentbudget"})
    assert loaded.listen == "0.0.0.0:50051"
    assert loaded.grace_seconds < authority(objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    config, auth = effective(name)["authority"]["config"], effective(name)["authority"]["auth"]
    assert (loaded.max_batch, loaded.workers) == (config["maxBatch"], config["workers"])
    assert (loaded.rate_limit_per_second, loaded.rate_limit_burst) == (
        config["rateLimitPerSecond"],
        config["rateLimitBurst"],
    )
    assert loaded.auth == auth["mode"]  # never auto: the chart always has a database
    if auth_required(name):
        assert loaded.admin_principals == (operator_principal(objs), *auth["adminPrincipals"])
        assert loaded.token_cache_seconds == auth["tokenCacheSeconds"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        for path in (loaded.api_keys_file, loaded.roles_file):
            assert not path or str(Path(path).parent) in mounts
        assert bool(loaded.api_keys_file) == bool(auth["apiKeysSecret"])
        assert bool(loaded.roles_file) == bool(auth["roles"])
    else:
        assert (loaded.admin_principals, loaded.api_keys_file, loaded.roles_file) == ((), "", "")


@pytest.mark.parametrize(
    ("name", "secret", "key"),
    [("defaults", "agentbudget-database", "url"), ("production", "agentbudget-db", "dsn")],
)
def test_the_dsn_comes_from_the_users_secret(name: str, secret: str, key: str) -> None:
    objs = rendered(name)
    for workload in (authority(objs), one(objs, "Job")):
        (c,) = pod_spec(workload)["containers"]
        dsn = env_of(c)["AGENTBUDGET_DATABASE_URL"]
        assert dsn == {"name": "AGENTBUDGET_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    assert find(objs, "Secret") == []  # the chart never writes the user's credentials


def test_without_a_database_the_install_says_what_to_set(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape("database.existingSecret")):
        chart.render({"database": {"existingSecret": ""}}, name=RELEASE, namespace=NAMESPACE)


def test_the_bundled_postgresql_is_reached_through_a_generated_secret() -> None:
    import base64

    objs = rendered("bundled-postgres")
    secret = one(objs, "Secret", f"{RELEASE}-postgresql")
    dsn = base64.b64decode(secret["data"]["url"]).decode()
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert dsn == f"postgresql://agentbudget:{password}@{RELEASE}-postgresql.{NAMESPACE}.svc:5432/agentbudget"
    ref = env_of(container(authority(objs), "authority"))["AGENTBUDGET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{RELEASE}-postgresql", "key": "url"}
    statefulset = one(objs, "StatefulSet", f"{RELEASE}-postgresql")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    service = one(objs, "Service", f"{RELEASE}-postgresql")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_the_pdb_covers_the_authority_replicas() -> None:
    objs = rendered("defaults")
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1} and "minAvailable" not in pdb["spec"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(authority(objs)))
    assert not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(operator(objs)))
    production = one(rendered("production"), "PodDisruptionBudget")["spec"]
    assert production["minAvailable"] == 2 and "maxUnavailable" not in production


def test_topology_spread_constraints_get_the_authoritys_selector() -> None:
    objs = rendered("production")
    (constraint,) = pod_spec(authority(objs))["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert constraint["labelSelector"]["matchLabels"] == authority(objs)["spec"]["selector"]["matchLabels"]


def test_a_changed_price_configuration_rolls_the_replicas(chart: helm.Chart) -> None:
    def checksum(values: Obj) -> str:
        pod = authority(tuple(render_chart(chart, values)))["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/prices"])

    base = load_values("monitoring-on")
    changed = {"prices": {"config": {"apis": {"stripe": {"per_call": "0.02"}}}}}
    assert checksum(base) != checksum(changed) and checksum(base) == checksum(base)


def test_the_price_configuration_is_mounted_where_the_authority_reads_it() -> None:
    objs = rendered("monitoring-on")
    c = container(authority(objs), "authority")
    path = Path(plain_env(c)["AGENTBUDGET_PRICE_CONFIG"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod_spec(authority(objs))["volumes"] if v["name"] == mount["name"]]
    configmap = one(objs, "ConfigMap", volume["configMap"]["name"])
    catalog = pricing.parse(yaml.safe_load(configmap["data"][path.name]))  # the authority's own parser
    assert set(catalog.models) == {"our-finetune"} and set(catalog.sandboxes) == {"small", "gpu"}
    assert "AGENTBUDGET_PRICE_CONFIG" not in plain_env(container(authority(rendered("defaults")), "authority"))
    production = container(authority(rendered("production")), "authority")
    assert plain_env(production)["AGENTBUDGET_PRICE_CONFIG"] == "/etc/agentbudget/prices/prices.json"
    assert find(rendered("production"), "ConfigMap") == []  # the user's own ConfigMap


def test_tls_mounts_the_secret_and_names_its_files() -> None:
    objs = rendered("tls")
    c = container(authority(objs), "authority")
    env = plain_env(c)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod_spec(authority(objs))["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "agentbudget-authority-tls" and mount["readOnly"]
    files = {"AGENTBUDGET_TLS_CERT": "tls.crt", "AGENTBUDGET_TLS_KEY": "tls.key", "AGENTBUDGET_TLS_CLIENT_CA": "ca.crt"}
    assert {k: env[k] for k in files} == {k: f"{mount['mountPath']}/{f}" for k, f in files.items()}
    assert TLS_CONTRACT.isdisjoint(plain_env(container(authority(rendered("defaults")), "authority")))


def test_tls_without_a_secret_or_a_client_certificate_refuses_to_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape("authority.tls.secretName")):
        chart.render({"authority": {"tls": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)
    mtls = {"authority": {"tls": {"enabled": True, "secretName": "tls", "clientCA": True}}}
    with pytest.raises(helm.HelmRenderError, match=re.escape("operator.tls.secretName")):
        chart.render(mtls, name=RELEASE, namespace=NAMESPACE)


def test_a_grace_period_shorter_than_the_shutdown_grace_refuses_to_render(chart: helm.Chart) -> None:
    values = {"authority": {"terminationGracePeriodSeconds": 10, "config": {"graceSeconds": 10}}}
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- security contexts ----------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_runs_non_root_on_a_read_only_root(name: str) -> None:
    for workload in workloads(rendered(name)):
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp for m in c["volumeMounts"])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_only_the_operator_and_an_authenticating_authority_get_a_token(name: str) -> None:
    objs = rendered(name)
    auth = auth_required(name)
    for workload in workloads(objs):
        component = pod_labels(workload)["app.kubernetes.io/component"]
        wanted = component == "operator" or (component == "authority" and auth)
        assert pod_spec(workload)["automountServiceAccountToken"] is wanted, component


def test_the_dockerfile_builds_in_stages_and_runs_as_the_charts_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and line[0] != "#"]
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert len(stages) >= 2
    final = lines[stages[-1] :]
    build_stage = lines[stages[0]].split()[-1]
    assert any(f"from={build_stage}" in line for line in final), "the final stage takes the build stage's wheels"
    (user,) = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    pod = load_values_defaults()["authority"]["podSecurityContext"]
    assert int(uid) == pod["runAsUser"]
    assert [line for line in final if line.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["agentbudget"]']
    assert any("pip install" in line and "agentbudget" in line for line in final)


# --- the operator ---------------------------------------------------------------------------


def test_the_operator_is_one_replica_replaced_not_rolled() -> None:
    spec = operator(rendered("defaults"))["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_operator_reads_the_environment_the_chart_gives_it(name: str) -> None:
    c = container(operator(rendered(name)), "operator")
    assert c["command"] == ["agentbudget-operator"]
    config = OperatorConfig.from_env(plain_env(c))
    assert config.authority == f"{RELEASE}.{NAMESPACE}.svc:50051"
    assert config.namespaces == tuple(load_values(name).get("operator", {}).get("namespaces", ()))
    # kopf's liveness endpoint is what the kubelet probes
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert config.liveness == f"http://0.0.0.0:{ports[probe['port']]}{probe['path']}"
    env = plain_env(c)
    assert not [k for k in env if k.startswith("AGENTBUDGET_AUTHORITY_TLS_")]  # the older names
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    tls = effective(name)["authority"]["tls"]
    assert config.tls is bool(tls["enabled"])
    if tls["enabled"]:
        own = effective(name)["operator"]["tls"].get("secretName")
        files = [config.tls_ca, *((config.tls_cert, config.tls_key) if own else ())]
        for path in files:
            assert str(Path(path).parent) in mounts
    else:
        assert (config.tls_ca, config.tls_cert, config.tls_key) == ("", "", "")
    if auth_required(name):
        assert config.token_file == f"{TOKEN_DIR}/token" == credentials.DEFAULT_TOKEN_FILE
        assert str(Path(config.token_file).parent) in mounts
    else:
        assert "AGENTBUDGET_TOKEN_FILE" not in env and TOKEN_DIR not in mounts


def test_without_its_own_certificate_the_operator_sees_only_the_authoritys_ca(chart: helm.Chart) -> None:
    objs = render_chart(chart, {"authority": {"tls": {"enabled": True, "secretName": "authority-tls"}}})
    (volume,) = [v for v in pod_spec(operator(tuple(objs)))["volumes"] if v["name"] == "authority-tls"]
    assert volume["secret"] == {**volume["secret"], "secretName": "authority-tls"}
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the private key


def test_without_the_operator_nothing_of_it_is_installed(chart: helm.Chart) -> None:
    objs = render_chart(chart, {"operator": {"enabled": False}})
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs}
    assert components == {"authority", "migrate"}


def _operator_rbac_file() -> set[Triple]:
    docs = list(yaml.safe_load_all(OPERATOR_RBAC.read_text()))
    return triples(next(d for d in docs if d["kind"] == "ClusterRole")["rules"])


def _bound_to(objs: tuple[Obj, ...], service_account: str) -> dict[tuple[str, str], set[Triple]]:
    """(namespace or "*", rules) of every role the ServiceAccount is bound to."""
    roles = {(o["kind"], o["metadata"].get("namespace", "*"), o["metadata"]["name"]): o for o in objs}
    out: dict[tuple[str, str], set[Triple]] = {}
    for binding in find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            continue
        namespace = binding["metadata"].get("namespace", "*")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], "*" if ref["kind"] == "ClusterRole" else namespace, ref["name"])]
        out.setdefault((binding["kind"], namespace), set()).update(triples(role["rules"]))
    return out


def test_the_operators_cluster_role_is_operator_deploy_rbac_yaml() -> None:
    objs = rendered("defaults")
    sa = pod_spec(operator(objs))["serviceAccountName"]
    assert one(objs, "ServiceAccount", sa)
    assert _bound_to(objs, sa) == {("ClusterRoleBinding", "*"): _operator_rbac_file()}


def test_a_namespaced_operator_gets_roles_in_its_namespaces_only() -> None:
    objs = rendered("auth")
    grants = _bound_to(objs, pod_spec(operator(objs))["serviceAccountName"])
    crds = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    assert grants[("ClusterRoleBinding", "*")] == crds  # the CRD is cluster-scoped
    assert set(grants) == {("ClusterRoleBinding", "*"), ("RoleBinding", "agents"), ("RoleBinding", "research")}
    for namespace in ("agents", "research"):
        assert grants[("RoleBinding", namespace)] == _operator_rbac_file() - crds


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_authority_may_only_review_tokens_and_only_with_auth_required(name: str) -> None:
    objs = rendered(name)
    grants = _bound_to(objs, pod_spec(authority(objs))["serviceAccountName"])
    if auth_required(name):
        assert grants == {("ClusterRoleBinding", "*"): TOKENREVIEW}
    else:
        assert grants == {}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_rule_grants_a_wildcard(name: str) -> None:
    for role in find(rendered(name), "ClusterRole") + find(rendered(name), "Role"):
        assert not any("*" in t for t in triples(role["rules"]))


# --- authentication -------------------------------------------------------------------------


def test_by_default_every_call_authenticates_and_the_operator_is_the_admin() -> None:
    objs = rendered("defaults")
    env = authority_env(objs)
    assert env["AGENTBUDGET_AUTH"] == "required"
    assert env["AGENTBUDGET_ADMIN_PRINCIPALS"] == f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"
    assert env["AGENTBUDGET_ADMIN_PRINCIPALS"] == operator_principal(objs)
    grants = _bound_to(objs, pod_spec(authority(objs))["serviceAccountName"])
    assert grants == {("ClusterRoleBinding", "*"): TOKENREVIEW}
    # the authority's own Kubernetes API token, to create the TokenReviews with
    assert pod_spec(authority(objs))["automountServiceAccountToken"] is True
    assert "AGENTBUDGET_API_KEYS_FILE" not in env and "AGENTBUDGET_ROLES_FILE" not in env
    assert find(objs, "ConfigMap", f"{RELEASE}-roles") == []


@pytest.mark.parametrize("name", AUTH_SETS)
def test_the_operator_calls_with_a_projected_token_for_the_authoritys_audience(name: str) -> None:
    workload = operator(rendered(name))
    c = container(workload, "operator")
    token = {"audience": "agentbudget", "expirationSeconds": 3600, "path": "token"}
    assert volume(workload, "agentbudget-token") == {
        "name": "agentbudget-token",
        "projected": {"sources": [{"serviceAccountToken": token}]},
    }
    assert mount(c, "agentbudget-token") == {"name": "agentbudget-token", "mountPath": TOKEN_DIR, "readOnly": True}
    assert plain_env(c)["AGENTBUDGET_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    # the kubelet requests the token as the pod's ServiceAccount: the one the authority makes an admin
    loaded = settings.load(None, {**authority_env(rendered(name)), "AGENTBUDGET_DATABASE_URL": "x"})
    assert operator_principal(rendered(name)) in loaded.admin_principals


@pytest.mark.parametrize(
    ("values", "release", "account"),
    [
        ({}, "budgets", "budgets-agentbudget-operator"),
        ({"fullnameOverride": "ab"}, RELEASE, "ab-operator"),
        ({"operator": {"serviceAccount": {"name": "budget-operator"}}}, RELEASE, "budget-operator"),
        ({"operator": {"serviceAccount": {"create": False, "name": "ops"}}}, RELEASE, "ops"),
    ],
)
def test_the_admin_is_the_operators_service_account_however_it_is_named(
    chart: helm.Chart, values: Obj, release: str, account: str
) -> None:
    objs = render_chart(chart, values, release=release)
    principal = f"system:serviceaccount:{NAMESPACE}:{account}"
    assert operator_principal(objs) == principal
    admins = settings.comma_list(authority_env(objs)["AGENTBUDGET_ADMIN_PRINCIPALS"])
    assert admins == (principal,)


def test_extra_admins_follow_the_operator_and_without_an_operator_stand_alone(chart: helm.Chart) -> None:
    extra = ["apikey:ops", "system:serviceaccount:platform:admin"]
    with_operator = render_chart(chart, {"authority": {"auth": {"adminPrincipals": extra}}})
    assert settings.comma_list(authority_env(with_operator)["AGENTBUDGET_ADMIN_PRINCIPALS"]) == (
        operator_principal(with_operator),
        *extra,
    )
    again = render_chart(chart, {"authority": {"auth": {"adminPrincipals": [operator_principal(with_operator)]}}})
    assert authority_env(again)["AGENTBUDGET_ADMIN_PRINCIPALS"] == operator_principal(with_operator)
    alone = render_chart(chart, {"operator": {"enabled": False}, "authority": {"auth": {"adminPrincipals": extra}}})
    assert settings.comma_list(authority_env(alone)["AGENTBUDGET_ADMIN_PRINCIPALS"]) == tuple(extra)
    nobody = render_chart(chart, {"operator": {"enabled": False}})
    assert settings.load(None, {**authority_env(nobody), "AGENTBUDGET_DATABASE_URL": "x"}).admin_principals == ()


def test_an_operator_running_as_the_default_service_account_refuses_to_render(chart: helm.Chart) -> None:
    # "default" as an admin would make every pod of the namespace running as it one
    values = {"operator": {"serviceAccount": {"create": False}}}
    with pytest.raises(helm.HelmRenderError, match=re.escape("operator.serviceAccount.name")):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    chart.render(merged(values, {"authority": {"auth": {"mode": "none"}}}), name=RELEASE, namespace=NAMESPACE)


def test_mode_none_authenticates_nobody_and_grants_nothing(chart: helm.Chart) -> None:
    objs = rendered("auth-none")
    env = authority_env(objs)
    assert env["AGENTBUDGET_AUTH"] == "none"
    assert not {"AGENTBUDGET_ADMIN_PRINCIPALS", "AGENTBUDGET_API_KEYS_FILE", "AGENTBUDGET_ROLES_FILE"} & set(env)
    assert find(objs, "ClusterRole", f"{RELEASE}-tokenreview") == []
    assert find(objs, "ClusterRoleBinding", f"{RELEASE}-tokenreview") == []
    assert pod_spec(authority(objs))["automountServiceAccountToken"] is False
    op = operator(objs)
    assert not any("projected" in v for v in pod_spec(op)["volumes"])
    assert "AGENTBUDGET_TOKEN_FILE" not in plain_env(container(op, "operator"))
    # the keys of the other mode are ignored, not half-applied
    ignored = {"mode": "none", "apiKeysSecret": "keys", "roles": {"system:serviceaccount:a:b": {"role": "viewer"}}}
    half = tuple(render_chart(chart, {"authority": {"auth": ignored}}))
    assert find(half, "ConfigMap", f"{RELEASE}-roles") == []
    assert {v["name"] for v in pod_spec(authority(half))["volumes"]} == {"tmp"}


def test_api_keys_and_roles_are_mounted_where_the_authority_reads_them(tmp_path: Path) -> None:
    objs = rendered("auth")
    workload = authority(objs)
    c = container(workload, "authority")
    env = plain_env(c)
    keys_path = Path(env["AGENTBUDGET_API_KEYS_FILE"])
    assert mount(c, "api-keys") == {"name": "api-keys", "mountPath": str(keys_path.parent), "readOnly": True}
    secret = volume(workload, "api-keys")["secret"]
    assert secret["secretName"] == "agentbudget-api-keys"
    assert secret["items"] == [{"key": "api-keys.yaml", "path": keys_path.name}]  # the user's Secret, that key only
    assert find(objs, "Secret") == []
    roles_path = Path(env["AGENTBUDGET_ROLES_FILE"])
    assert mount(c, "roles") == {"name": "roles", "mountPath": str(roles_path.parent), "readOnly": True}
    configmap = one(objs, "ConfigMap", volume(workload, "roles")["configMap"]["name"])
    # The authority's own loaders, on the files as the pod would see them.
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text(configmap["data"][roles_path.name])
    (tmp_path / "api-keys.yaml").write_text("keys: []\n")
    loaded = settings.load(None, {**env, "AGENTBUDGET_DATABASE_URL": "postgresql://db/agentbudget"})
    assigned = roles.load(loaded.admin_principals, str(roles_file))
    assert assigned.principal("system:serviceaccount:agents:ceo") == Principal(
        "system:serviceaccount:agents:ceo", "coordinator", ("agents/*",)
    )
    assert assigned.principal("system:serviceaccount:finance:reports").scope == ("*",)
    assert assigned.principal(operator_principal(objs)).role == "admin"
    assert assigned.principal("system:serviceaccount:agents:research").role == "agent"
    # The authority's start with that environment (outside a cluster: API keys only, and it says so).
    here = dataclasses.replace(loaded, api_keys_file=str(tmp_path / "api-keys.yaml"), roles_file=str(roles_file))
    access = Access.load(here)
    try:
        assert access.mode == "required" and access.authenticator is not None
        assert access.authenticator.roles.principal("system:serviceaccount:agents:ceo").role == "coordinator"
    finally:
        access.close()


def test_a_changed_roles_file_rolls_the_replicas(chart: helm.Chart) -> None:
    def annotations(values: Obj) -> dict[str, str]:
        pod = authority(tuple(render_chart(chart, values)))["spec"]["template"]
        return dict(pod["metadata"]["annotations"])

    base = load_values("auth")
    changed = merged(base, {"authority": {"auth": {"roles": {"system:serviceaccount:a:b": {"role": "viewer"}}}}})
    assert annotations(base)["checksum/roles"] != annotations(changed)["checksum/roles"]
    assert "checksum/roles" not in annotations({})


@pytest.mark.parametrize(("name", "required"), [("defaults", True), ("auth-none", False)])
def test_the_notes_say_how_agents_authenticate_or_warn_that_nobody_does(
    chart: helm.Chart, name: str, required: bool
) -> None:
    manifests = chart.render(load_values(name), name=RELEASE, namespace=NAMESPACE, is_install=True)
    (notes,) = [text for path, text in manifests.items() if path.endswith("NOTES.txt")]
    assert ("injectToken" in notes and "serviceAccountName" in notes) is required
    assert ("AUTHENTICATION IS OFF" in notes and "NEVER for production" in notes) is not required


# --- migrations -----------------------------------------------------------------------------


def test_migrations_run_once_per_install_and_upgrade_as_a_hook() -> None:
    job = one(rendered("defaults"), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["args"] == ["migrate"] and c["image"] == container(authority(rendered("defaults")), "authority")["image"]
    # A pre-install hook runs before the chart's ServiceAccounts exist: it must not need one.
    assert "serviceAccountName" not in spec and spec["automountServiceAccountToken"] is False


def test_with_the_bundled_postgresql_migrations_wait_for_it_on_install() -> None:
    job = one(rendered("bundled-postgres"), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_migrations_can_be_left_to_the_replicas(chart: helm.Chart) -> None:
    assert find(render_chart(chart, {"migrations": {"enabled": False}}), "Job") == []


# --- monitoring and network policies ----------------------------------------------------------


def test_the_service_monitor_scrapes_the_metrics_port_of_the_authority_service() -> None:
    objs = rendered("monitoring-on")
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service", RELEASE)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"]["matchLabels"], one(objs, "Service", f"{RELEASE}-headless")["spec"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert find(rendered("defaults"), "ServiceMonitor") == []


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "agentbudget"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("dashboards"))
    return copy


def _dashboards(chart_dir: Path) -> list[Obj]:
    with helm.Chart.load(chart_dir) as loaded:
        objs = render_chart(loaded, load_values("monitoring-on"))
    return [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboards")]


def test_dashboards_render_whether_or_not_the_chart_ships_any(chart_copy: Path) -> None:
    assert _dashboards(chart_copy) == []
    (chart_copy / "dashboards").mkdir()
    assert _dashboards(chart_copy) == []
    board = {"title": "AgentBudget", "panels": [{"type": "stat", "title": 'Spent "today"'}]}
    (chart_copy / "dashboards" / "agentbudget.json").write_text(json.dumps(board, indent=2))
    (configmap,) = _dashboards(chart_copy)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "AgentBudget"}
    assert json.loads(configmap["data"]["agentbudget.json"]) == board


def test_the_charts_own_dashboards_are_all_in_the_configmap() -> None:
    shipped = sorted((CHART / "dashboards").glob("*.json"))
    found = [o for o in find(rendered("monitoring-on"), "ConfigMap") if o["metadata"]["name"].endswith("-dashboards")]
    if not shipped:
        assert found == []
        return
    (configmap,) = found
    assert sorted(configmap["data"]) == [p.name for p in shipped]
    for path in shipped:
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def _ingress_peers(policy: Obj, port: str) -> list[Obj]:
    return [
        peer
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port for p in rule["ports"])
        for peer in rule["from"]
    ]


def test_network_policies_admit_only_the_intended_peers() -> None:
    objs = rendered("production")
    policy = one(objs, "NetworkPolicy", RELEASE)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(authority(objs)))
    grpc = _ingress_peers(policy, "grpc")
    assert {"podSelector": {"matchLabels": operator(objs)["spec"]["selector"]["matchLabels"]}} in grpc
    assert {"namespaceSelector": {"matchLabels": {"agentbudget.io/agents": "true"}}} in grpc and len(grpc) == 2
    assert _ingress_peers(policy, "metrics") == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert one(objs, "NetworkPolicy", f"{RELEASE}-operator")["spec"]["ingress"] == []
    assert find(rendered("defaults"), "NetworkPolicy") == []


def test_only_the_authority_and_the_migrations_reach_the_bundled_postgresql() -> None:
    objs = rendered("bundled-postgres")
    policy = one(objs, "NetworkPolicy", f"{RELEASE}-postgresql")
    allowed = [peer["podSelector"]["matchLabels"] for peer in _ingress_peers(policy, "postgresql")]
    reaching = {
        pod_labels(w)["app.kubernetes.io/component"]
        for w in workloads(objs)
        for a in allowed
        if selects(a, pod_labels(w))
    }
    assert reaching == {"authority", "migrate"}
