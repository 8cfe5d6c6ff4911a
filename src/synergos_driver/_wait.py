"""Waiting for queued work: `read(..., wait=True)` polls a scope until its records are there and
no job of that scope is still queued or running.

A Director answers phase 2 and 3 requests at once (202) and the records appear as the cluster's
grids finish; a basic TTP finishes within the request, so waiting returns at once there. The
jobs come from `GET /ttp/status/jobs` (see `_progress.py`); a job belongs to the scope when its
keys agree with every id the read names.
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
_EMPTY_SCOPE_CODES = frozenset({"validation.not_found", "model.not_found", "prediction.not_found",
                                "alignment.not_found", "optimization.not_found"})
FIRST_INTERVAL_S = 0.5
MAX_INTERVAL_S = 2.0
POLL_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _records(envelope: Envelope) -> list[Any]:
    data = envelope.get("data")
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _belongs(job: Mapping[str, Any], kinds: frozenset[str], scope: Mapping[str, str],
             run_filter: Callable[[str], bool] | None) -> bool:
    keys = job.get("keys")
    if job.get("kind") not in kinds or not isinstance(keys, Mapping):
        return False
    if run_filter is not None and not run_filter(str(keys.get("run_id") or "")):
        return False
    return all(keys.get(name) == value for name, value in scope.items() if name in keys)


def wait_for(
    session: Session,
    path: str,
    *,
    what: str,
    kinds: frozenset[str],
    scope: Mapping[str, str | None],
    timeout: float,
    ready: Callable[[list[Any]], bool] = bool,
    run_filter: Callable[[str], bool] | None = None,
) -> Envelope:
    """GET `path` until `ready(records)` and no job of `kinds` in `scope` is queued or running.

    Raises `JobFailed` when the newest finished job of the scope failed, and `WaitTimeout` after
    `timeout` seconds, naming `what` and the jobs still open.
    """
    named = {k: v for k, v in scope.items() if v is not None}
    params = {k: named[k] for k in ("collab_id", "project_id") if k in named}
    deadline = time.monotonic() + max(0.0, float(timeout))
    interval = FIRST_INTERVAL_S
    with session.watch(named.get("collab_id", ""), named.get("project_id")):
        while True:
            try:
                envelope = session.request("GET", path)
            except NotFound as error:
                if error.code not in _EMPTY_SCOPE_CODES:
                    raise  # an unknown id: waiting will not make it exist
                envelope = {"data": []}
            records = _records(envelope)
            jobs = _jobs(session, params, kinds, named, run_filter)
            open_jobs = [job for job in jobs if job.get("state") in ACTIVE]
            if not open_jobs:
                finished = sorted(jobs, key=lambda job: str(job.get("updated_at") or ""))
                if finished and finished[-1].get("state") == "failed":
                    raise JobFailed(finished[-1], what)
                if ready(records):
                    return envelope
            if time.monotonic() >= deadline:
                raise WaitTimeout(what, timeout, open_jobs)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, MAX_INTERVAL_S)


def _jobs(session: Session, params: dict[str, str], kinds: frozenset[str], scope: Mapping[str, str],
          run_filter: Callable[[str], bool] | None) -> list[Mapping[str, Any]]:
    try:
        envelope = session.request("GET", STATUS_JOBS, params=params, timeout=POLL_TIMEOUT, retries=0)
    except (ConnectionFailed, ResponseError):
        return []  # a status route that cannot answer: the records alone decide
    jobs = envelope.get("data")
    if not isinstance(jobs, list):
        return []
    return [job for job in jobs if isinstance(job, Mapping) and _belongs(job, kinds, scope, run_filter)]


def describe_open(jobs: list[Mapping[str, Any]]) -> str:
    if not jobs:
        return "no job is open, and no record appeared"
    lines = "; ".join(format_job(job) for job in jobs[:3])
    more = f" (and {len(jobs) - 3} more)" if len(jobs) > 3 else ""
    return f"{len(jobs)} job(s) still open: {lines}{more}"
