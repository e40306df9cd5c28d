"""The CLI's flags for reaching the authority (target, TLS, token), shared by every client command."""

from __future__ import annotations

import argparse
import os

from agentbudget.client import BudgetClient, connect_from_env

DEFAULT_TARGET = "127.0.0.1:50051"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--target, TLS and the bearer token; unset flags fall back to the agents' variables
    (agentbudget.client.connect_from_env)."""
    parser.add_argument("--target", default=os.environ.get("AGENTBUDGET_TARGET", DEFAULT_TARGET))
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS to the authority (env AGENTBUDGET_TLS=1; implied by --ca-file or a client certificate)",
    )
    parser.add_argument(
        "--ca-file",
        help="CA bundle (PEM) to check the authority's certificate (env AGENTBUDGET_CA_FILE; default: system roots)",
    )
    parser.add_argument("--cert-file", help="client certificate (PEM) for mTLS (env AGENTBUDGET_CERT_FILE)")
    parser.add_argument("--key-file", help="the client certificate's key (env AGENTBUDGET_KEY_FILE)")
    parser.add_argument(
        "--token-file",
        help="bearer token file, re-read when it changes (env AGENTBUDGET_TOKEN_FILE, default "
        "/var/run/secrets/agentbudget.io/token if it exists; AGENTBUDGET_TOKEN gives the token itself)",
    )
    parser.add_argument("--server-name", help="the name on the authority's certificate when not the target's host")


def connect_from_args(args: argparse.Namespace) -> BudgetClient:
    """The client the flags describe; a flag not given falls back to its AGENTBUDGET_* variable."""
    return connect_from_env(
        args.target,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        token_file=args.token_file,
        server_name=args.server_name,
    )
