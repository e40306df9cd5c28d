"""``agentbudget-operator``: run the operator (cluster-wide unless namespaces are configured)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from .config import OperatorConfig
from .handlers import registry


def main() -> int:
    config = OperatorConfig.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(
        kopf.operator(
            registry=registry,
            memo=kopf.Memo(config=config),
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness or None,
            standalone=True,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
