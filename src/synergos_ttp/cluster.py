"""A cluster TTP: consumes jobs from the Synergos MQ, runs each on its grid (node K of every
participant) with the code a basic TTP runs its own jobs with (`operations.run_job`), publishes
the outcome, and keeps no metadata of its own."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from synergos_contract.serving import service_credentials
from synergos_core.errors import SynergosError
from synergos_core.settings import TTPSettings

from . import operations
from .grid import WorkerClient

log = logging.getLogger(__name__)


class JobRunner:
    """Runs one queued job at a time on this TTP's grid, and says what it is doing."""

    def __init__(self, settings: TTPSettings) -> None:
        self.settings = settings
        self.credentials = service_credentials(settings, "ttp")  # None only with --insecure
        self.done = 0
        self.current: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": "cluster", "grid": self.settings.grid, "jobs_done": self.done, "current": self.current}

    def __call__(self, job: dict) -> dict:
        keys = job["keys"]
        with self._lock:
            self.current = {"job_id": job["job_id"], "process": job["process"], "keys": keys}
        log.info("job %s: %s %s", job["job_id"], job["process"], "/".join(keys.values()))
        try:
            return asyncio.run(self._run(job))
        finally:
            with self._lock:
                self.current = None
                self.done += 1

    async def _run(self, job: dict) -> dict:
        async with WorkerClient(self.credentials, self.settings.http_timeout_s) as http:
            return await operations.run_job(
                http,
                job,
                self.settings.grid,
                self.settings.federation,
                self.settings.outputs_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
            )


def permanent(exc: BaseException) -> bool:
    """Bad input never gets better by retrying; a node that is down might."""
    return isinstance(exc, SynergosError) and exc.status < 500
