"""The agent SDK: provider clients metered against an AgentBudget, and meters for other costs.

    from agentbudget import client as ab
    from agentbudget.sdk import meter, openai_wrapper, anthropic_wrapper

    async with ab.connect("agentbudget:50051") as budgets:
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
"""

from __future__ import annotations

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
    "parse_annotations",
    "sandbox",
]
