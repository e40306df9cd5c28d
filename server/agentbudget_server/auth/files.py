"""Reading the API key and role files: YAML or JSON (JSON is YAML), checked entry by entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..principal import ROLES


def read_document(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON: {exc}") from None


def role(value: Any, where: str) -> str:
    if value not in ROLES:
        raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}, not {value!r}")
    return str(value)


def scope(value: Any, where: str) -> tuple[str, ...]:
    """A list of budget name patterns (one pattern may be given as a string)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError(f"{where}: scope must be a list of budget patterns such as 'demo/*'")
    return tuple(i.strip() for i in items)
