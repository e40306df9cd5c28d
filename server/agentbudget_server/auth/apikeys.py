"""API keys: random secrets known to the server only by their SHA-256 digest.

A key is ``abk_`` and 32 random bytes (URL-safe base64). The keys file lists one entry per key:

    keys:
      - principal: apikey:finance       # or just "finance"
        role: viewer
        scope: ["*"]
        sha256: 3f2c...                  # hex digest of the key

``agentbudget apikey create`` makes a key, prints it once and the entry to add. The server never
holds a key in clear beyond hashing the one presented, and never logs one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from .. import validate
from ..errors import InvalidField
from ..principal import Principal
from . import files

PREFIX = "abk_"
PRINCIPAL_PREFIX = "apikey:"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def principal_name(name: str) -> str:
    """``apikey:<name>``: a name a budget can list among its agent principals."""
    name = name.strip()
    full = name if name.startswith(PRINCIPAL_PREFIX) else PRINCIPAL_PREFIX + name
    try:
        validate.principals([full], "principal")
    except InvalidField as exc:
        raise ValueError(f"{name!r} is not a usable key name (letters, digits and . _ @ / -)") from exc
    return full


@dataclass(frozen=True)
class ApiKey:
    principal: Principal
    sha256: bytes


class ApiKeys:
    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None. Every digest is compared, in constant time, so the
        time taken says nothing about which (or how much of a) digest matched."""
        presented = digest(key)
        found: Principal | None = None
        for entry in self.keys:
            if hmac.compare_digest(presented, entry.sha256):
                found = entry.principal
        return found


def parse(data: object, where: str = "api keys") -> ApiKeys:
    items = data.get("keys") if isinstance(data, dict) else data
    if data is None or items is None:
        return ApiKeys()
    if not isinstance(items, list):
        raise ValueError(f"{where}: a list of keys (or a mapping with 'keys:')")
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        at = f"{where}: key {i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: each key is {{principal, role, scope, sha256}}")
        unknown = set(item) - {"principal", "role", "scope", "sha256"}
        if unknown:
            raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        name, hexdigest = item.get("principal"), str(item.get("sha256", "")).strip().lower()
        if not isinstance(name, str) or not name.strip() or name.strip() == PRINCIPAL_PREFIX:
            raise ValueError(f"{at}: principal is required")
        if not _HEX.match(hexdigest):
            raise ValueError(f"{at}: sha256 must be the key's SHA-256 as 64 hex digits")
        if hexdigest in seen:
            raise ValueError(f"{at}: the same key is listed twice")
        seen.add(hexdigest)
        role, scope = files.role(item.get("role"), at), files.scope(item.get("scope"), at)
        try:
            principal = Principal(principal_name(name), role, scope)
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from None
        keys.append(ApiKey(principal, bytes.fromhex(hexdigest)))
    return ApiKeys(keys)


def load(path: str) -> ApiKeys:
    return parse(files.read_document(path), path) if path else ApiKeys()


def entry(name: str, role: str, scope: Sequence[str], key: str) -> dict[str, object]:
    """The keys-file entry of a new key (its digest, never the key)."""
    at = f"key {name!r}"
    return {
        "principal": principal_name(name),
        "role": files.role(role, at),
        "scope": list(files.scope(list(scope), at)),
        "sha256": digest(key).hex(),
    }


def render_entry(item: dict[str, object]) -> str:
    """As a list item to paste under ``keys:``."""
    text: str = yaml.safe_dump([item], sort_keys=False, default_flow_style=None)
    return text
