"""`synergos-ttp`: run a TTP (basic mode; `--queue rabbitmq HOST PORT` for a cluster TTP)."""

from __future__ import annotations

import argparse
import logging
import os

import torch
from pydantic import ValidationError

from synergos_contract.serving import run, scheme, service_credentials
from synergos_core.cli import base_parser, given
from synergos_core.identity import CredentialsError
from synergos_core.logs import configure_logging
from synergos_core.settings import TTPSettings

from .app import create_app

log = logging.getLogger("synergos_ttp")


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("Synergos TTP: coordinates one federated grid and aggregates its model updates")
    parser.add_argument(
        "--queue",
        "-q",
        nargs=3,
        metavar=("rabbitmq", "HOST", "PORT"),
        help="consume jobs from the Synergos MQ (cluster mode): rabbitmq HOST PORT",
    )
    parser.add_argument("--grid", "-g", type=int, help="which node of each participant this TTP drives (default 0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.queue is not None:
        kind, _host, port = args.queue
        if kind != "rabbitmq":
            parser.error(f"--queue supports only rabbitmq (got {kind!r}): --queue rabbitmq HOST PORT")
        if not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--queue PORT must be a port number (got {port!r})")
    if args.grid is not None and args.grid < 0:
        parser.error("--grid must be 0 or more")
    try:
        settings = TTPSettings(**given(args))
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    settings.resolve_dirs("ttp")
    configure_logging(settings.id, settings.logging_variant, settings.censored, settings.debug)
    try:
        credentials = service_credentials(settings, "ttp")
    except CredentialsError as exc:
        parser.error(str(exc))
    mode = "cluster" if settings.queue else "basic"
    log.info(
        "TTP %s (%s mode) listening on %s://%s:%s", settings.id, mode, scheme(credentials), settings.host, settings.port
    )
    if settings.queue:
        from .cluster_app import create_cluster_app

        app = create_cluster_app(settings)
    else:
        app = create_app(settings)
    torch.set_num_threads(int(os.environ.get("SYNERGOS_TORCH_THREADS", "1")))
    run(app, settings, "ttp", credentials)


if __name__ == "__main__":
    main()
