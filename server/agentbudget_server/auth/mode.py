"""Is authentication on: ``required`` or ``none`` (the development mode), from the ``auth`` setting."""

from __future__ import annotations

REQUIRED = "required"
NONE = "none"
AUTO = "auto"
CHOICES = (AUTO, REQUIRED, NONE)


def resolve(auth: str, database_url: str) -> str:
    """``auto`` is ``required`` once a database is configured, and ``none`` for the embedded
    quick start (``make serve`` and ``agentbudget demo`` with no database), which lives on a
    developer's machine; an explicit choice always wins."""
    if auth not in CHOICES:
        raise ValueError(f"auth must be one of {', '.join(CHOICES)}, not {auth!r}")
    if auth == AUTO:
        return REQUIRED if database_url else NONE
    return auth


def banner(auth: str, listen: str) -> str:
    """The warning logged at start when authentication is off: a box, so it is not missed."""
    why = "no database is configured (the embedded quick start)" if auth == AUTO else "auth=none"
    lines = [
        "AUTHENTICATION IS OFF: " + why,
        f"Every caller is an admin: anyone who can reach {listen}",
        "may spend, move and delete every budget; no principal is recorded.",
        "For development only. Set --auth required (or configure a database);",
        "see docs/security.md.",
    ]
    width = max(len(line) for line in lines) + 4
    rule = "#" * (width + 2)
    return "\n".join(["", rule, *(f"#  {line.ljust(width - 2)}#" for line in lines), rule])
