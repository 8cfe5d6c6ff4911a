"""Archiving what the TTPs report on `completed`: records into the metadata store, once per job
(`planning.archive`, as a basic TTP archives its own jobs), then the job is closed in the ledger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from synergos_contract import planning
from synergos_contract.store import Store
from synergos_mlops.records import RunRecorder

log = logging.getLogger("synergos_director")


class Archivist:
    def __init__(self, store: Store, finished: Callable[[str, str, str | None], None], mlflow: RunRecorder) -> None:
        self.mlflow = mlflow
        self.store = store
        self.finished = finished
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def archive(self, event: dict) -> None:
        """Apply one completed event; a repeated event (at-least-once delivery) changes nothing."""
        job_id = str(event.get("job_id"))
        with self._lock:
            if job_id in self._done:
                return
        keys = event.get("keys") or {}
        process = str(event.get("process", "job"))
        if event.get("status") != "completed":
            error = event.get("error") or {}
            detail = error.get("detail") or error.get("message") or str(error) or "failed"
            log.warning("%s FAILED - %s: %s", process.upper(), "/".join(keys.values()), detail)
            if process == "train":
                planning.training_failed(self.store, self.mlflow, keys, detail)
            self._close(job_id, "failed", detail)
            return
        outcome = event.get("outcome") or {}
        planning.archive(self.store, process, keys, outcome, self.mlflow)
        log.info(planning.completion_line(process, keys, outcome))
        self._close(job_id, "completed", None)

    def _close(self, job_id: str, status: str, detail: str | None) -> None:
        with self._lock:
            self._done.add(job_id)
        self.finished(job_id, status, detail)
