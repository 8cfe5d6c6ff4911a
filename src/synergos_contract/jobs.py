"""Progress of long work (alignment, training, validation, prediction), readable while it runs.

The board holds `synergos_core.records.Job` records; `list` gives copies as `GET /ttp/status/jobs`
shows them."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from synergos_contract.envelope import now_iso
from synergos_core.records import Job, JobState

__all__ = ["Job", "JobBoard", "failure_reason"]


class JobBoard:
    """Thread-safe, bounded record of recent jobs (the newest `keep` are kept)."""

    def __init__(self, keep: int = 500) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._keep = keep

    def start(self, kind: str, keys: dict[str, str], rounds: int | None = None) -> Job:
        with self._lock:
            now = now_iso()
            job = Job(
                job_id=f"{kind}-{next(self._ids)}",
                kind=kind,
                keys=dict(keys),
                rounds=rounds,
                round=0 if rounds else None,
                started_at=now,
                updated_at=now,
            )
            self._jobs[job.job_id] = job
            while len(self._jobs) > self._keep:
                self._jobs.pop(next(iter(self._jobs)))
            return job

    def update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated_at = now_iso()

    def finish(self, job: Job, state: JobState, detail: str | None = None) -> None:
        self.update(job, state=state, detail=detail)

    @contextmanager
    def failing(self, job: Job) -> Iterator[Job]:
        """Mark `job` failed, with the reason, if the block raises anything; the error goes on."""
        try:
            yield job
        except BaseException as exc:
            self.finish(job, "failed", failure_reason(exc))
            raise

    def list(self, **filters: str | None) -> list[dict[str, Any]]:
        """The jobs whose keys match every filter given, oldest first, as the status route shows them."""
        with self._lock:
            jobs = [j.model_dump(mode="json") for j in self._jobs.values()]
        return [j for j in jobs if all(v is None or j["keys"].get(k) == v for k, v in filters.items())]


def failure_reason(exc: BaseException) -> str:
    """The public text of a failure, as `GET /ttp/status/jobs` shows it: a ServiceError's detail;
    for anything else `internal.error`'s public text with a correlation id, the exception itself
    logged under that id (never shown)."""
    import logging

    from synergos_core.errors import report

    return str(report(exc, logging.getLogger(__name__), "a job failed")["detail"])
