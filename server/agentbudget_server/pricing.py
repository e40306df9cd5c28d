"""The price catalog: model prices from genai-prices, overridden or extended by a configuration
file, plus sandbox classes (per second) and external APIs (per call).

Every cost is exact (Decimal) and rounded up to the nano. A model, sandbox class or API with no
price is an error — never a charge of zero.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml
from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot

from .errors import InvalidField
from .model import Details
from .money import NANOS_PER_UNIT, ceil_nanos

MILLION = Decimal(1_000_000)
CURRENCY = "USD"  # genai-prices and the configuration price in US dollars


@dataclass(frozen=True)
class ModelPrice:
    """Per million tokens, in USD."""

    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None

    def cost(self, d: Details) -> Decimal:
        cache_read, cache_write = d.cache_read_tokens or 0, d.cache_write_tokens or 0
        plain = max(0, (d.input_tokens or 0) - cache_read - cache_write)  # input counts cache tokens too
        total = plain * self.input_mtok + (d.output_tokens or 0) * self.output_mtok
        total += cache_read * (self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok)
        total += cache_write * (self.cache_write_mtok if self.cache_write_mtok is not None else self.input_mtok)
        return total / MILLION


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelPrice] = field(default_factory=dict)
    sandboxes: dict[str, Decimal] = field(default_factory=dict)  # per second
    apis: dict[str, Decimal] = field(default_factory=dict)  # per call
    source: str = ""  # digest of the configuration, part of the version

    @cached_property
    def version(self) -> str:
        base = f"genai-prices {importlib.metadata.version('genai-prices')}"
        return f"{base}+config:{self.source}" if self.source else base

    def model_cost(self, d: Details) -> int:
        model = d.model or ""
        if not model:
            raise InvalidField("details.model", "required to price model inference", reason="UNKNOWN_MODEL")
        if model in self.models:
            return ceil_nanos(self.models[model].cost(d))
        try:
            linear = _linear_prices(model, d.provider or None, int(time.time()) // 3600)
        except LookupError:
            raise InvalidField(
                "details.model", f"no price is known for model {model!r}", reason="UNKNOWN_MODEL"
            ) from None
        if linear is not None and (linear.cache_read_mtok is not None or not d.cache_read_tokens):
            if linear.cache_write_mtok is not None or not d.cache_write_tokens:
                cost = linear.cost(d)
                if cost == 0 and (d.input_tokens or d.output_tokens):
                    raise InvalidField(
                        "details.model",
                        f"model {model!r} has no price per token in the catalog",
                        reason="UNKNOWN_MODEL",
                    )
                return ceil_nanos(cost)
        usage = Usage(
            input_tokens=d.input_tokens or 0,
            output_tokens=d.output_tokens or 0,
            cache_read_tokens=d.cache_read_tokens or None,
            cache_write_tokens=d.cache_write_tokens or None,
        )
        try:
            provider, info = _find_model(model, d.provider or None)
            price = info.calc_price(
                usage, provider, genai_request_timestamp=datetime.now(UTC), auto_update_timestamp=None
            )
        except LookupError:
            raise InvalidField(
                "details.model", f"no price is known for model {model!r}", reason="UNKNOWN_MODEL"
            ) from None
        return ceil_nanos(price.total_price)

    def sandbox_cost(self, d: Details) -> int:
        name = d.sandbox_class or ""
        if name not in self.sandboxes:
            raise InvalidField(
                "details.sandbox_class", f"no price for sandbox class {name!r}", reason="UNKNOWN_SANDBOX_CLASS"
            )
        seconds = Decimal(d.sandbox_nanos or 0) / NANOS_PER_UNIT
        return ceil_nanos(self.sandboxes[name] * seconds)

    def api_cost(self, d: Details) -> int:
        name = d.api_name or ""
        if name not in self.apis:
            raise InvalidField("details.api_name", f"no price for external API {name!r}", reason="UNKNOWN_API")
        return ceil_nanos(self.apis[name] * (d.api_calls if d.api_calls is not None else 1))

    def cost(self, d: Details, field: str = "amount") -> int:
        """The cost of what ``d`` describes, by its kind (or the fields it sets); ``field`` names the
        amount the caller left out, for the error when there is nothing to price."""
        kind = d.kind or _kind_of(d)
        if kind == "MODEL_INFERENCE":
            return self.model_cost(d)
        if kind == "SANDBOX":
            return self.sandbox_cost(d)
        if kind == "EXTERNAL_API":
            return self.api_cost(d)
        raise InvalidField(field, "required, unless details say what to price (a model, sandbox class or API)")


@lru_cache(maxsize=1024)
def _find_model(model: str, provider: str | None) -> tuple[Any, Any]:
    """genai-prices' (provider, model) for a name: the lookup is the slow part, so it is kept."""
    found: tuple[Any, Any] = get_snapshot().find_provider_model(model, None, provider, None)
    return found


@lru_cache(maxsize=1024)
def _linear_prices(model: str, provider: str | None, hour: int) -> ModelPrice | None:
    """The model's prices when they are flat per token (no tiers), as of ``hour`` (hours since the
    epoch: the key is cheap to make on the hot path, unlike a formatted time): then the cost is
    the same sum genai-prices computes, at a fraction of its cost. None: tiered."""
    found_provider, info = _find_model(model, provider)
    del found_provider
    prices = info.get_prices(datetime.fromtimestamp(hour * 3600, UTC))
    parts = [
        getattr(prices, name, None) for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
    ]
    if any(p is not None and not isinstance(p, Decimal) for p in parts):
        return None
    if getattr(prices, "input_mtok", None) is None and getattr(prices, "output_mtok", None) is None:
        return None  # not priced by the token at all: let genai-prices say what it is
    return ModelPrice(
        input_mtok=parts[0] or Decimal(0),
        output_mtok=parts[1] or Decimal(0),
        cache_read_mtok=parts[2],
        cache_write_mtok=parts[3],
    )


def _kind_of(d: Details) -> str | None:
    if d.model:
        return "MODEL_INFERENCE"
    if d.sandbox_class:
        return "SANDBOX"
    if d.api_name:
        return "EXTERNAL_API"
    return None


def _decimal(value: Any, where: str) -> Decimal:
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: not a decimal price: {value!r}") from None
    if not out.is_finite() or out < 0:
        raise ValueError(f"{where}: a price must be a non-negative number, got {value!r}")
    return out


def parse(config: dict[str, Any], source: str = "") -> Catalog:
    """A catalog from the configuration's mapping (see the README for the format)."""
    unknown = set(config) - {"models", "sandboxes", "apis"}
    if unknown:
        raise ValueError(f"unknown price configuration keys: {sorted(unknown)}")
    models = {}
    for name, p in (config.get("models") or {}).items():
        where = f"models.{name}"
        models[str(name)] = ModelPrice(
            input_mtok=_decimal(p["input_mtok"], f"{where}.input_mtok"),
            output_mtok=_decimal(p["output_mtok"], f"{where}.output_mtok"),
            cache_read_mtok=_decimal(p["cache_read_mtok"], where) if "cache_read_mtok" in p else None,
            cache_write_mtok=_decimal(p["cache_write_mtok"], where) if "cache_write_mtok" in p else None,
        )
    sandboxes = {
        str(k): _decimal(v.get("per_second") if isinstance(v, dict) else v, f"sandboxes.{k}")
        for k, v in (config.get("sandboxes") or {}).items()
    }
    apis = {
        str(k): _decimal(v.get("per_call") if isinstance(v, dict) else v, f"apis.{k}")
        for k, v in (config.get("apis") or {}).items()
    }
    return Catalog(models, sandboxes, apis, source)


def load(path: str) -> Catalog:
    """The catalog of a YAML or JSON file (a mounted ConfigMap); empty path: genai-prices alone."""
    if not path:
        return Catalog()
    text = Path(path).read_text("utf-8")
    data = yaml.safe_load(text) if not path.endswith(".json") else json.loads(text)
    return parse(data or {}, hashlib.sha256(text.encode()).hexdigest()[:12])
