"""The official OpenAI client, metered: every call holds its worst case before it is made and is
charged its reported usage after (released when it fails).

    from openai import AsyncOpenAI
    from agentbudget.sdk import openai_wrapper

    llm = openai_wrapper.wrap(AsyncOpenAI(), budget_client, "team/research", task_type="research")
    reply = await llm.chat.completions.create(model="gpt-4o-mini", messages=[...], max_completion_tokens=500,
                                              task_id="t-42")
    reply = await llm.chat.completions.create(task_class="lookup", messages=[...])  # routed model
    async with await llm.chat.completions.create(model="gpt-4o-mini", messages=[...], stream=True) as stream:
        async for chunk in stream:
            ...
    answer = await llm.responses.create(model="gpt-4.1", input="...", max_output_tokens=300)

Only ``chat.completions.create`` and ``responses.create`` are metered; ``llm.unwrapped`` is the
client itself (its other calls are not charged to any budget).

Usage as charged: ``prompt_tokens`` (which include ``prompt_tokens_details.cached_tokens``, sent
as cache reads, and its ``cache_write_tokens``) and ``completion_tokens`` (which include the
reasoning tokens, sent for the record as ``reasoning_tokens``). A stream asks for
``stream_options.include_usage`` and is charged from its final chunk; when the caller did not ask
for that chunk itself, it is not passed on. Input is bounded as :mod:`agentbudget.sdk.metering`
describes; OpenAI caches prompts on its own, so every hold allows for cache writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, overload

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage
from openai.types.responses import Response, ResponseStreamEvent, ResponseUsage

from ..client import BudgetClient
from .metering import InputBound, Meter, MeteredStream, Usage, count, materialize, max_output
from .router import Router

PROVIDER = "openai"
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_HOSTED_TOOLS = ("web_search", "file_search", "code_interpreter", "mcp", "image_generation", "computer")


def chat_usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        cache_write_tokens=(prompt.cache_write_tokens or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
    )


def response_usage(usage: ResponseUsage | None) -> Usage | None:
    if usage is None:
        return None
    inp, out = usage.input_tokens_details, usage.output_tokens_details
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=(inp.cached_tokens or 0) if inp else 0,
        cache_write_tokens=(getattr(inp, "cache_write_tokens", 0) or 0) if inp else 0,
        reasoning_tokens=(out.reasoning_tokens or 0) if out else 0,
    )


class _ChatTracker:
    def __init__(self, hide_usage_chunk: bool) -> None:
        self._hide = hide_usage_chunk
        self._usage: Usage | None = None

    def feed(self, item: ChatCompletionChunk) -> bool:
        if item.usage is not None:
            self._usage = chat_usage(item.usage)
            if self._hide and not item.choices:
                return False
        return True

    def usage(self) -> Usage | None:
        return self._usage

    def failed(self) -> bool:
        return False


class _ResponseTracker:
    def __init__(self) -> None:
        self._usage: Usage | None = None
        self._failed = False

    def feed(self, item: ResponseStreamEvent) -> bool:
        if item.type in _FINAL_RESPONSE_EVENTS:
            response: Response | None = getattr(item, "response", None)
            if response is not None and response.usage is not None:
                self._usage = response_usage(response.usage)
        self._failed = self._failed or item.type in ("response.failed", "error")
        return True

    def usage(self) -> Usage | None:
        return self._usage

    def failed(self) -> bool:
        return self._failed


def _hosted_tools(tools: Any) -> int:
    if not isinstance(tools, list | tuple):
        return 0
    return sum(1 for t in tools if isinstance(t, Mapping) and str(t.get("type", "")).startswith(_HOSTED_TOOLS))


class ChatCompletions:
    def __init__(self, meter: Meter, raw: AsyncOpenAI) -> None:
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
    ) -> MeteredStream[ChatCompletionChunk]: ...

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
    ) -> ChatCompletion: ...

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
    ) -> ChatCompletion | MeteredStream[ChatCompletionChunk]:
        """``AsyncOpenAI().chat.completions.create(**params)``, metered (see the module doc)."""
        m = self._meter
        params["model"] = await m.model_for(params.get("model"), task_class)
        materialize(params, "messages", "tools", "functions")
        if reserve_input_tokens is None:
            messages = params.get("messages") or []
            content = [params.get(k) for k in ("messages", "tools", "functions", "tool_choice", "response_format")]
            content.append(params.get("extra_body"))
            reserve_input_tokens = m.input_bound.tokens(
                content,
                messages=count(messages),
                tools=count(params.get("tools")) + count(params.get("functions")),
                cache_write=True,
            )
        choices = max_output(params.get("n"), default=1)
        output = max_output(
            params.get("max_completion_tokens"), params.get("max_tokens"), default=m.default_max_output_tokens
        )
        output *= choices
        prediction = params.get("prediction")
        if prediction is not None:  # rejected predicted tokens are billed as completion tokens
            output += m.input_bound.text_tokens(prediction)
        hold = m.reserve(
            params["model"], reserve_input_tokens, output, m.tags_for(task_id, task_type, labels), reservation_id
        )
        completions = self._raw.chat.completions
        if not stream:

            async def complete() -> ChatCompletion:
                response: ChatCompletion = await completions.create(stream=False, **params)
                return response

            return await m.call(hold, complete, lambda r: chat_usage(r.usage))
        options = dict(params.get("stream_options") or {})
        tracker = _ChatTracker(hide_usage_chunk=not options.get("include_usage"))
        params["stream_options"] = {**options, "include_usage": True}

        async def open_stream() -> AsyncStream[ChatCompletionChunk]:
            chunks: AsyncStream[ChatCompletionChunk] = await completions.create(stream=True, **params)
            return chunks

        return await m.stream(hold, open_stream, tracker)


class Chat:
    def __init__(self, meter: Meter, raw: AsyncOpenAI) -> None:
        self.completions = ChatCompletions(meter, raw)


class Responses:
    def __init__(self, meter: Meter, raw: AsyncOpenAI) -> None:
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
    ) -> MeteredStream[ResponseStreamEvent]: ...

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
    ) -> Response: ...

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
    ) -> Response | MeteredStream[ResponseStreamEvent]:
        """``AsyncOpenAI().responses.create(**params)``, metered (see the module doc)."""
        m = self._meter
        params["model"] = await m.model_for(params.get("model"), task_class)
        materialize(params, "input", "tools")
        if reserve_input_tokens is None:
            given = params.get("input")
            content = [params.get(k) for k in ("input", "instructions", "tools", "tool_choice", "text", "prompt")]
            content.append(params.get("extra_body"))
            stored = any(params.get(k) for k in ("previous_response_id", "conversation", "prompt"))
            reserve_input_tokens = m.input_bound.tokens(
                content,
                messages=count(given) if isinstance(given, list | tuple) else 1,
                tools=count(params.get("tools")),
                server_tools=_hosted_tools(params.get("tools")),
                stored_context=stored,
                cache_write=True,
            )
        output = max_output(params.get("max_output_tokens"), default=m.default_max_output_tokens)
        hold = m.reserve(
            params["model"], reserve_input_tokens, output, m.tags_for(task_id, task_type, labels), reservation_id
        )
        responses = self._raw.responses
        if not stream:

            async def respond() -> Response:
                response: Response = await responses.create(stream=False, **params)
                return response

            return await m.call(hold, respond, lambda r: response_usage(r.usage))

        async def open_stream() -> AsyncStream[ResponseStreamEvent]:
            events: AsyncStream[ResponseStreamEvent] = await responses.create(stream=True, **params)
            return events

        return await m.stream(hold, open_stream, _ResponseTracker())


class MeteredOpenAI:
    """An ``AsyncOpenAI`` whose chat completions and responses are charged to ``budget``."""

    def __init__(self, openai_client: AsyncOpenAI, meter: Meter) -> None:
        self.unwrapped = openai_client
        self.meter = meter
        self.chat = Chat(meter, openai_client)
        self.responses = Responses(meter, openai_client)


def wrap(
    openai_client: AsyncOpenAI,
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
) -> MeteredOpenAI:
    """Meter ``openai_client`` against ``budget``. ``provider`` names the price list (another
    OpenAI-compatible endpoint: its genai-prices id, or "" to let the model name decide)."""
    meter = Meter(
        budget_client,
        budget,
        provider=provider,
        router=router,
        input_bound=input_bound,
        ttl=ttl,
        task_type=task_type,
        labels=labels,
        default_max_output_tokens=default_max_output_tokens,
    )
    return MeteredOpenAI(openai_client, meter)
