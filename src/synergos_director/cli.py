"""`synergos-director --id director --logging_variant basic [--queue rabbitmq HOST PORT]`."""

from __future__ import annotations

import argparse
import logging

import uvicorn
from pydantic import ValidationError

from synergos_core.cli import base_parser, given
from synergos_core.logs import configure_logging
from synergos_core.settings import DirectorSettings

log = logging.getLogger("synergos_director")


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("Synergos Director: queues federated jobs for the cluster's TTP grids")
    parser.add_argument(
        "--queue",
        "-q",
        nargs=3,
        metavar=("rabbitmq", "HOST", "PORT"),
        help="default MQ for collaborations that name none: rabbitmq HOST PORT",
    )
    parser.add_argument("--ray_address", "--ray-address", help="join this Ray cluster instead of a local one")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.queue is not None and (args.queue[0] != "rabbitmq" or not args.queue[2].isdigit()):
        parser.error("--queue takes: rabbitmq HOST PORT")
    try:
        settings = DirectorSettings(**given(args))
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    settings.resolve_dirs("director")
    configure_logging(settings.id, settings.logging_variant, settings.censored, settings.debug)
    from .app import create_app

    log.info("Director %s listening on http://%s:%s", settings.id, settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws="none",
        log_config=None,
        timeout_keep_alive=5,
        limit_concurrency=200,
    )


if __name__ == "__main__":
    main()
