"""Named SQL queries from ``queries.sql`` and the ordered migrations, bound at import."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


QUERIES: dict[str, str] = _parse(resources.files(__package__).joinpath("queries.sql").read_text("utf-8"))


def migrations() -> list[tuple[str, str]]:
    """(version, sql) in order; versions are the file names' numeric prefixes."""
    folder = resources.files(__package__).joinpath("migrations")
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text("utf-8")) for name in found]


def schema() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text("utf-8")
