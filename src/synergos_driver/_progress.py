"""Progress of long work (alignment, training, validation, prediction) on stderr.

While a long request waits for its answer, a daemon thread polls
`GET /ttp/status/jobs?collab_id=…&project_id=…` every half second. Its envelope's `data` is a
list of jobs `{job_id, kind, keys, state, round, rounds, detail, metrics}`; each job's line is
printed when it changes, e.g.

    training collaboration_1/project_1/experiment_1/run_1: round 2/10 (evaluate loss 0.4123)

On a terminal the line is rewritten in place; otherwise each change is its own line. Jobs that
had already finished before the request began are not shown. Progress is a courtesy: if the
status route is missing (404) or fails, the display stops quietly and the request goes on.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from ._endpoints import STATUS_JOBS
from ._exceptions import ConnectionFailed, ResponseError, SynergosError

if TYPE_CHECKING:
    from ._session import Session

TERMINAL = frozenset({"completed", "failed", "interrupted"})


def format_job(job: Mapping[str, Any]) -> str:
    """One human line for one job."""
    kind = str(job.get("kind") or "job")
    keys = job.get("keys")
    if isinstance(keys, Mapping):
        scope = "/".join(str(value) for value in keys.values() if value is not None)
    else:
        scope = str(keys or "")
    state = str(job.get("state") or "unknown")
    done, total = job.get("round"), job.get("rounds")
    rounds = None
    if done is not None:
        rounds = f"round {done}/{total}" if total else f"round {done}"

    if state == "running" and rounds:
        text = rounds
    elif rounds and state != "queued":
        text = f"{state} at {rounds}"
    else:
        text = state
    metrics = job.get("metrics")
    if isinstance(metrics, Mapping):
        shown = [
            f"{str(name).replace('_', ' ')} {_number(value)}"
            for name, value in metrics.items()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool)
        ]
        if shown:
            text += f" ({', '.join(shown)})"
    detail = job.get("detail")
    if detail:
        text += f": {detail}" if state in ("failed", "interrupted") else f" [{detail}]"
    return f"{kind} {scope}: {text}" if scope else f"{kind}: {text}"


def _number(value: int | float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-4 <= abs(value) < 1e6 or value == 0 else f"{value:.4g}"
    return str(value)


class JobProgress:
    """Context manager: poll job status in a background thread while the `with` body runs."""

    interval = 0.5
    poll_timeout = httpx.Timeout(5.0)
    max_silent_polls = 3  # consecutive unanswered polls before giving up

    def __init__(self, session: Session, params: dict[str, str], stream: TextIO | None = None) -> None:
        self._session = session
        self._params = params
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="synergos-progress", daemon=True)
        self._shown: dict[str, str] = session.progress_shown
        self._baseline: set[str] | None = None
        self._alive = True
        self._silent = 0
        self._dangling = False  # a TTY line written without its newline

    def __enter__(self) -> JobProgress:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=float(self.poll_timeout.read or 5.0) + 1.0)
        answered = exc is None or isinstance(exc, ResponseError)
        if answered and self._alive and not self._thread.is_alive():
            self._poll()  # the final state of the work the request just finished
        if self._dangling:
            self._write("\n")

    # ---- the polling thread ----

    def _run(self) -> None:
        while self._alive:
            self._poll()
            if self._stop.wait(self.interval):
                return

    def _poll(self) -> None:
        try:
            envelope = self._session.request(
                "GET", STATUS_JOBS, params=self._params, timeout=self.poll_timeout, retries=0
            )
        except ConnectionFailed:
            self._silent += 1
            self._alive = self._silent < self.max_silent_polls
            return
        except Exception:  # noqa: BLE001 - 404, an error answer, anything: progress just stops
            self._alive = False
            return
        self._silent = 0
        jobs = envelope.get("data")
        if not isinstance(jobs, list):
            return
        try:
            self._show([job for job in jobs if isinstance(job, Mapping)])
        except (SynergosError, ValueError, TypeError, OSError):
            self._alive = False

    def _show(self, jobs: list[Mapping[str, Any]]) -> None:
        if self._baseline is None:
            # What had already finished before this request began is history, not progress.
            self._baseline = {_job_id(job) for job in jobs if job.get("state") in TERMINAL}
        for job in jobs:
            job_id = _job_id(job)
            if job_id in self._baseline:
                continue
            line = format_job(job)
            if self._shown.get(job_id) == line:
                continue
            self._shown[job_id] = line
            self._emit(line, final=job.get("state") in TERMINAL)

    def _emit(self, line: str, *, final: bool) -> None:
        stream = self._stream or sys.stderr
        if _is_tty(stream):
            self._write("\r" + line + "\x1b[K" + ("\n" if final else ""))
            self._dangling = not final
        else:
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text)
        stream.flush()


def _job_id(job: Mapping[str, Any]) -> str:
    job_id = job.get("job_id")
    if job_id is not None:
        return str(job_id)
    return f"{job.get('kind')}:{job.get('keys')}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
