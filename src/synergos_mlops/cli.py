"""`synergos-mlops`: run the Federated MLOps service (an MLflow tracking server and UI)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from synergos_core.cli import base_parser, given
from synergos_core.logs import configure_logging

from .server import serve
from .settings import MLOpsSettings


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("Synergos MLOps: the MLflow tracking server and UI that records every run")
    parser.prog = "synergos-mlops"
    parser.add_argument("--workers", "-w", type=int, help="MLflow server worker processes (default 1)")
    parser.add_argument(
        "--allowed_hosts",
        "--allowed-hosts",
        help="comma-separated Host headers MLflow accepts (default: localhost, "
        "loopback, private networks and the bind address)",
    )
    args = parser.parse_args(argv)
    try:
        settings = MLOpsSettings(**given(args))
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    configure_logging(settings.id, settings.logging_variant, settings.censored, settings.debug)
    sys.exit(serve(settings))


if __name__ == "__main__":
    main()
