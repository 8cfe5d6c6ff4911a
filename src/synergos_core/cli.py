"""The flags shared by every service CLI, spelled as in the deployment guide."""

from __future__ import annotations

import argparse
from typing import Any


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--id", "-i", help="service id, shown on every log line")
    add(
        "--logging_variant",
        "--logging-variant",
        "-l",
        nargs="+",
        metavar="VARIANT",
        help="'basic' or 'graylog HOST PORT'",
    )
    add("--censored", "-c", action="store_true", default=None, help="redact paths and secrets from logs")
    add("--debug", "-d", action="store_true", default=None, help="verbose logging")
    add("--host", help="REST bind address")
    add("--port", type=int, help="REST port")
    add("--data_dir", "--data-dir")
    add("--outputs_dir", "--outputs-dir")
    add("--mlflow_dir", "--mlflow-dir")
    add("--db_url", "--db-url", help="SQLAlchemy URL of the metadata store (SQLite file by default)")
    add(
        "--credentials",
        help="this service's identity: a folder from synergos-provision (DIR/NAME); env SYNERGOS_CREDENTIALS",
    )
    add(
        "--insecure",
        action="store_true",
        default=None,
        help="DEVELOPMENT ONLY: plain HTTP/WebSocket without identities; anyone can command the service",
    )
    return parser


def given(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user passed, so environment variables fill the rest."""
    return {k: v for k, v in vars(args).items() if v is not None}
