"""Progress of long work (alignment, training, validation, prediction), readable while it runs."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from synergos_contract.envelope import now_iso


@dataclass
class Job:
    job_id: str
    kind: str
    keys: dict[str, str]
    state: str = "running"
    round: int | None = None
    rounds: int | None = None
    detail: str | None = None
    metrics: dict[str, Any] | None = None
    started_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


class JobBoard:
    """Thread-safe, bounded record of recent jobs (the newest `keep` are kept)."""

    def __init__(self, keep: int = 500) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._keep = keep

    def start(self, kind: str, keys: dict[str, str], rounds: int | None = None) -> Job:
        with self._lock:
            job = Job(job_id=f"{kind}-{next(self._ids)}", kind=kind, keys=dict(keys), rounds=rounds,
                      round=0 if rounds else None)
            self._jobs[job.job_id] = job
            while len(self._jobs) > self._keep:
                self._jobs.pop(next(iter(self._jobs)))
            return job

    def update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated_at = now_iso()

    def finish(self, job: Job, state: str, detail: str | None = None) -> None:
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
        with self._lock:
            jobs = [asdict(j) for j in self._jobs.values()]
        return [j for j in jobs if all(v is None or j["keys"].get(k) == v for k, v in filters.items())]


def failure_reason(exc: BaseException) -> str:
    """The public text of a failure, as `GET /ttp/status/jobs` shows it: a ServiceError's detail;
    for anything else `internal.error`'s public text with a correlation id, the exception itself
    logged under that id (never shown)."""
    import logging

    from synergos_core.errors import report

    return str(report(exc, logging.getLogger(__name__), "a job failed")["detail"])
