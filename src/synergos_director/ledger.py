"""Job order across the cluster: a job waits for the jobs it depends on (training of a project
for its alignment, validation of a run for its training) before it is published, so operations
issued in sequence run in that order whichever TTP takes them. Every job closes here, whether
the archive saw it complete or fail or it failed because something it waited for did, so this is
also where the Director waits for a job of its own (an optimization trial's)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from synergos_core.records import Job

Mark = tuple[str, ...]


@dataclass
class Entry:
    job_id: str
    process: str
    board: Job
    publish: Callable[[], None]
    waits_for: set[str] = field(default_factory=set)
    marks: list[Mark] = field(default_factory=list)


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = threading.Condition(self._lock)
        self._open: dict[str, Entry] = {}  # submitted, not yet archived
        self._latest: dict[Mark, str] = {}  # e.g. ("alignment", c, p) -> its newest open job
        self._finished: dict[str, tuple[str, str | None]] = {}  # job_id -> ("completed" | "failed", detail)

    def latest(self, mark: Mark) -> str | None:
        with self._lock:
            return self._latest.get(mark)

    def submit(self, entry: Entry, after: list[Mark]) -> bool:
        """Register a job; publish it now unless something it depends on is still open.
        Returns True when it was published at once."""
        with self._lock:
            entry.waits_for = {self._latest[m] for m in after if m in self._latest}
            self._open[entry.job_id] = entry
            for mark in entry.marks:
                self._latest[mark] = entry.job_id
            ready = not entry.waits_for
        if ready:
            entry.publish()
        return ready

    def finish(
        self, job_id: str, status: str, detail: str | None = None
    ) -> tuple[Entry | None, list[Entry], list[Entry]]:
        """Close a job; returns it, the dependents now ready to publish, and those that must fail."""
        with self._lock:
            entry = self._open.pop(job_id, None)
            if entry is None:
                return None, [], []
            self._finished[job_id] = (status, detail)
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
