"""Job order across the cluster: a job waits for the jobs it depends on (training of a project
for its alignment, validation of a run for its training) before it is published, so operations
issued in sequence run in that order whichever TTP takes them. Every job closes here, whether
the archive saw it complete or fail or it failed because something it waited for did, so this is
also where the Director waits for a job of its own (an optimization trial's).

With a `Journal`, every change is written through to the Director's store as it happens (a job
accepted with what it waits for, published, closed), and `restore` tracks the open jobs of a
previous run of the Director again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from synergos_core.records import Job

from .journal import FINAL_STATES, Journal, JournaledJob

Mark = tuple[str, ...]


@dataclass
class Entry:
    job_id: str
    process: str
    board: Job
    publish: Callable[[], None]  # build the job and publish it; raises if it cannot
    waits_for: set[str] = field(default_factory=set)
    marks: list[Mark] = field(default_factory=list)
    kind: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None


class Ledger:
    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self._lock = threading.RLock()
        self._closed = threading.Condition(self._lock)
        self._open: dict[str, Entry] = {}  # submitted, not yet archived
        self._latest: dict[Mark, str] = {}  # e.g. ("alignment", c, p) -> its newest open job
        self._finished: dict[str, tuple[str, str | None]] = {}  # job_id -> ("completed" | "failed", detail)

    def latest(self, mark: Mark) -> str | None:
        with self._lock:
            return self._latest.get(mark)

    def submit(self, entry: Entry, after: list[Mark], waiting: Callable[[set[str]], None] | None = None) -> bool:
        """Register (and journal) a job, waiting for the open jobs that carry a mark in `after`.
        Returns True when it waits for nothing: the caller publishes it now. Else `waiting` is
        told what it waits for, before any of those can finish."""
        with self._lock:
            entry.waits_for = {self._latest[m] for m in after if m in self._latest}
            if self.journal is not None:
                self.journal.add(
                    entry.job_id,
                    entry.kind,
                    entry.process,
                    entry.keys,
                    recipe=entry.recipe,
                    marks=entry.marks,
                    waits_for=sorted(entry.waits_for),
                    rounds=entry.rounds,
                )
            self._open[entry.job_id] = entry
            for mark in entry.marks:
                self._latest[mark] = entry.job_id
            if entry.waits_for and waiting is not None:
                waiting(set(entry.waits_for))
            return not entry.waits_for

    def published(self, job_id: str) -> None:
        """The broker confirmed the job: a restarted Director must not publish it again."""
        with self._lock:
            if job_id in self._open and self.journal is not None:
                self.journal.set_state(job_id, "published")

    def restore(
        self, journaled: Iterable[JournaledJob], states: dict[str, str], make: Callable[[JournaledJob], Entry]
    ) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Track the open jobs of a previous run again (`journaled` oldest first, `states` every
        journaled job's state). Returns the waiting jobs now ready to publish, and those to fail
        (with the job they waited for that failed)."""
        ready: list[Entry] = []
        doomed: list[tuple[Entry, str]] = []
        with self._lock:
            for job_id, state in states.items():
                if state in FINAL_STATES:
                    self._finished.setdefault(job_id, (state, None))
            for job in journaled:
                if not job.open or job.job_id in self._open:
                    continue
                entry = make(job)
                self._open[job.job_id] = entry
                for mark in entry.marks:
                    self._latest[mark] = job.job_id
                if job.state != "waiting":
                    continue  # published: its completed event closes it
                # what it waited for and is still open; a dependency forgotten since counts as done
                entry.waits_for = {d for d in job.waits_for if states.get(d) in ("waiting", "published")}
                failed = next((d for d in job.waits_for if states.get(d) == "failed"), None)
                if failed is not None:
                    doomed.append((entry, failed))
                elif not entry.waits_for:
                    ready.append(entry)
        return ready, doomed

    def entry(self, job_id: str) -> Entry | None:
        with self._lock:
            return self._open.get(job_id)

    def open_entries(self) -> list[Entry]:
        with self._lock:
            return list(self._open.values())

    def finish(
        self, job_id: str, status: str, detail: str | None = None
    ) -> tuple[Entry | None, list[Entry], list[Entry]]:
        """Close a job; returns it, the dependents now ready to publish, and those that must fail."""
        with self._lock:
            entry = self._open.pop(job_id, None)
            if entry is None:
                return None, [], []
            self._finished[job_id] = (status, detail)
            if self.journal is not None:
                self.journal.set_state(job_id, "completed" if status == "completed" else "failed", detail)
            self._closed.notify_all()
            for mark in entry.marks:
                if self._latest.get(mark) == job_id:
                    del self._latest[mark]
            ready, failed = [], []
            for other in list(self._open.values()):
                if job_id in other.waits_for:
                    if status != "completed":
                        failed.append(other)
                    else:
                        other.waits_for.discard(job_id)
                        if not other.waits_for:
                            ready.append(other)
        return entry, ready, failed

    def seen(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._finished

    def wait(self, job_id: str, timeout_s: float) -> tuple[str, str | None]:
        """How a submitted job ended, `(status, detail)`, once it has; TimeoutError after `timeout_s`."""
        with self._closed:
            if not self._closed.wait_for(lambda: job_id in self._finished, timeout_s):
                raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")
            return self._finished[job_id]
