"""One settings object, from command-line flags over environment variables over defaults."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .auth.mode import CHOICES as AUTH_MODES

ENV_PREFIX = "AGENTBUDGET_"
WEBHOOK_KINDS = ("slack", "json")


@dataclass(frozen=True)
class Webhook:
    """An alert endpoint: ``slack`` posts ``{"text": ...}``, ``json`` posts the event as an object."""

    kind: str
    url: str

    def __post_init__(self) -> None:
        if self.kind not in WEBHOOK_KINDS:
            raise ValueError(f"webhook kind must be one of {', '.join(WEBHOOK_KINDS)}, not {self.kind!r}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook URL must be http(s)://host/...")


def webhook(text: str) -> Webhook:
    """``KIND=URL``, as the --webhook flag takes it."""
    kind, sep, url = text.partition("=")
    if not sep:
        raise ValueError(f"a webhook is KIND=URL, KIND one of {', '.join(WEBHOOK_KINDS)}")
    return Webhook(kind.strip(), url.strip())


def webhooks_from_env(raw: str) -> tuple[Webhook, ...]:
    """A JSON list of ``"KIND=URL"`` strings or ``{"kind": ..., "url": ...}`` objects."""
    items = json.loads(raw) if raw.strip() else []
    if not isinstance(items, list) or not all(isinstance(i, str | dict) for i in items):
        raise ValueError('a JSON list of "KIND=URL" strings or {"kind": ..., "url": ...} objects')
    return tuple(webhook(i) if isinstance(i, str) else Webhook(str(i.get("kind")), str(i.get("url"))) for i in items)


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    # Empty: start an embedded PostgreSQL in data_dir (serve only).
    database_url: str = ""
    data_dir: str = ".agentbudget/pgdata"
    pool_min: int = 2
    pool_max: int = 10
    default_ttl_seconds: float = 600.0
    min_ttl_seconds: float = 1.0
    max_ttl_seconds: float = 86_400.0
    sweep_interval_seconds: float = 1.0
    event_poll_seconds: float = 1.0
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"  # or "json"
    ready_file: str = ""  # written with the bound port once serving (for supervisors and tests)
    # YAML or JSON: model price overrides, sandbox classes, external APIs (a mounted ConfigMap).
    price_config: str = ""
    # Group commit: at most this many calls for one budget per transaction; 1 turns it off.
    max_batch: int = 256
    # Server processes sharing the port (SO_REUSEPORT); serve only.
    workers: int = 1
    # Prometheus metrics (GET /metrics) on their own port; "" turns them off, port 0 picks a free one.
    metrics_listen: str = "0.0.0.0:9464"
    # Alert webhooks for threshold, exhausted and denied events: flag --webhook KIND=URL
    # (repeatable), env AGENTBUDGET_WEBHOOKS (a JSON list).
    webhooks: tuple[Webhook, ...] = ()
    # Who may call (docs/security.md). auth: auto (required once a database_url is set, none for
    # the embedded quick start), required, or none (development: every caller an admin).
    auth: str = "auto"
    # TLS for the gRPC port (PEM files); a client CA makes it mTLS (client certificates required).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # The API server of the TokenReviews: a kubeconfig path, "" for in-cluster.
    kube_config: str = ""
    token_cache_seconds: float = 30.0
    api_keys_file: str = ""
    roles_file: str = ""  # service-account principal -> role and scope
    # Admins of everything (the operator's service account): flag --admin-principal (repeatable),
    # env AGENTBUDGET_ADMIN_PRINCIPALS (comma-separated).
    admin_principals: tuple[str, ...] = ()
    # Per-principal token bucket (per replica); a rate of 0 turns it off.
    rate_limit_per_second: float = 200.0
    rate_limit_burst: int = 400

    @property
    def default_ttl(self) -> timedelta:
        return timedelta(seconds=self.default_ttl_seconds)

    @property
    def min_ttl(self) -> timedelta:
        return timedelta(seconds=self.min_ttl_seconds)

    @property
    def max_ttl(self) -> timedelta:
        return timedelta(seconds=self.max_ttl_seconds)

    def validate(self) -> Settings:
        if not 0 < self.min_ttl_seconds <= self.default_ttl_seconds <= self.max_ttl_seconds:
            raise ValueError("TTL bounds must satisfy 0 < min <= default <= max")
        if not 1 <= self.pool_min <= self.pool_max:
            raise ValueError("pool sizes must satisfy 1 <= pool_min <= pool_max")
        if self.sweep_interval_seconds <= 0 or self.event_poll_seconds <= 0 or self.grace_seconds < 0:
            raise ValueError("intervals must be positive")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if not 1 <= self.max_batch <= 10_000:
            raise ValueError("max_batch must be between 1 and 10000")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be between 1 and 64")
        if ":" not in self.listen:
            raise ValueError("listen must be host:port")
        if self.metrics_listen and ":" not in self.metrics_listen:
            raise ValueError("metrics_listen must be host:port, or empty to turn metrics off")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}")
        if bool(self.tls_cert) != bool(self.tls_key) or (self.tls_client_ca and not self.tls_cert):
            raise ValueError("tls_cert and tls_key go together, and tls_client_ca needs them")
        if self.token_cache_seconds < 0 or self.rate_limit_per_second < 0:
            raise ValueError("token_cache_seconds and rate_limit_per_second may not be negative")
        if self.rate_limit_per_second and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be at least 1")
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag; the default shown is what the environment or built-in gives."""
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        if f.name == "webhooks":  # repeatable: --webhook slack=https://... --webhook json=https://...
            text = f"KIND=URL with KIND slack or json; repeatable; env {env} (a JSON list)"
            parser.add_argument("--webhook", dest=f.name, type=webhook, action="append", default=None, help=text)
            continue
        if f.name == "admin_principals":
            text = f"a principal with the admin role; repeatable; env {env} (comma-separated)"
            parser.add_argument("--admin-principal", dest=f.name, action="append", default=None, help=text)
            continue
        kind: Any = type(f.default)
        parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, help=f"env {env}")


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


_FROM_ENV: dict[str, Callable[[str], Any]] = {"webhooks": webhooks_from_env, "admin_principals": comma_list}


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        kind: Any = type(f.default)
        given = getattr(args, f.name, None) if args is not None else None
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
        elif ENV_PREFIX + f.name.upper() in env:
            try:
                values[f.name] = _FROM_ENV.get(f.name, kind)(env[ENV_PREFIX + f.name.upper()])
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None
    return Settings(**values).validate()


def data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve()
