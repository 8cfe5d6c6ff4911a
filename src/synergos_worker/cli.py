"""synergos-worker: the guide's flags plus --host/--port (REST f_port) and --ws_port (federation port)."""

from __future__ import annotations

import argparse
import logging
import os

from synergos_contract.serving import run, scheme, service_credentials, warn_insecure
from synergos_core.cli import base_parser, given
from synergos_core.identity import CredentialsError
from synergos_core.logs import configure_logging
from synergos_core.settings import WorkerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("Synergos Worker: serves one party's data to the federation")
    parser.add_argument("--ws_port", "--ws-port", type=int, help="federation WebSocket port (default 8020)")
    parser.add_argument(
        "--trust",
        nargs="+",
        metavar="NAME",
        help="only these TTP/Director identities may command this Worker (default: any of the collaboration CA)",
    )
    parser.add_argument(
        "--collaboration",
        dest="collaborations",
        nargs="+",
        metavar="COLLAB[/PROJECT]",
        help="serve only these collaborations or projects (default: the one in this Worker's certificate, if any)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = WorkerSettings(**given(args))
    settings.resolve_dirs("worker")
    configure_logging(settings.id, settings.logging_variant, settings.censored, settings.debug)
    try:
        credentials = service_credentials(settings, "worker")
    except CredentialsError as exc:
        parser.error(str(exc))
    # one intra-op thread per process: parties share cores, and results stay reproducible
    import torch

    torch.set_num_threads(int(os.environ.get("SYNERGOS_TORCH_THREADS", "1")))
    from .app import create_app

    logging.getLogger(__name__).info(
        "worker %s: REST on %s://%s:%d, federation on %s:%d, data in %s%s",
        settings.id,
        scheme(credentials),
        settings.host,
        settings.port,
        settings.host,
        settings.ws_port,
        settings.data_dir,
        f", identity {credentials.identity}" if credentials else "",
    )
    if credentials is None:
        warn_insecure("worker's federation port", f"{settings.host}:{settings.ws_port}")
    run(create_app(settings), settings, "worker", credentials)


if __name__ == "__main__":
    main()
