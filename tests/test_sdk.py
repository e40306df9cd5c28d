"""The agent SDK end to end: the real OpenAI and Anthropic clients against a local HTTP server that
answers in the providers' shapes, metered by a real authority; sandbox and API meters; routing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from agentbudget import client as ab
from agentbudget import errors, routing
from agentbudget.sdk import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    InputBound,
    Router,
    anthropic_wrapper,
    meter,
    openai_wrapper,
    parse_annotations,
)
from agentbudget.sdk.router import unquote
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import app
from aiohttp import web
from conftest import audit, ledger_rows, server_settings
from genai_prices import Usage, calc_price

B = "team/agent"
NANOS = 1_000_000_000


# --- a provider on 127.0.0.1 ------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON
    events: list[tuple[str | None, Any]] | None = None  # SSE: (event name, data: JSON or a raw string)
    headers: dict[str, str] = field(default_factory=dict)


class FakeProvider:
    """Answers each request with the next scripted reply; keeps the requests it was sent."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, await request.json()))
        assert self.replies, f"unexpected request to {request.path}"
        reply = self.replies.pop(0)
        if reply.events is None:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        resp = web.StreamResponse(status=reply.status, headers={"Content-Type": "text/event-stream", **reply.headers})
        await resp.prepare(request)
        for event, data in reply.events:
            text = data if isinstance(data, str) else json.dumps(data)
            await resp.write((f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode())
        await resp.write_eof()
        return resp

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    web_app = web.Application()
    web_app.router.add_post("/v1/chat/completions", fake.handle)
    web_app.router.add_post("/v1/responses", fake.handle)
    web_app.router.add_post("/v1/messages", fake.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


@pytest.fixture
async def budgets(authority: app.Authority) -> AsyncIterator[ab.BudgetClient]:
    async with ab.connect(f"127.0.0.1:{authority.port}") as c:
        await c.upsert_budget(B, "10", currency="USD")
        yield c


@pytest.fixture
async def oai(provider: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0) as c:
        yield c


@pytest.fixture
async def claude(provider: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=provider.anthropic_url, max_retries=0) as c:
        yield c


def wrap_openai(oai: openai.AsyncOpenAI, budgets: ab.BudgetClient, tmp_path: Path, **kw: Any) -> Any:
    return openai_wrapper.wrap(oai, budgets, B, router=Router(budgets, B, annotations_path=tmp_path / "none"), **kw)


def wrap_claude(claude: anthropic.AsyncAnthropic, budgets: ab.BudgetClient, tmp_path: Path, **kw: Any) -> Any:
    return anthropic_wrapper.wrap(
        claude, budgets, B, router=Router(budgets, B, annotations_path=tmp_path / "none"), **kw
    )


# --- expectations -----------------------------------------------------------------------------


def catalog_nanos(model: str, provider: str, **usage: int) -> int:
    """genai-prices' price of the usage, rounded up to the nano (as the authority charges)."""
    price = calc_price(Usage(**{k: v or None for k, v in usage.items()}), model_ref=model, provider_id=provider)
    return int((Decimal(price.total_price) * NANOS).to_integral_value(rounding=ROUND_CEILING))


async def entries(dsn: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await ledger_rows(dsn, B) if r["entry_type"] != "PERIOD_OPENED"]


def kinds(rows: list[dict[str, Any]]) -> list[str]:
    return [r["entry_type"] for r in rows]


async def settled(dsn: str, budgets: ab.BudgetClient) -> None:
    """Nothing held any more, and every balance matches its ledger."""
    assert ab.to_decimal((await budgets.get_budget(B)).held) == 0
    assert await audit(dsn) == []


def bytes_bound(*texts: str, messages: int, cache: bool) -> int:
    """The default InputBound spelled out: UTF-8 bytes of the text and keys, 16 per request,
    8 per message, x1.25 when the cache may be written."""
    raw = sum(len(t.encode()) for t in texts) + 16 + 8 * messages
    return -(-raw * 5 // 4) if cache else raw


# --- provider response bodies -----------------------------------------------------------------

OPENAI_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-haiku-4-5"
PROMPT = "Summarise the quarterly report in three bullet points. " * 20


def chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "- up\n- flat\n- down", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_1",
    }


def chat_chunk(content: str | None, usage: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": choices,
        "usage": usage,
    }


def chat_stream(usage: dict[str, Any]) -> list[tuple[str | None, Any]]:
    return [
        (None, chat_chunk("Hel")),
        (None, chat_chunk("lo")),
        (None, chat_chunk("", finish="stop")),
        (None, chat_chunk(None, usage)),
        (None, "[DONE]"),
    ]


def openai_error(status: int, message: str, kind: str) -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": kind, "param": None, "code": kind}})


def response_body(input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": "completed",
        "model": "gpt-4.1-2025-04-14",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Paris.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def claude_message(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE_MODEL,
        "content": [{"type": "text", "text": "Three bullets."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def claude_stream(input_tokens: int, output_tokens: int, *, error: bool = False) -> list[tuple[str | None, Any]]:
    start = claude_message({"input_tokens": input_tokens, "output_tokens": 1}) | {"content": [], "stop_reason": None}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
    ]
    if error:
        return [*events, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    return [
        *events,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def claude_error(status: int, kind: str, message: str) -> Reply:
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": message}})


# --- OpenAI -----------------------------------------------------------------------------------


async def test_openai_chat_holds_the_bound_and_commits_the_reported_usage(provider, budgets, oai, dsn, tmp_path):
    provider.replies.append(Reply(body=chat_completion(chat_usage(500, 150, cached=256, reasoning=64))))
    llm = wrap_openai(oai, budgets, tmp_path, task_type="reporting", labels={"team": "finance"})
    reply = await llm.chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_completion_tokens=400,
        task_id="t-1",
        labels={"step": "summary"},
    )
    assert reply.choices[0].message.content == "- up\n- flat\n- down"
    assert provider.requests[0][1]["model"] == OPENAI_MODEL and provider.requests[0][1]["max_completion_tokens"] == 400

    hold, commit = await entries(dsn)
    assert (hold["entry_type"], commit["entry_type"]) == ("HOLD", "COMMIT")
    bound = bytes_bound("role", "user", "content", PROMPT, messages=1, cache=True)
    assert (hold["input_tokens"], hold["output_tokens"], hold["model"]) == (bound, 400, OPENAI_MODEL)
    assert hold["held_delta"] == catalog_nanos(OPENAI_MODEL, "openai", input_tokens=bound, output_tokens=400)
    assert commit["held_delta"] == -hold["held_delta"]
    charged = catalog_nanos(OPENAI_MODEL, "openai", input_tokens=500, output_tokens=150, cache_read_tokens=256)
    assert commit["spent_delta"] == charged and not commit["overrun"]
    assert (commit["input_tokens"], commit["output_tokens"], commit["cache_read_tokens"]) == (500, 150, 256)
    assert commit["reasoning_tokens"] == 64 and commit["catalog_version"].startswith("genai-prices")
    assert (commit["task_id"], commit["task_type"]) == ("t-1", "reporting")
    assert json.loads(commit["labels"]) == {"team": "finance", "step": "summary"}
    await settled(dsn, budgets)


@pytest.mark.parametrize("caller_wants_usage", [False, True])
async def test_openai_stream_is_committed_from_its_final_usage_chunk(
    provider, budgets, oai, dsn, tmp_path, caller_wants_usage
):
    provider.replies.append(Reply(events=chat_stream(chat_usage(40, 12))))
    llm = wrap_openai(oai, budgets, tmp_path)
    extra = {"stream_options": {"include_usage": True}} if caller_wants_usage else {}
    stream = await llm.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=50, stream=True, **extra
    )
    assert kinds(await entries(dsn)) == ["HOLD"]  # held while the stream runs
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert provider.requests[0][1]["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert len(chunks) == (4 if caller_wants_usage else 3)  # the usage chunk only when asked for
    hold, commit = await entries(dsn)
    assert hold["output_tokens"] == 50 and commit["entry_type"] == "COMMIT"
    assert commit["spent_delta"] == catalog_nanos(OPENAI_MODEL, "openai", input_tokens=40, output_tokens=12)
    await settled(dsn, budgets)


@pytest.mark.parametrize(
    ("reply", "exc"),
    [
        (openai_error(429, "Rate limit reached for gpt-4o-mini", "rate_limit_exceeded"), openai.RateLimitError),
        (openai_error(500, "The server had an error", "server_error"), openai.InternalServerError),
    ],
)
async def test_an_openai_error_releases_the_hold(provider, budgets, oai, dsn, tmp_path, reply, exc):
    provider.replies.append(reply)
    llm = wrap_openai(oai, budgets, tmp_path)
    with pytest.raises(exc):
        await llm.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "Hi"}])
    hold, release = await entries(dsn)
    assert (hold["entry_type"], release["entry_type"]) == ("HOLD", "RELEASE")
    assert hold["output_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS  # no maximum given
    assert release["held_delta"] == -hold["held_delta"] and release["spent_delta"] == 0
    await settled(dsn, budgets)


async def test_the_clients_own_retries_stay_within_one_hold(provider, budgets, dsn, tmp_path):
    retry_now = {"retry-after-ms": "10"}
    provider.replies += [
        Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}}, headers=retry_now),
        Reply(body=chat_completion(chat_usage(30, 5))),
    ]
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=2) as oai:
        llm = wrap_openai(oai, budgets, tmp_path)
        await llm.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=9
        )
    assert len(provider.requests) == 2
    rows = await entries(dsn)
    assert kinds(rows) == ["HOLD", "COMMIT"]
    assert rows[1]["spent_delta"] == catalog_nanos(OPENAI_MODEL, "openai", input_tokens=30, output_tokens=5)
    await settled(dsn, budgets)


async def test_a_stream_that_fails_midway_releases_the_hold(provider, budgets, oai, dsn, tmp_path):
    failing = [(None, chat_chunk("Hel")), (None, {"error": {"message": "overloaded", "type": "server_error"}})]
    provider.replies.append(Reply(events=failing))
    llm = wrap_openai(oai, budgets, tmp_path)
    stream = await llm.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=50, stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="overloaded"):
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 1
    assert kinds(await entries(dsn)) == ["HOLD", "RELEASE"]
    await settled(dsn, budgets)


async def test_an_abandoned_stream_releases_the_hold(provider, budgets, oai, dsn, tmp_path):
    provider.replies += [Reply(events=chat_stream(chat_usage(40, 12))), Reply(events=chat_stream(chat_usage(40, 12)))]
    llm = wrap_openai(oai, budgets, tmp_path)
    messages = [{"role": "user", "content": "Hi"}]
    async with await llm.chat.completions.create(model=OPENAI_MODEL, messages=messages, stream=True) as stream:
        async for _ in stream:
            break  # the agent has seen enough
    assert kinds(await entries(dsn)) == ["HOLD", "RELEASE"]
    # dropped without closing: the release runs in the background
    stream = await llm.chat.completions.create(model=OPENAI_MODEL, messages=messages, stream=True)
    await stream.__anext__()
    del stream
    for _ in range(100):
        if kinds(await entries(dsn)) == ["HOLD", "RELEASE", "HOLD", "RELEASE"]:
            break
        await asyncio.sleep(0.05)
    assert kinds(await entries(dsn)) == ["HOLD", "RELEASE", "HOLD", "RELEASE"]
    await settled(dsn, budgets)


async def test_the_responses_api_is_metered_whole_and_streamed(provider, budgets, oai, dsn, tmp_path):
    model = "gpt-4.1"
    done = response_body(300, 80, cached=100, reasoning=16)
    created = {**done, "status": "in_progress", "output": [], "usage": None}
    provider.replies += [
        Reply(body=done),
        Reply(
            events=[
                ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": 1,
                        "item_id": "msg_1",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": "Paris.",
                        "logprobs": [],
                    },
                ),
                ("response.completed", {"type": "response.completed", "sequence_number": 2, "response": done}),
            ]
        ),
    ]
    llm = wrap_openai(oai, budgets, tmp_path)
    answer = await llm.responses.create(
        model=model, instructions="Be brief.", input="Capital of France?", max_output_tokens=100
    )
    assert answer.output_text == "Paris."
    async with await llm.responses.create(model=model, input="Capital of France?", stream=True) as stream:
        events = [e.type async for e in stream]
    assert events == ["response.created", "response.output_text.delta", "response.completed"]

    rows = await entries(dsn)
    assert kinds(rows) == ["HOLD", "COMMIT", "HOLD", "COMMIT"]
    bound = bytes_bound("Be brief.", "Capital of France?", messages=1, cache=True)
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (bound, 100)
    assert rows[2]["output_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS
    charged = catalog_nanos(model, "openai", input_tokens=300, output_tokens=80, cache_read_tokens=100)
    assert rows[1]["spent_delta"] == rows[3]["spent_delta"] == charged
    assert rows[1]["reasoning_tokens"] == 16
    await settled(dsn, budgets)


async def test_streams_without_usage_are_charged_the_hold_or_released_when_failed(
    provider, budgets, oai, dsn, tmp_path
):
    no_usage = [(None, chat_chunk("Hi", finish="stop")), (None, "[DONE]")]  # a server ignoring include_usage
    failed = {
        **response_body(0, 0),
        "status": "failed",
        "usage": None,
        "error": {"code": "server_error", "message": "x"},
    }
    provider.replies += [
        Reply(events=no_usage),
        Reply(events=[("response.failed", {"type": "response.failed", "sequence_number": 0, "response": failed})]),
    ]
    llm = wrap_openai(oai, budgets, tmp_path)
    messages = ({"role": "user", "content": c} for c in ("Hi", "there"))  # a generator: measured, then sent
    async with await llm.chat.completions.create(model=OPENAI_MODEL, messages=messages, stream=True) as stream:
        assert [c.choices[0].delta.content async for c in stream] == ["Hi"]
    assert [m["content"] for m in provider.requests[0][1]["messages"]] == ["Hi", "there"]
    async with await llm.responses.create(model="gpt-4.1", input="Hi", stream=True) as events:
        assert [e.type async for e in events] == ["response.failed"]
    rows = await entries(dsn)
    assert kinds(rows) == ["HOLD", "COMMIT", "HOLD", "RELEASE"]
    assert rows[0]["input_tokens"] == bytes_bound(
        "role", "user", "content", "Hi", "role", "user", "content", "there", messages=2, cache=True
    )
    assert rows[1]["spent_delta"] == rows[0]["held_delta"]  # the worst case: served, at an unknown cost
    await settled(dsn, budgets)


async def test_a_denied_hold_makes_no_provider_call(provider, budgets, oai, dsn, tmp_path):
    await budgets.upsert_budget(B, "0.000001")
    llm = wrap_openai(oai, budgets, tmp_path)
    with pytest.raises(errors.BudgetExceededError):
        await llm.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert provider.requests == [] and kinds(await entries(dsn)) == ["LIMIT_CHANGED"]  # no HOLD
    await settled(dsn, budgets)


async def test_a_task_class_routes_the_model_by_the_budgets_routing(provider, budgets, oai, dsn, tmp_path):
    spec = pb.BudgetSpec(limit=ab.money("10"), routing=pb.Routing(tiers={"cheap": OPENAI_MODEL}))
    await budgets.call(budgets.stub.UpsertBudget, pb.UpsertBudgetRequest(name=B, spec=spec))
    provider.replies.append(Reply(body=chat_completion(chat_usage(20, 4))))
    llm = wrap_openai(oai, budgets, tmp_path)
    await llm.chat.completions.create(task_class="lookup", messages=[{"role": "user", "content": "2+2?"}], max_tokens=5)
    assert provider.requests[0][1]["model"] == OPENAI_MODEL
    hold, commit = await entries(dsn)
    assert hold["model"] == commit["model"] == OPENAI_MODEL
    assert commit["spent_delta"] == catalog_nanos(OPENAI_MODEL, "openai", input_tokens=20, output_tokens=4)
    with pytest.raises(TypeError, match="not both"):
        await llm.chat.completions.create(model=OPENAI_MODEL, task_class="lookup", messages=[])
    with pytest.raises(errors.InvalidRequestError) as unknown:
        await llm.chat.completions.create(task_class="gardening", messages=[])
    assert unknown.value.reason == "UNKNOWN_TASK_CLASS"
    await settled(dsn, budgets)


# --- Anthropic --------------------------------------------------------------------------------


async def test_anthropic_message_commits_input_with_its_cache_tokens(provider, budgets, claude, dsn, tmp_path):
    usage = {
        "input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 500,
        "output_tokens": 250,
    }
    provider.replies.append(Reply(body=claude_message(usage)))
    llm = wrap_claude(claude, budgets, tmp_path, task_type="analysis")
    system = [{"type": "text", "text": PROMPT, "cache_control": {"type": "ephemeral"}}]
    reply = await llm.messages.create(
        model=CLAUDE_MODEL, max_tokens=1024, system=system, messages=[{"role": "user", "content": "Go"}], task_id="t-9"
    )
    assert reply.content[0].text == "Three bullets."  # type: ignore[union-attr]
    hold, commit = await entries(dsn)
    texts = ("type", "text", "text", PROMPT, "cache_control", "type", "ephemeral", "role", "user", "content", "Go")
    bound = bytes_bound(*texts, messages=2, cache=True)  # the system prompt counts as a message
    assert (hold["input_tokens"], hold["output_tokens"], hold["model"]) == (bound, 1024, CLAUDE_MODEL)
    assert hold["held_delta"] == catalog_nanos(CLAUDE_MODEL, "anthropic", input_tokens=bound, output_tokens=1024)
    assert (commit["input_tokens"], commit["cache_read_tokens"], commit["cache_write_tokens"]) == (2600, 2000, 500)
    charged = catalog_nanos(
        CLAUDE_MODEL, "anthropic", input_tokens=2600, output_tokens=250, cache_read_tokens=2000, cache_write_tokens=500
    )
    assert commit["spent_delta"] == charged and commit["held_delta"] == -hold["held_delta"]
    assert (commit["task_id"], commit["task_type"]) == ("t-9", "analysis")
    await settled(dsn, budgets)


async def test_anthropic_stream_is_committed_from_message_start_and_delta(provider, budgets, claude, dsn, tmp_path):
    provider.replies.append(Reply(events=claude_stream(input_tokens=50, output_tokens=180)))
    llm = wrap_claude(claude, budgets, tmp_path)
    messages = [{"role": "user", "content": "你好，请介绍一下你自己。"}]  # multi-byte text: 3 bytes a character
    async with await llm.messages.create(model=CLAUDE_MODEL, max_tokens=300, messages=messages, stream=True) as s:
        types = [event.type async for event in s]
    assert types[0] == "message_start" and types[-1] == "message_stop" and "ping" not in types
    hold, commit = await entries(dsn)
    assert hold["input_tokens"] == bytes_bound(
        "role", "user", "content", messages[0]["content"], messages=1, cache=False
    )
    assert hold["output_tokens"] == 300 and commit["entry_type"] == "COMMIT"
    assert (commit["input_tokens"], commit["output_tokens"]) == (50, 180)
    assert commit["spent_delta"] == catalog_nanos(CLAUDE_MODEL, "anthropic", input_tokens=50, output_tokens=180)
    await settled(dsn, budgets)


@pytest.mark.parametrize(
    ("reply", "exc"),
    [
        (claude_error(529, "overloaded_error", "Overloaded"), anthropic.APIStatusError),
        (
            claude_error(429, "rate_limit_error", "Number of request tokens has exceeded your limit"),
            anthropic.RateLimitError,
        ),
        (claude_error(500, "api_error", "Internal server error"), anthropic.InternalServerError),
    ],
)
async def test_an_anthropic_error_releases_the_hold(provider, budgets, claude, dsn, tmp_path, reply, exc):
    provider.replies.append(reply)
    llm = wrap_claude(claude, budgets, tmp_path)
    with pytest.raises(exc):
        await llm.messages.create(model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert kinds(await entries(dsn)) == ["HOLD", "RELEASE"]
    await settled(dsn, budgets)


async def test_an_anthropic_stream_error_event_releases_the_hold(provider, budgets, claude, dsn, tmp_path):
    provider.replies.append(Reply(events=claude_stream(input_tokens=50, output_tokens=180, error=True)))
    llm = wrap_claude(claude, budgets, tmp_path)
    stream = await llm.messages.create(
        model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async for _ in stream:
            pass
    assert kinds(await entries(dsn)) == ["HOLD", "RELEASE"]
    await settled(dsn, budgets)


# --- sandbox and API meters -------------------------------------------------------------------


@pytest.fixture
async def priced(dsn: str, tmp_path: Path) -> AsyncIterator[ab.BudgetClient]:
    config = tmp_path / "prices.yaml"
    config.write_text('sandboxes:\n  small: {per_second: "0.0001"}\napis:\n  stripe: {per_call: "0.01"}\n')
    authority = await app.start(server_settings(price_config=str(config)), dsn)
    try:
        async with ab.connect(f"127.0.0.1:{authority.port}") as c:
            await c.upsert_budget(B, "10")
            yield c
    finally:
        await authority.stop(grace=0.5)


def per_second_nanos(nanos: int) -> int:
    return int((Decimal("0.0001") * Decimal(nanos) / NANOS * NANOS).to_integral_value(rounding=ROUND_CEILING))


async def test_a_sandbox_session_holds_its_maximum_and_commits_the_measured_seconds(priced, dsn):
    async with meter.sandbox(priced, B, "small", max_seconds=30, task_id="t-3") as session:
        await asyncio.sleep(0.05)
        assert session.elapsed >= 0.05
    with pytest.raises(RuntimeError, match="tests failed"):
        async with meter.sandbox(priced, B, "small", max_seconds=30):
            await asyncio.sleep(0.01)
            raise RuntimeError("tests failed")  # the sandbox ran all the same: its time is charged
    async with meter.sandbox(priced, B, "small", max_seconds=30) as session:
        session.bill(12.5)  # the sandbox provider's own figure
    rows = await entries(dsn)
    assert kinds(rows) == ["HOLD", "COMMIT"] * 3
    for hold, commit in zip(rows[::2], rows[1::2], strict=True):
        assert hold["held_delta"] == 3_000_000 and hold["sandbox_nanos"] == 30 * NANOS  # 30 s x 0.0001
        assert commit["spent_delta"] == per_second_nanos(commit["sandbox_nanos"])
    assert 0.05 * NANOS <= rows[1]["sandbox_nanos"] < 10 * NANOS and rows[1]["task_id"] == "t-3"
    assert 0.01 * NANOS <= rows[3]["sandbox_nanos"] < 10 * NANOS
    assert rows[5]["sandbox_nanos"] == 12.5 * NANOS and rows[5]["spent_delta"] == 1_250_000
    await settled(dsn, priced)


async def test_api_calls_commit_what_was_made_and_release_on_failure(priced, dsn):
    async with meter.api_call(priced, B, "stripe", calls=3) as call:
        call.calls = 2  # one was not needed
    with pytest.raises(ConnectionError):
        async with meter.api_call(priced, B, "stripe"):
            raise ConnectionError("stripe unreachable")
    async with meter.api_call(priced, B, "stripe") as call:
        call.calls = 0  # nothing was made after all
    with pytest.raises(errors.InvalidRequestError) as unknown:
        async with meter.api_call(priced, B, "twilio"):
            pass
    assert unknown.value.reason == "UNKNOWN_API"
    rows = await entries(dsn)
    assert kinds(rows) == ["HOLD", "COMMIT", "HOLD", "RELEASE", "HOLD", "RELEASE"]
    assert rows[0]["held_delta"] == 30_000_000 and rows[1]["spent_delta"] == 20_000_000
    assert rows[1]["api_calls"] == 2 and rows[2]["held_delta"] == 10_000_000
    await settled(dsn, priced)


# --- routing lookup ---------------------------------------------------------------------------


def downward_api_file(path: Path, annotations: dict[str, str]) -> None:
    """What the kubelet writes: sorted ``key="value"`` lines, values quoted as Go's %q (for the
    printable text here, the same as JSON's escaping)."""
    path.write_text("\n".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(annotations.items())))


async def test_routing_from_the_pods_annotations_file(tmp_path):
    path = tmp_path / "annotations"
    annotations = routing.pod_annotations({"tiers": {"cheap": "gpt-4.1-nano"}, "taskClasses": {"triage": "cheap"}})
    downward_api_file(path, {**annotations, "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"})
    router = Router(annotations_path=path)  # no authority: the file must answer
    route = await router.lookup("triage")
    assert (route.tier, route.model, route.source) == ("cheap", "gpt-4.1-nano", "annotations")
    assert (await router.lookup("research")).model == routing.DEFAULT_MODELS["premium"]
    with pytest.raises(errors.InvalidRequestError) as unknown:
        await router.lookup("gardening")
    assert unknown.value.reason == "UNKNOWN_TASK_CLASS" and unknown.value.field == "task_class"
    # the operator changes the routing; the kubelet rewrites the file
    downward_api_file(path, routing.pod_annotations({"tiers": {"cheap": "claude-haiku-4-5"}}))
    assert (await router.lookup("lookup")).model == "claude-haiku-4-5"
    path.unlink()
    with pytest.raises(LookupError):
        await router.lookup("lookup")  # no file and no authority


async def test_routing_falls_back_to_the_route_rpc(budgets, tmp_path):
    spec = pb.BudgetSpec(limit=ab.money("10"), routing=pb.Routing(task_classes={"triage": "mid"}))
    await budgets.call(budgets.stub.UpsertBudget, pb.UpsertBudgetRequest(name=B, spec=spec))
    path = tmp_path / "annotations"
    downward_api_file(path, {"app.kubernetes.io/name": "agent"})  # a file, but no routing in it
    router = Router(budgets, B, annotations_path=path)
    route = await router.lookup("triage")
    assert (route.tier, route.model, route.source) == ("mid", routing.DEFAULT_MODELS["mid"], "authority")
    with pytest.raises(errors.InvalidRequestError) as unknown:
        await router.lookup("gardening")
    assert unknown.value.reason == "UNKNOWN_TASK_CLASS"
    path.write_text("not an annotations file")  # malformed: logged, and the authority answers
    assert (await Router(budgets, B, annotations_path=path).lookup("triage")).source == "authority"


def test_annotation_values_are_unquoted_as_go_quotes_them():
    assert unquote(r'"a\"b\\c\n\t"') == 'a"b\\c\n\t'
    assert unquote(r'"\x07\a\v\u00e9\U0001F600é"') == "\x07\x07\x0bé😀é"
    assert unquote(r'"\ud83d\ude00"') == "😀"  # JSON's surrogate pairs too
    text = 'agentbudget.io/routing="{\\"tiers\\":{}}"\nother="x=y"\n'
    assert parse_annotations(text) == {"agentbudget.io/routing": '{"tiers":{}}', "other": "x=y"}


# --- the input bound --------------------------------------------------------------------------


def test_the_input_bound_counts_bytes_and_media_parts_not_their_data():
    bound = InputBound()
    cjk = [{"role": "user", "content": "预算" * 100}]  # 600 UTF-8 bytes
    assert bound.tokens([cjk], messages=1) == 16 + 8 + len("rolecontentuser") + 600
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    with_image = [{"role": "user", "content": [image]}]
    tokens = bound.tokens([with_image], messages=1)
    assert bound.per_media < tokens < bound.per_media + 200  # the base64 is not text
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x" * 1000}}
    assert bound.tokens([[doc]], messages=1) > bound.per_media + 1000  # a text document's text is
    assert InputBound(bytes_per_token=4).tokens(["x" * 400], messages=0) == 16 + 100
    assert bound.tokens(["x" * 100], messages=0, cache_write=True) == -(-(16 + 100) * 5 // 4)
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    assert bound.tokens([tools], messages=0, tools=1) > bound.tools_overhead + bound.per_tool
