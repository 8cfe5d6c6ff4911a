"""`synergos-director --id director --logging_variant basic [--queue rabbitmq HOST PORT]`."""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from synergos_contract.serving import run, scheme, service_credentials
from synergos_core.cli import base_parser, given
from synergos_core.identity import CredentialsError
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
    try:
        credentials = service_credentials(settings, "director")
    except CredentialsError as exc:
        parser.error(str(exc))
    from .app import create_app

    log.info("Director %s listening on %s://%s:%s", settings.id, scheme(credentials), settings.host, settings.port)
    run(create_app(settings), settings, "director", credentials)


if __name__ == "__main__":
    main()
