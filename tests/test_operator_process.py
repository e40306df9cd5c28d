"""The operator as its users start it: one command, configured by the environment, with a liveness endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from kube import AGENTBUDGETS, DEPLOYMENTS, KubeEmulator, eventually
from procs import ServerProcess
from test_operator import NAME, NS, agent_budget, deployment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_command_runs_the_operator_with_a_liveness_endpoint(dsn):
    port = free_port()
    with KubeEmulator() as kube, ServerProcess(dsn) as authority:
        kube.create(DEPLOYMENTS, deployment(replicas=1))
        env = {
            **os.environ,
            "AGENTBUDGET_OPERATOR_KUBE_URL": kube.url,
            "AGENTBUDGET_AUTHORITY": authority.address,
            "AGENTBUDGET_OPERATOR_LIVENESS": f"http://127.0.0.1:{port}/healthz",
        }
        command = [str(Path(authority.args[0]).with_name("agentbudget-operator"))]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:

            def healthy() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    return resp.status == 200 and isinstance(json.loads(resp.read()), dict)

            eventually(healthy, timeout=30, what="liveness endpoint")
            kube.create(AGENTBUDGETS, agent_budget("5"))
            eventually(lambda: (kube.get(AGENTBUDGETS, NAME, NS) or {}).get("status", {}).get("phase") == "Active")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
