"""Waiting for queued work: `read(..., wait=True)` polls a scope until its records are there and
no job of that scope is still queued or running.

A Director answers phase 2 and 3 requests at once (202) and the records appear as the cluster's
grids finish; a basic TTP finishes within the request, so waiting returns at once there. The
jobs come from `GET /ttp/status/jobs` (see `_progress.py`); a job belongs to the scope when its
keys agree with every id the read names. The work failed when the latest job of any key in scope
ended `failed` or `interrupted` (a later retry that completed supersedes it). Each poll is bounded in time; a
connection that fails between polls is tried again until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ._endpoints import STATUS_JOBS
from ._exceptions import ConnectionFailed, JobFailed, NotFound, ResponseError, WaitTimeout
from ._progress import format_job

if TYPE_CHECKING:
    from ._session import Envelope, Session

ACTIVE = frozenset({"queued", "running"})
# what an older server answered for a scope with no records yet (not an unknown id)
_EMPTY_SCOPE_CODES = frozenset(
    {"validation.not_found", "model.not_found", "prediction.not_found", "alignment.not_found", "optimization.not_found"}
)
FIRST_INTERVAL_S = 0.5
MAX_INTERVAL_S = 2.0
POLL_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # one poll of the job status
RECORDS_TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # one read of the records


def _records(envelope: Envelope) -> list[Any]:
    data = envelope.get("data")
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _belongs(
    job: Mapping[str, Any],
    kinds: frozenset[str],
    scope: Mapping[str, str],
    run_filter: Callable[[Mapping[str, Any]], bool] | None,
) -> bool:
    keys = job.get("keys")
    if job.get("kind") not in kinds or not isinstance(keys, Mapping):
        return False
    if run_filter is not None and not run_filter(job):
        return False
    return all(keys.get(name) == value for name, value in scope.items() if name in keys)


def _latest_failure(jobs: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The failed job among the latest job of each (kind, keys), if any (the newest such)."""
    latest: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    # the server lists jobs in the order they started; `started_at` (when given) decides ties
    for job in sorted(jobs, key=lambda job: str(job.get("started_at") or "")):
        keys = job.get("keys")
        ident = tuple(sorted((str(k), str(v)) for k, v in keys.items())) if isinstance(keys, Mapping) else ()
        latest[(job.get("kind"), ident)] = job
    # interrupted: the service stopped while the job ran; waiting will not finish it (request it again)
    failed = [job for job in latest.values() if job.get("state") in ("failed", "interrupted")]
    return max(failed, key=lambda job: str(job.get("updated_at") or ""), default=None)


def wait_for(
    session: Session,
    path: str,
    *,
    what: str,
    kinds: frozenset[str],
    scope: Mapping[str, str | None],
    timeout: float,
    ready: Callable[[list[Any]], bool] = bool,
    run_filter: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Envelope:
    """GET `path` until `ready(records)` and no job of `kinds` in `scope` is queued or running.

    Raises `JobFailed` when the latest job of a key in scope failed, and `WaitTimeout` after
    `timeout` seconds, naming `what` and the jobs still open. An unknown id raises `NotFound` at
    once; a connection that keeps failing raises `ConnectionFailed` at the deadline.
    """
    named = {k: v for k, v in scope.items() if v is not None}
    params: dict[str, str] = {k: named[k] for k in ("collab_id", "project_id") if k in named}
    deadline = time.monotonic() + max(0.0, float(timeout))
    interval = FIRST_INTERVAL_S
    with session.watch(named.get("collab_id", ""), named.get("project_id")):
        while True:
            unreachable: ConnectionFailed | None = None
            envelope: Envelope = {"data": []}
            try:
                envelope = session.request("GET", path, timeout=RECORDS_TIMEOUT)
            except NotFound as error:
                if error.code not in _EMPTY_SCOPE_CODES:
                    raise  # an unknown id: waiting will not make it exist
            except ConnectionFailed as error:
                unreachable = error  # the server may be restarting: try again until the deadline
            records = _records(envelope)
            jobs = _jobs(session, params, kinds, named, run_filter) if unreachable is None else []
            open_jobs = [job for job in jobs if job.get("state") in ACTIVE]
            if unreachable is None and not open_jobs:
                failed = _latest_failure(jobs)
                if failed is not None:
                    raise JobFailed(dict(failed), what)
                if ready(records):
                    return envelope
            if time.monotonic() >= deadline:
                if unreachable is not None:
                    raise unreachable
                raise WaitTimeout(what, timeout, open_jobs, records=len(records))
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, MAX_INTERVAL_S)


def _jobs(
    session: Session,
    params: dict[str, str],
    kinds: frozenset[str],
    scope: Mapping[str, str],
    run_filter: Callable[[Mapping[str, Any]], bool] | None,
) -> list[Mapping[str, Any]]:
    try:
        envelope = session.request("GET", STATUS_JOBS, params=params, timeout=POLL_TIMEOUT, retries=0)
    except (ConnectionFailed, ResponseError):
        return []  # a status route that cannot answer: the records alone decide
    jobs = envelope.get("data")
    if not isinstance(jobs, list):
        return []
    return [job for job in jobs if isinstance(job, Mapping) and _belongs(job, kinds, scope, run_filter)]


def describe_open(jobs: list[Mapping[str, Any]], records: int = 0) -> str:
    """What a timed-out wait saw last: the jobs still open, else what was (not) there."""
    if not jobs:
        if records:
            return f"{_count(records, 'record')} there but not complete, and no job is queued or running"
        return "no record yet, and no job is queued or running for it (was the work requested?)"
    lines = "; ".join(format_job(job) for job in jobs[:3])
    more = f" (and {len(jobs) - 3} more)" if len(jobs) > 3 else ""
    return f"{_count(len(jobs), 'job')} still open: {lines}{more}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
