"""Named SQL queries from the ``*.sql`` files beside this module and the ordered migrations, bound at import.

Every top-level ``.sql`` file but ``schema.sql`` holds named queries (``-- name: x``); a name may be
defined only once across all of them.
"""

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


def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files(__package__)
    for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql") and p.name != "schema.sql"):
        for key, body in _parse(folder.joinpath(name).read_text("utf-8")).items():
            if key in queries:
                raise ValueError(f"query {key} defined twice ({name})")
            queries[key] = body
    return queries


QUERIES: dict[str, str] = _load()


def migrations() -> list[tuple[str, str]]:
    """(version, sql) in order; versions are the file names' numeric prefixes."""
    folder = resources.files(__package__).joinpath("migrations")
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text("utf-8")) for name in found]


def schema() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text("utf-8")
