"""The official Anthropic client, metered: every ``messages.create`` holds its worst case before
it is made and is charged its reported usage after (released when it fails).

    from anthropic import AsyncAnthropic
    from agentbudget.sdk import anthropic_wrapper

    llm = anthropic_wrapper.wrap(AsyncAnthropic(), budget_client, "team/research")
    reply = await llm.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=[...], task_id="t-7")
    reply = await llm.messages.create(task_class="analysis", max_tokens=1024, messages=[...])  # routed model
    async with await llm.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=[...],
                                         stream=True) as stream:
        async for event in stream:
            ...

Only ``messages.create`` is metered; ``llm.unwrapped`` is the client itself.

Usage as charged: Anthropic's ``input_tokens`` exclude the cache, so the input charged is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` (AgentBudget's input
includes cache tokens), with the cache reads and writes sent as such, and ``output_tokens``
(thinking included; ``output_tokens_details.thinking_tokens`` is sent as ``reasoning_tokens``).
A stream is charged from ``message_start``'s usage updated by ``message_delta``'s (cumulative)
one. Input is bounded as :mod:`agentbudget.sdk.metering` describes; only a request that marks
``cache_control`` (at the top or on any block) can write the cache, so only such a hold allows
for cache writes. Server-tool fees (web search per use) are not in the model price.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, overload

from anthropic import AsyncAnthropic, AsyncStream
from anthropic.types import Message, RawMessageStreamEvent

from ..client import BudgetClient
from .metering import InputBound, Meter, MeteredStream, Usage, count, materialize, max_output
from .router import Router

PROVIDER = "anthropic"
_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "tool_search")


def _n(value: Any) -> int:
    return value if isinstance(value, int) else 0


def message_usage(usage: Any) -> Usage | None:
    """A Message's (or message_start's) usage: cache tokens added into the input."""
    if usage is None:
        return None
    cache_read, cache_write = _n(usage.cache_read_input_tokens), _n(usage.cache_creation_input_tokens)
    details = getattr(usage, "output_tokens_details", None)
    return Usage(
        input_tokens=_n(usage.input_tokens) + cache_read + cache_write,
        output_tokens=_n(usage.output_tokens),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=_n(getattr(details, "thinking_tokens", 0)),
    )


class _MessageTracker:
    """message_start gives the input; message_delta the cumulative output (and, on newer APIs,
    cumulative input and cache counts, which win when present)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._final = False

    def feed(self, item: RawMessageStreamEvent) -> bool:
        if item.type == "message_start":
            self._take(item.message.usage)
        elif item.type == "message_delta":
            self._take(item.usage)
            self._final = True
        return True

    def _take(self, usage: Any) -> None:
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                self._counts[name] = value
        details = getattr(usage, "output_tokens_details", None)
        if details is not None:
            self._counts["thinking_tokens"] = _n(getattr(details, "thinking_tokens", 0))

    def usage(self) -> Usage | None:
        if not self._final:
            return None  # no message_delta: the output is unknown
        c = self._counts
        cache_read, cache_write = c.get("cache_read_input_tokens", 0), c.get("cache_creation_input_tokens", 0)
        return Usage(
            input_tokens=c.get("input_tokens", 0) + cache_read + cache_write,
            output_tokens=c.get("output_tokens", 0),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=c.get("thinking_tokens", 0),
        )

    def failed(self) -> bool:
        return False  # a failing stream raises (an ``error`` event)


def _marks_cache(value: Any) -> bool:
    """Whether any block of the request asks for a cache breakpoint."""
    if isinstance(value, Mapping):
        return value.get("cache_control") is not None or any(_marks_cache(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_marks_cache(v) for v in value)
    return False


def _server_tools(tools: Any) -> int:
    if not isinstance(tools, list | tuple):
        return 0
    return sum(1 for t in tools if isinstance(t, Mapping) and str(t.get("type", "")).startswith(_SERVER_TOOLS))


class Messages:
    def __init__(self, meter: Meter, raw: AsyncAnthropic) -> None:
        self._meter = meter
        self._raw = raw

    @overload
    async def create(
        self,
        *,
        stream: Literal[True],
        task_class: str | None = ...,
        task_id: str = ...,
        task_type: str = ...,
        labels: Mapping[str, str] | None = ...,
        reservation_id: str | None = ...,
        reserve_input_tokens: int | None = ...,
        **params: Any,
    ) -> MeteredStream[RawMessageStreamEvent]: ...

    @overload
    async def create(
        self,
        *,
        stream: Literal[False] = ...,
        task_class: str | None = ...,
        task_id: str = ...,
        task_type: str = ...,
        labels: Mapping[str, str] | None = ...,
        reservation_id: str | None = ...,
        reserve_input_tokens: int | None = ...,
        **params: Any,
    ) -> Message: ...

    async def create(
        self,
        *,
        stream: bool = False,
        task_class: str | None = None,
        task_id: str = "",
        task_type: str = "",
        labels: Mapping[str, str] | None = None,
        reservation_id: str | None = None,
        reserve_input_tokens: int | None = None,
        **params: Any,
    ) -> Message | MeteredStream[RawMessageStreamEvent]:
        """``AsyncAnthropic().messages.create(**params)``, metered (see the module doc)."""
        m = self._meter
        params["model"] = await m.model_for(params.get("model"), task_class)
        materialize(params, "system", "messages", "tools")
        if reserve_input_tokens is None:
            keys = ("system", "messages", "tools", "tool_choice", "output_config", "extra_body")
            content = [params.get(k) for k in keys]
            reserve_input_tokens = m.input_bound.tokens(
                content,
                messages=count(params.get("messages")) + (1 if params.get("system") else 0),
                tools=count(params.get("tools")),
                server_tools=_server_tools(params.get("tools")),
                cache_write=params.get("cache_control") is not None or _marks_cache(content),
            )
        output = max_output(params.get("max_tokens"), default=m.default_max_output_tokens)
        hold = m.reserve(
            params["model"], reserve_input_tokens, output, m.tags_for(task_id, task_type, labels), reservation_id
        )
        messages = self._raw.messages
        if not stream:

            async def complete() -> Message:
                response: Message = await messages.create(stream=False, **params)
                return response

            return await m.call(hold, complete, lambda r: message_usage(r.usage))

        async def open_stream() -> AsyncStream[RawMessageStreamEvent]:
            events: AsyncStream[RawMessageStreamEvent] = await messages.create(stream=True, **params)
            return events

        return await m.stream(hold, open_stream, _MessageTracker())


class MeteredAnthropic:
    """An ``AsyncAnthropic`` whose messages are charged to ``budget``."""

    def __init__(self, anthropic_client: AsyncAnthropic, meter: Meter) -> None:
        self.unwrapped = anthropic_client
        self.meter = meter
        self.messages = Messages(meter, anthropic_client)


def wrap(
    anthropic_client: AsyncAnthropic,
    budget_client: BudgetClient,
    budget: str,
    *,
    provider: str = PROVIDER,
    router: Router | None = None,
    input_bound: InputBound | None = None,
    default_max_output_tokens: int | None = None,
    ttl: timedelta | None = None,
    task_type: str = "",
    labels: Mapping[str, str] | None = None,
) -> MeteredAnthropic:
    """Meter ``anthropic_client`` against ``budget`` (``provider``: the genai-prices id)."""
    meter = Meter(
        budget_client,
        budget,
        provider=provider,
        router=router,
        input_bound=input_bound,
        default_max_output_tokens=default_max_output_tokens,
        ttl=ttl,
        task_type=task_type,
        labels=labels,
    )
    return MeteredAnthropic(anthropic_client, meter)
