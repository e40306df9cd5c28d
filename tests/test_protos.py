"""The committed generated code is exactly what the pinned generators produce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_api_has_the_rpcs_of_the_contract():
    from agentbudget.v1 import budget_authority_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["BudgetAuthority"]
    assert sorted(m.name for m in service.methods) == sorted(
        [
            "Reserve",
            "Commit",
            "Release",
            "RecordCost",
            "GetBudget",
            "UpsertBudget",
            "DeleteBudget",
            "ListBudgets",
            "Transfer",
            "ListLedgerEntries",
            "WatchEvents",
            "Route",
            "QuerySpend",
        ]
    )
    for method in service.methods:  # one request / response pair per RPC
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def test_no_importable_package_is_named_operator():
    import importlib.util

    spec = importlib.util.find_spec("operator")
    assert spec is not None and spec.origin and "site-packages" not in spec.origin and str(ROOT) not in spec.origin


def test_every_documented_error_reason_has_a_client_exception():
    from agentbudget.errors import REASONS
    from agentbudget.v1 import budget_authority_pb2 as pb

    documented = {name for name in pb.ErrorReason.keys() if name != "ERROR_REASON_UNSPECIFIED"}
    assert documented == set(REASONS)
