"""Progress of long work (alignment, training, validation, prediction), readable while it runs.

The board holds `synergos_core.records.Job` records; `list` gives copies as `GET /ttp/status/jobs`
shows them. A board with a `Store` (a TTP's) writes every change through to the store's jobs
table and reads the list back from it, so a TTP that restarts shows what it was doing: `recover`
marks the jobs that were queued or running `interrupted`, with the rounds they had completed."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from synergos_contract.envelope import now_iso
from synergos_core.records import OPEN_JOB_STATES, Job, JobState

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Job", "JobBoard", "failure_reason", "interruption"]
log = logging.getLogger(__name__)
# reported apart from a round's figures: the replies left out so far, how far the checkpoints go
_PROGRESS_FIELDS = ("exclusions", "rounds_checkpointed", "resumed_after")


class JobBoard:
    """Thread-safe, bounded record of recent jobs (the newest `keep` are held in memory; with a
    `store`, every job is also written to its jobs table, which `list` reads)."""

    def __init__(self, keep: int = 500, store: Store | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self.store = store
        if store is not None:
            for job in store.list_jobs(limit=keep):
                self._jobs[job.job_id] = job

    def start(
        self,
        kind: str,
        keys: dict[str, str],
        rounds: int | None = None,
        *,
        job_id: str | None = None,
        state: JobState = "running",
    ) -> Job:
        """A new job; with `job_id` of a job the board knows (a queued job delivered again), that
        job, started again."""
        with self._lock:
            now = now_iso()
            job = Job(
                job_id=job_id or f"{kind}-{uuid.uuid4().hex[:12]}",
                kind=kind,
                keys=dict(keys),
                state=state,
                rounds=rounds,
                round=0 if rounds else None,
                started_at=now,
                updated_at=now,
            )
            known = self._jobs.pop(job.job_id, None)
            if known is not None:  # the same job again: what it had checkpointed still stands
                job.rounds_checkpointed = known.rounds_checkpointed
            self._jobs[job.job_id] = job
            while len(self._jobs) > self._keep:
                self._jobs.pop(next(iter(self._jobs)))
            self._save(job)
            return job

    def update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated_at = now_iso()
            self._save(job)

    def finish(self, job: Job, state: JobState, detail: str | None = None) -> None:
        self.update(job, state=state, detail=detail)

    def _save(self, job: Job) -> None:
        if self.store is not None:
            self.store.save_job(job)

    def progress(self, job: Job) -> Callable[..., None]:
        """What a training loop reports progress to (`round` and its figures, `exclusions`,
        `rounds_checkpointed`, `resumed_after`): `job`, updated as it goes."""

        def report(**info: Any) -> None:
            changes: dict[str, Any] = {k: info.pop(k) for k in _PROGRESS_FIELDS if k in info}
            if "round" in info:
                changes["round"] = info["round"]
                changes["metrics"] = {k: v for k, v in info.items() if k not in ("round", "rounds")}
            if changes:
                self.update(job, **changes)

        return report

    @contextmanager
    def failing(self, job: Job, service: str = "TTP") -> Iterator[Job]:
        """Mark `job` failed, with the reason, if the block raises anything (interrupted if the
        service is stopping: the block was cancelled); the error goes on."""
        try:
            yield job
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            self.finish(job, "interrupted", interruption(job, service))
            raise
        except BaseException as exc:
            self.finish(job, "failed", failure_reason(exc))
            raise

    def recover(self, service: str = "TTP") -> list[Job]:
        """After a restart: every job still queued or running was cut short; mark it `interrupted`,
        saying how far it got. Returns those jobs."""
        with self._lock:
            cut = [job for job in self._jobs.values() if job.state in OPEN_JOB_STATES]
        for job in cut:
            self.update(job, state="interrupted", detail=interruption(job, service))
            log.warning(
                "job %s (%s of %s) interrupted: %s", job.job_id, job.kind, "/".join(job.keys.values()), job.detail
            )
        return cut

    def open_job(self, kind: str, keys: Mapping[str, str]) -> Job | None:
        """The newest job of `kind` with exactly these `keys` that is queued or running, if any."""
        latest = self.latest(kind, keys)
        return latest if latest is not None and latest.state in OPEN_JOB_STATES else None

    def latest(self, kind: str, keys: Mapping[str, str]) -> Job | None:
        """The newest job of `kind` with exactly these `keys`, whatever its state."""
        wanted = dict(keys)
        with self._lock:
            return next((j for j in reversed(self._jobs.values()) if j.kind == kind and j.keys == wanted), None)

    def list(self, **filters: str | None) -> list[dict[str, Any]]:
        """The jobs whose keys match every filter given, oldest first, as the status route shows them."""
        if self.store is not None:
            jobs = [
                j.model_dump(mode="json")
                for j in self.store.list_jobs(filters.get("collab_id"), filters.get("project_id"), self._keep)
            ]
        else:
            with self._lock:
                jobs = [j.model_dump(mode="json") for j in self._jobs.values()]
        return [j for j in jobs if all(v is None or j["keys"].get(k) == v for k, v in filters.items())]


def interruption(job: Job, service: str = "TTP") -> str:
    """Why a job that was open when its service stopped is `interrupted`, and what to do."""
    if job.kind != "training":
        return f"the {service} stopped before this {job.kind} finished; request it again"
    done = job.rounds_checkpointed or 0
    of = f" of {job.rounds}" if job.rounds else ""
    if not done:
        return f"the {service} stopped before the first round was checkpointed; training it again starts at round 1"
    return (
        f"the {service} stopped after round {done}{of} was checkpointed; training it again resumes at round {done + 1}"
    )


def failure_reason(exc: BaseException) -> str:
    """The public text of a failure, as `GET /ttp/status/jobs` shows it: a ServiceError's detail;
    for anything else `internal.error`'s public text with a correlation id, the exception itself
    logged under that id (never shown)."""
    from synergos_core.errors import report

    return str(report(exc, log, "a job failed")["detail"])
