"""How fast an exhausted agent stops: from the authority committing the cost that exhausts its
budget to the Deployment's replicas being 0 in the (emulated) Kubernetes API.

A measurement, not a test: it prints each sample and the median / maximum. One run:

    .venv/bin/python bench/operator_latency.py [--samples 10]

It creates a database of its own on the PostgreSQL of --admin-dsn (dropped at the end), runs a
real authority process, the emulated API of tests/kube.py and the real operator in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import kopf

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from agentbudget.client import money  # noqa: E402
from agentbudget.v1 import budget_authority_pb2 as pb  # noqa: E402
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc  # noqa: E402
from agentbudget_operator import handlers  # noqa: E402
from agentbudget_operator.config import OperatorConfig  # noqa: E402
from authority import DEFAULT_ADMIN_DSN, Server, admin, dsn_for  # noqa: E402
from kube import AGENTBUDGETS, DEPLOYMENTS, KubeEmulator, OperatorRunner, eventually  # noqa: E402

NS, NAME, TARGET = "agents", "research", "research-agent"


def deployment() -> dict[str, object]:
    labels = {"app": TARGET}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": TARGET, "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "a", "image": "a"}]}},
        },
    }


def replicas(kube: KubeEmulator) -> int:
    return int(kube.get(DEPLOYMENTS, TARGET, NS)["spec"]["replicas"])


def limit_units(ledger: pb_grpc.BudgetAuthorityStub) -> int:
    return int(ledger.GetBudget(pb.GetBudgetRequest(name=f"{NS}/{NAME}")).budget.spec.limit.units)


def measure(samples: int, admin_dsn: str) -> list[float]:
    database = f"agentbudget_latency_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(admin_dsn, f'CREATE DATABASE "{database}"'))
    server = Server(dsn_for(admin_dsn, database), Path(tempfile.mkdtemp()))
    out: list[float] = []
    try:
        channel = grpc.insecure_channel(server.target)
        ledger = pb_grpc.BudgetAuthorityStub(channel)
        with KubeEmulator() as kube:
            kube.create(DEPLOYMENTS, deployment())
            config = OperatorConfig(authority=server.target, kube_url=kube.url)
            with OperatorRunner(kube, handlers.registry, memo=kopf.Memo(config=config)):
                spec = {"limit": "10", "targetRef": {"name": TARGET}}
                kube.create(AGENTBUDGETS, {"metadata": {"name": NAME, "namespace": NS}, "spec": spec})
                for i in range(samples):
                    limit = 10 * (i + 1)
                    kube.patch(AGENTBUDGETS, NAME, {"spec": {"limit": str(limit)}}, NS)
                    eventually(lambda: replicas(kube) == 2, timeout=30, what="agent running")
                    eventually(lambda lim=limit: limit_units(ledger) == lim, timeout=30, what="limit in force")
                    cost = pb.RecordCostRequest(budget=f"{NS}/{NAME}", request_id=f"c{i}", amount=money("10"))
                    ledger.RecordCost(cost)  # acknowledged: committed in PostgreSQL
                    committed = time.monotonic()
                    while replicas(kube) != 0:
                        if time.monotonic() - committed > 30:
                            raise TimeoutError("the agent was not paused within 30 s")
                        time.sleep(0.002)
                    out.append(time.monotonic() - committed)
                    print(f"sample {i + 1}: {out[-1] * 1000:.0f} ms", flush=True)
        channel.close()
    finally:
        server.stop()
        asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    args = parser.parse_args()
    out = measure(args.samples, args.admin_dsn)
    print(
        f"commit → replicas 0: median {statistics.median(out) * 1000:.0f} ms, max {max(out) * 1000:.0f} ms "
        f"over {len(out)} samples (goal: under 2000 ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
