"""synergos-worker: the guide's flags plus --host/--port (REST f_port) and --ws_port (federation port)."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from synergos_core.cli import base_parser, given
from synergos_core.logs import configure_logging
from synergos_core.settings import WorkerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("Synergos Worker: serves one party's data to the federation")
    parser.add_argument("--ws_port", "--ws-port", type=int, help="federation WebSocket port (default 8020)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = WorkerSettings(**given(args))
    settings.resolve_dirs("worker")
    configure_logging(settings.id, settings.logging_variant, settings.censored, settings.debug)
    # one intra-op thread per process: parties share cores, and results stay reproducible
    import torch

    torch.set_num_threads(int(os.environ.get("SYNERGOS_TORCH_THREADS", "1")))
    from .app import create_app

    logging.getLogger(__name__).info(
        "worker %s: REST on %s:%d, federation on %s:%d, data in %s",
        settings.id,
        settings.host,
        settings.port,
        settings.host,
        settings.ws_port,
        settings.data_dir,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        ws="none",
        timeout_keep_alive=5,
        limit_concurrency=200,
    )


if __name__ == "__main__":
    main()
