"""``agentbudget apikey create``: a new API key, shown once, and the keys-file entry to add."""

from __future__ import annotations

import argparse
from typing import Any

from ..principal import ROLES
from . import apikeys


def cmd_create(args: argparse.Namespace) -> int:
    key = apikeys.new_key()
    item = apikeys.entry(args.name, args.role, args.scope, key)
    print(f"API key for {item['principal']} (shown once; the authority keeps only its digest):\n\n  {key}\n")
    print("Add this entry under 'keys:' in the API keys file (--api-keys-file), then restart the authority:\n")
    print(apikeys.render_entry(item), end="")
    return 0


def add_parsers(sub: Any) -> None:
    apikey = sub.add_parser("apikey", help="API keys for callers outside Kubernetes")
    actions = apikey.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a new key; prints it once with its keys-file entry")
    create.add_argument("--name", required=True, help="the principal is apikey:NAME")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--scope", action="append", default=[], help="budget pattern, e.g. 'demo/*' (repeatable; admins need none)"
    )
    create.set_defaults(run=cmd_create)
