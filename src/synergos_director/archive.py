"""Archiving what the TTPs report on `completed`: records into the metadata store, once per job
(`planning.archive`, as a basic TTP archives its own jobs), then the job is closed in the ledger.
A job the ledger closed before (`seen`: journaled as finished, so also across restarts) is not
archived twice; a `retrying` event only says on the board that an attempt failed. An event the
store refuses for good (the records it names are gone: a 4xx) closes its job as failed and is
dead-lettered with the reason, not retried."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from synergos_contract import planning
from synergos_contract.store import Store
from synergos_core.errors import ServiceError
from synergos_mlops.records import RunRecorder
from synergos_mq.errors import PoisonMessage

log = logging.getLogger("synergos_director")


class Archivist:
    def __init__(
        self,
        store: Store,
        finished: Callable[[str, str, str | None], None],
        mlflow: RunRecorder,
        *,
        seen: Callable[[str], bool] | None = None,
        retrying: Callable[[str, str], None] | None = None,
    ) -> None:
        self.mlflow = mlflow
        self.store = store
        self.finished = finished
        self.seen = seen or (lambda _job_id: False)
        self.retrying = retrying
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def archive(self, event: dict) -> None:
        """Apply one completed event; a repeated event (at-least-once delivery) changes nothing."""
        job_id = str(event.get("job_id"))
        with self._lock:
            if job_id in self._done or self.seen(job_id):
                return
        try:
            self._apply(job_id, event)
        except ServiceError as exc:
            if exc.status >= 500:
                raise  # e.g. the store busy: the event is retried later
            log.warning("job %s could not be archived: %s", job_id, exc.detail)
            self._close(job_id, "failed", f"could not be archived: {exc.detail}")
            raise PoisonMessage(f"cannot be archived: {exc.detail}") from exc

    def _apply(self, job_id: str, event: dict) -> None:
        keys: dict[str, str] = event["keys"] if isinstance(event.get("keys"), dict) else {}
        process = str(event.get("process", "job"))
        needed = ("collab_id", "project_id") + (("expt_id", "run_id") if process in ("train", "evaluate") else ())
        missing = [k for k in needed if not isinstance(keys.get(k), str)]
        if missing:  # not one of ours, or mangled: nothing in the store to archive it to
            self._close(job_id, "failed", f"its completed event names no {', '.join(missing)}")
            raise PoisonMessage(f"event keys lack {', '.join(missing)}")
        if event.get("status") == "retrying":
            detail = _error_detail(event)
            attempt, most = event.get("attempt"), event.get("max_attempts")
            log.warning(
                "%s RETRYING - %s: attempt %s of %s failed: %s",
                process.upper(),
                _where(keys),
                attempt,
                most,
                detail,
            )
            if self.retrying is not None:
                self.retrying(
                    job_id, f"attempt {attempt} of {most} failed ({detail}); retrying in {event.get('retry_in_s')} s"
                )
            return
        if event.get("status") != "completed":
            detail = _error_detail(event)
            if isinstance(event.get("attempt"), int) and event["attempt"] > 1:
                detail = f"{detail} (gave up after {event['attempt']} attempts)"
            log.warning("%s FAILED - %s: %s", process.upper(), _where(keys), detail)
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


def _error_detail(event: dict) -> str:
    error = event.get("error") or {}
    return str(error.get("detail") or error.get("message") or error or "failed")


def _where(keys: dict) -> str:
    return "/".join(str(v) for v in keys.values())
