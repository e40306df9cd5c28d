"""The agent SDK: provider clients metered against an AgentBudget, and meters for other costs.

    from agentbudget import client as ab
    from agentbudget.sdk import meter, openai_wrapper, anthropic_wrapper

    async with ab.connect_from_env() as budgets:   # AGENTBUDGET_TARGET, TLS and token from the pod
        llm = anthropic_wrapper.wrap(AsyncAnthropic(), budgets, "team/research", task_type="research")
        reply = await llm.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=[...])
        reply = await llm.messages.create(task_class="analysis", max_tokens=1024, messages=[...])

        async with meter.sandbox(budgets, "team/research", "small", max_seconds=300):
            ...
        async with meter.api_call(budgets, "team/research", "stripe"):
            ...

Each model call holds the worst case (the model's price of an upper bound of the input tokens
and of the request's maximum output, priced by the authority), then commits the usage the
provider reports (priced by the authority too), or releases the hold when the call fails.
How the bound is computed: :mod:`agentbudget.sdk.metering`. The wrappers import the provider
packages (the ``sdk`` extra); this package itself does not.

``connect_from_env()`` (also exported here) is how an agent in a cluster connects: the target from
``AGENTBUDGET_TARGET``, TLS from ``AGENTBUDGET_TLS`` / ``AGENTBUDGET_CA_FILE`` (and a client
certificate from ``AGENTBUDGET_CERT_FILE`` / ``AGENTBUDGET_KEY_FILE``), and the bearer token from
``AGENTBUDGET_TOKEN_FILE``, by default the projected token the operator injects
(``/var/run/secrets/agentbudget.io/token``), re-read as the kubelet rotates it.
"""

from __future__ import annotations

from ..client import connect_from_env
from .meter import ApiCall, SandboxSession, api_call, sandbox
from .metering import DEFAULT_MAX_OUTPUT_TOKENS, InputBound, MeteredStream, Tags, Usage
from .router import DEFAULT_ANNOTATIONS_PATH, Route, Router, parse_annotations

__all__ = [
    "DEFAULT_ANNOTATIONS_PATH",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "ApiCall",
    "InputBound",
    "MeteredStream",
    "Route",
    "Router",
    "SandboxSession",
    "Tags",
    "Usage",
    "api_call",
    "connect_from_env",
    "parse_annotations",
    "sandbox",
]
