"""What the provider wrappers share: the input-token bound, usage as CostDetails, and the
reserve → call → commit / release cycle, for whole responses and for streams.

How input tokens are bounded (no tokenizer is needed, and none is offline-usable here):

* Every string a request sends as prompt text — message contents, the system prompt or
  instructions, tool names, descriptions and JSON schemas, structured-output schemas, tool
  results — is counted by its **UTF-8 bytes**, and so are the keys of those JSON objects. The
  providers' tokenizers are byte-level BPE: every token covers at least one byte, so the byte
  count is an upper bound of the text's tokens whatever the language or script (a
  "characters / 3" or "/ 4" rule is an average for English prose, not a bound: CJK, digits,
  code and base64 all tokenize denser). ``InputBound(bytes_per_token=3)`` trades the bound
  for tighter holds.
* Plus ``per_message`` tokens per message (role and separator tokens), ``per_request`` once
  (reply priming), ``per_media`` per image / audio / file part (its binary data is not
  counted as text), ``tools_overhead`` once when tools are given (the tool-use system prompt)
  and ``per_tool`` per tool (definitions the provider expands, such as computer use).
  Hosted / server tools that feed results back as input (web search, file search, fetch)
  add ``per_server_tool``; context stored at the provider (``previous_response_id``,
  ``conversation``, a stored ``prompt``) adds ``stored_context``.
* When the request may write the prompt cache, the bound is multiplied by
  ``cache_write_factor`` (cache writes are priced up to 1.25x plain input). Cache tokens are
  not given at Reserve: the estimate stays in ``input_tokens`` alone, which the real usage
  (every count of it, zeros included) replaces at Commit.

Output is bounded by the request's own maximum (``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens``, times ``n`` choices, plus predicted-output text, which is billed as
output when rejected); without one, ``default_max_output_tokens`` (32,768) is held.

What a bound can't see (a 300-page PDF, a search tool's results, a stored conversation) is
covered by an allowance, not a bound: pass ``reserve_input_tokens=`` to a call for an exact
hold. A cost above the hold is still charged in full — the authority records it as an overrun.

Settling: a call that raises (an HTTP error, a timeout, a cancellation) releases its hold; a
stream is committed when it ends and released when it raises, reports a failure without usage,
or is closed (or dropped) before its end. A response or a finished stream that reports no usage
at all is charged its hold's worst case — it was served, and its cost is unknown.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from ..client import BudgetClient, Hold
from ..errors import BudgetError
from ..v1 import budget_authority_pb2 as pb
from .router import Router

log = logging.getLogger("agentbudget.sdk")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)
R = TypeVar("R")
DEFAULT_MAX_OUTPUT_TOKENS = 32_768
# Content parts whose payload is binary (counted as media, not as text).
MEDIA_TYPES = frozenset(
    {"image", "image_url", "input_image", "input_audio", "audio", "file", "input_file", "document", "video"}
)
# Inside a media part: keys holding binary data or references (base64, data: URLs, file ids).
BINARY_KEYS = frozenset({"data", "url", "image_url", "file_data", "file_id", "file_url", "video_url"})


@dataclass(frozen=True)
class InputBound:
    """An upper bound of a request's input tokens, computed from its text (see the module doc)."""

    bytes_per_token: int = 1
    per_message: int = 8
    per_request: int = 16
    per_media: int = 5_000
    tools_overhead: int = 1_000
    per_tool: int = 1_000
    per_server_tool: int = 50_000
    stored_context: int = 128_000
    cache_write_factor: float = 1.25

    def __post_init__(self) -> None:
        if self.bytes_per_token < 1:
            raise ValueError("bytes_per_token must be at least 1")
        if self.cache_write_factor < 1:
            raise ValueError("cache_write_factor must be at least 1")

    def tokens(
        self,
        content: Iterable[Any],
        *,
        messages: int,
        tools: int = 0,
        server_tools: int = 0,
        stored_context: bool = False,
        cache_write: bool = False,
    ) -> int:
        """The bound for ``content`` (the request's text-bearing parameters) and these counts."""
        tally = _Tally()
        for value in content:
            tally.add(value)
        total = self.per_request + self.per_message * messages + self._text(tally) + self.per_media * tally.media
        if tools:
            total += self.tools_overhead + self.per_tool * tools
        total += self.per_server_tool * server_tools
        if stored_context:
            total += self.stored_context
        if cache_write:
            total = math.ceil(total * self.cache_write_factor)
        return total

    def text_tokens(self, value: Any) -> int:
        """The bound of ``value``'s text alone (no per-message or per-request overhead)."""
        tally = _Tally()
        tally.add(value)
        return self._text(tally) + self.per_media * tally.media

    def _text(self, tally: _Tally) -> int:
        return math.ceil(tally.bytes / self.bytes_per_token)


class _Tally:
    """UTF-8 bytes of the text in a JSON-like value, and how many media parts it holds."""

    def __init__(self) -> None:
        self.bytes = 0
        self.media = 0

    def add(self, value: Any, binary: bool = False) -> None:
        if value is None:
            return
        if isinstance(value, str):
            self.bytes += len(value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, bool | int | float):
            self.bytes += len(str(value))
        elif isinstance(value, Mapping):
            self._mapping(value, binary)
        elif isinstance(value, list | tuple):
            for item in value:
                self.add(item, binary)
        elif hasattr(value, "model_dump"):  # a pydantic model given as a parameter
            self.add(value.model_dump(exclude_none=True), binary)
        elif isinstance(value, bytes | bytearray):
            return  # raw bytes are media payloads (counted by their part)
        else:
            self.bytes += len(str(value).encode("utf-8", "surrogatepass"))

    def _mapping(self, value: Mapping[Any, Any], binary: bool) -> None:
        kind = value.get("type")
        if not binary and isinstance(kind, str) and kind in MEDIA_TYPES:
            self.media += 1
            binary = True
        text_source = kind == "text"  # e.g. a document whose source is plain text
        for key, item in value.items():
            if binary and not text_source and key in BINARY_KEYS and isinstance(item, str | bytes):
                continue
            self.bytes += len(str(key).encode("utf-8", "surrogatepass"))
            self.add(item, binary)


@dataclass(frozen=True)
class Usage:
    """Tokens as AgentBudget counts them: ``input_tokens`` includes the cache tokens."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def details(self) -> pb.CostDetails:
        # The model, provider and task fields carry over from the reserve.
        return pb.CostDetails(
            kind=pb.MODEL_INFERENCE,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


@dataclass(frozen=True)
class Tags:
    """What a call passes through to the ledger as CostDetails."""

    task_id: str = ""
    task_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


class StreamTracker(Protocol[T_contra]):
    def feed(self, item: T_contra) -> bool:
        """Take note of an item's usage; False hides the item from the caller."""
        ...

    def usage(self) -> Usage | None:
        """The final usage, once the stream has reported it."""
        ...

    def failed(self) -> bool:
        """The stream ended by reporting a failure (with no usage, it is then released)."""
        ...


class ProviderStream(Protocol[T_co]):
    def __anext__(self) -> Awaitable[T_co]: ...

    async def close(self) -> None: ...


_background: set[asyncio.Task[None]] = set()


async def _release_quietly(hold: Hold) -> None:
    """Release ``hold`` while another exception is in flight: shielded, and never raising."""
    if hold.ended is not None or hold.reservation is None:
        return
    try:
        await asyncio.shield(hold.release())
    except BudgetError as exc:
        log.warning("could not release hold %s: %s (it expires at its TTL)", hold.reservation_id, exc)


async def _finish(hold: Hold, usage: Usage | None) -> None:
    """Commit the usage; without any (the provider reported none), the hold's own worst case."""
    if usage is None:
        log.warning("no usage reported for hold %s: charging its worst case", hold.reservation_id)
    await hold.commit(details=usage.details() if usage is not None else None)


class MeteredStream(Generic[T]):
    """A provider stream whose hold is committed with the usage reported when the stream ends,
    and released when it fails or is closed before its end (``async with``, ``aclose()``, or the
    stream object is dropped: the release then runs as a background task)."""

    def __init__(self, stream: ProviderStream[T], hold: Hold, tracker: StreamTracker[T]) -> None:
        self._stream = stream
        self.hold = hold
        self._tracker = tracker
        self._settled = False

    @property
    def stream(self) -> ProviderStream[T]:
        """The provider's own stream object."""
        return self._stream

    def __aiter__(self) -> MeteredStream[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            try:
                item = await self._stream.__anext__()
            except StopAsyncIteration:
                await self._settle(complete=True)
                raise
            except BaseException:
                await self._settle(complete=False)
                raise
            if self._tracker.feed(item):
                return item

    async def _settle(self, complete: bool) -> None:
        if self._settled:
            return
        self._settled = True
        usage = self._tracker.usage()
        if complete and (usage is not None or not self._tracker.failed()):
            await _finish(self.hold, usage)
        else:
            await _release_quietly(self.hold)

    async def close(self) -> None:
        """Close the provider stream; a stream closed before its end releases its hold."""
        try:
            await self._stream.close()
        finally:
            await self._settle(complete=False)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> MeteredStream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if self._settled or self.hold.ended is not None:
            return
        self._settled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to release from: the hold expires at its TTL
        task = loop.create_task(self._abandon())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _abandon(self) -> None:
        try:
            await self._stream.close()
        except Exception as exc:
            log.debug("closing an abandoned stream: %s", exc)
        await _release_quietly(self.hold)


class Meter:
    """The budget side of a wrapped provider client: which budget, how to route and bound."""

    def __init__(
        self,
        client: BudgetClient,
        budget: str,
        *,
        provider: str,
        router: Router | None = None,
        input_bound: InputBound | None = None,
        default_max_output_tokens: int | None = None,
        ttl: timedelta | None = None,
        task_type: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.budget = budget
        self.provider = provider
        self.router = router if router is not None else Router(client, budget)
        self.input_bound = input_bound or InputBound()
        self.default_max_output_tokens = default_max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        self.ttl = ttl
        self.tags = Tags(task_type=task_type, labels=dict(labels or {}))

    async def model_for(self, model: str | None, task_class: str | None) -> str:
        """The request's model, or the one its task class routes to (never both)."""
        if task_class:
            if model:
                raise TypeError("give a model or a task_class, not both")
            return (await self.router.lookup(task_class)).model
        if not model:
            raise TypeError("a model (or a task_class) is required")
        return model

    def tags_for(self, task_id: str, task_type: str, labels: Mapping[str, str] | None) -> Tags:
        return Tags(
            task_id=task_id or self.tags.task_id,
            task_type=task_type or self.tags.task_type,
            labels={**self.tags.labels, **dict(labels or {})},
        )

    def reserve(
        self, model: str, input_tokens: int, output_tokens: int, tags: Tags, reservation_id: str | None
    ) -> Hold:
        details = pb.CostDetails(
            kind=pb.MODEL_INFERENCE,
            model=model,
            provider=self.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            task_id=tags.task_id,
            task_type=tags.task_type,
            labels=dict(tags.labels),
        )
        return self.client.reserve(self.budget, reservation_id=reservation_id, ttl=self.ttl, details=details)

    async def call(self, hold: Hold, invoke: Callable[[], Awaitable[R]], usage_of: Callable[[R], Usage | None]) -> R:
        """Reserve, make the call, commit its usage; release when the call fails."""
        await hold
        try:
            response = await invoke()
        except BaseException:
            await _release_quietly(hold)
            raise
        await _finish(hold, usage_of(response))
        return response

    async def stream(
        self, hold: Hold, invoke: Callable[[], Awaitable[ProviderStream[T]]], tracker: StreamTracker[T]
    ) -> MeteredStream[T]:
        """Reserve and open the stream; the returned stream commits or releases as it ends."""
        await hold
        try:
            stream = await invoke()
        except BaseException:
            await _release_quietly(hold)
            raise
        return MeteredStream(stream, hold, tracker)


def max_output(*values: Any, default: int) -> int:
    """The first maximum that is given (a positive int), else ``default``."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def materialize(params: dict[str, Any], *keys: str) -> None:
    """Turn iterables given for ``keys`` (a generator of messages, say) into lists, so that they
    can be both measured and sent."""
    for key in keys:
        value = params.get(key)
        if value is not None and not isinstance(value, str | bytes | Mapping | list | tuple):
            if isinstance(value, Iterable):
                params[key] = list(value)


def count(value: Any) -> int:
    """How many items a list parameter holds (0 when absent)."""
    return len(value) if isinstance(value, list | tuple) else 0


__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "InputBound",
    "Meter",
    "MeteredStream",
    "StreamTracker",
    "Tags",
    "Usage",
    "count",
    "materialize",
    "max_output",
]
