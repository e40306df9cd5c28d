"""Model routing for agents: a task class's tier and model, from the pod's own annotations when
the operator has written them (a downward API volume), else from the authority's ``Route`` RPC.

The operator writes the resolved table onto the pod template as the annotation
``agentbudget.io/routing``; mount it with::

    volumes:
      - name: podinfo
        downwardAPI:
          items:
            - path: annotations
              fieldRef: {fieldPath: metadata.annotations}
    # in the container:
    volumeMounts: [{name: podinfo, mountPath: /etc/podinfo}]

The kubelet writes one ``key="value"`` line per annotation, the value quoted as Go's ``%q``
does (JSON-like escapes, plus ``\\a``, ``\\v``, ``\\xNN`` and ``\\UNNNNNNNN``), and rewrites the
file when annotations change — the router rereads it when it changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from .. import routing
from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from ..client import BudgetClient

log = logging.getLogger("agentbudget.sdk")
DEFAULT_ANNOTATIONS_PATH = "/etc/podinfo/annotations"
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "'": 39, "/": 47}
_HEX_LENGTHS = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True)
class Route:
    task_class: str
    tier: str
    model: str
    source: str  # "annotations" (the pod's file) or "authority" (the Route RPC)


def unquote(quoted: str) -> str:
    """The value of a Go ``%q`` (or JSON) double-quoted string, quotes included."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError(f"not a quoted string: {quoted[:40]!r}")
    body, out, i = quoted[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("a trailing backslash")
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc in _HEX_LENGTHS:
            n = _HEX_LENGTHS[esc]
            digits = body[i + 2 : i + 2 + n]
            if len(digits) != n:
                raise ValueError(f"a short \\{esc} escape")
            code, i = int(digits, 16), i + 2 + n
            if esc == "x":  # one byte (Go quotes invalid UTF-8 so); \u and \U are code points
                out.append(code)
                continue
            if esc == "u" and 0xD800 <= code < 0xDC00 and body.startswith("\\u", i):  # a JSON surrogate pair
                code = 0x10000 + ((code - 0xD800) << 10) + (int(body[i + 2 : i + 6], 16) - 0xDC00)
                i += 6
            out += chr(code).encode("utf-8", "surrogatepass")
        elif esc in "01234567":
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return out.decode("utf-8", "replace")


def parse_annotations(text: str) -> dict[str, str]:
    """The annotations of a downward API file: ``key="value"`` per line."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        key, sep, quoted = line.partition("=")
        if not sep:
            raise ValueError(f'not a key="value" line: {line[:80]!r}')
        out[key] = unquote(quoted)
    return out


def table_of(annotations: dict[str, str]) -> dict[str, dict[str, str]] | None:
    """The routing table in a pod's annotations, or None when it has none."""
    raw = annotations.get(routing.ANNOTATION)
    if raw is None:
        return None
    data: Any = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), dict):
        raise ValueError(f"{routing.ANNOTATION}: not a routing table")
    if not isinstance(data.get("taskClasses"), dict):
        raise ValueError(f"{routing.ANNOTATION}: not a routing table")
    return {"tiers": dict(data["tiers"]), "taskClasses": dict(data["taskClasses"])}


def unknown_task_class(task_class: str, table: dict[str, dict[str, str]]) -> InvalidRequestError:
    """The error the authority answers for an unknown task class (the same reason and field)."""
    known = ", ".join(sorted(table["taskClasses"]))
    return InvalidRequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_TASK_CLASS",
        f"unknown task class {task_class!r} (known: {known})",
        {"field": "task_class"},
    )


class Router:
    """Task class → (tier, model): the annotations file when it holds a routing table, else the
    authority's ``Route`` RPC for ``budget`` (answers cached for ``cache_seconds``)."""

    def __init__(
        self,
        client: BudgetClient | None = None,
        budget: str = "",
        *,
        annotations_path: str | os.PathLike[str] | None = DEFAULT_ANNOTATIONS_PATH,
        cache_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.budget = budget
        self.annotations_path = Path(annotations_path) if annotations_path is not None else None
        self.cache_seconds = cache_seconds
        self._file_key: tuple[int, int, int] | None = None
        self._file_table: dict[str, dict[str, str]] | None = None
        self._answers: dict[str, tuple[float, Route]] = {}

    async def lookup(self, task_class: str) -> Route:
        table = await asyncio.to_thread(self._table_from_file)
        if table is not None:
            try:
                tier, model = routing.route(table, task_class)
            except KeyError:
                raise unknown_task_class(task_class, table) from None
            return Route(task_class, tier, model, "annotations")
        return await self._from_authority(task_class)

    def _table_from_file(self) -> dict[str, dict[str, str]] | None:
        """The file's table, reread only when the file changed (the kubelet swaps it atomically)."""
        if self.annotations_path is None:
            return None
        try:
            st = self.annotations_path.stat()
        except OSError:
            self._file_key, self._file_table = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._file_key:
            try:
                table = table_of(parse_annotations(self.annotations_path.read_text("utf-8")))
            except (OSError, ValueError) as exc:  # a malformed file must not stop the agent
                log.warning("%s: %s; routing by the authority", self.annotations_path, exc)
                table = None
            self._file_key, self._file_table = key, table
        return self._file_table

    async def _from_authority(self, task_class: str) -> Route:
        if self.client is None or not self.budget:
            raise LookupError(f"no routing table in {self.annotations_path} and no authority to ask")
        now = time.monotonic()
        cached = self._answers.get(task_class)
        if cached is not None and cached[0] > now:
            return cached[1]
        resp = await self.client.route(self.budget, task_class)
        answer = Route(task_class, resp.tier, resp.model, "authority")
        if self.cache_seconds > 0:
            self._answers[task_class] = (now + self.cache_seconds, answer)
        return answer
