"""`Tracker`: record Synergos runs in MLflow without ever blocking or failing the caller.

Every public method only normalises its inputs into an operation, journals it to a JSONL
spool and queues it; one background thread applies the operations in order with
`MlflowClient(uri)`. While a tracking server is unreachable (or its store is busy) the thread
retries with capped exponential backoff, logging one warning per outage; a restart reloads
the spool. Operations are idempotent (see `operations`), so re-applying after a crash is safe.
Operations MLflow refuses outright (bad values, unknown run) are logged and dropped; other
errors are retried a few times, then dropped with an error log.

A store found broken (`backend.prepare` at start-up, or `backend.check` when a SQLite store
fails at run time: half-migrated, unreadable) is never retried: tracking to it is disabled, said
once in the log and in `status()`, and its operations are kept in the spool, applied by the next
Tracker that finds the store fixed.

Environment: a Tracker sets these in its process unless they are already set —
`MLFLOW_HTTP_REQUEST_MAX_RETRIES=2` (the Tracker does its own retrying; MLflow's default of 7
retries, ~4 min, would hold the worker long after a server went away),
`MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true` (no bare prints from the worker thread that
bypass the service's log format and `--censored`), and `MLFLOW_DISABLE_TELEMETRY=true`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import backend, operations
from .naming import CHAMPION_ALIAS, RUN_KEY_TAG, registered_model_name
from .spool import Spool

__all__ = ["Tracker", "default_uri_for", "tracking_uri"]

log = logging.getLogger("synergos_mlops.tracking")

DEFAULT_PORT = 5500
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

ClientFactory = Callable[[str], Any]
Probe = Callable[[str], bool]


def tracking_uri(mlops_section: Mapping[str, Any] | Any | None, default_uri: str) -> str:
    """`http(s)://host:ports.main` from a collaboration's `mlops` section (`{host, ports: {main,
    ui}, secure}`; main defaults to 5500), else `default_uri`."""
    section = mlops_section
    if section is not None and not isinstance(section, Mapping) and hasattr(section, "model_dump"):
        section = section.model_dump()
    if not isinstance(section, Mapping) or not section.get("host"):
        return default_uri
    host = str(section["host"]).strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    ports = section.get("ports") or {}
    port = ports.get("main") if isinstance(ports, Mapping) else getattr(ports, "main", None)
    scheme = "https" if section.get("secure") else "http"
    return f"{scheme}://{host}:{port or DEFAULT_PORT}"


def default_uri_for(mlflow_dir: Path) -> str:
    """The shared MLflow store in `mlflow_dir`: `sqlite:///<mlflow_dir>/mlflow.db`
    (artifacts under `<mlflow_dir>/artifacts`)."""
    return f"sqlite:///{Path(mlflow_dir).resolve() / 'mlflow.db'}"


def mlflow_client(uri: str) -> Any:
    """The default client factory: an `MlflowClient` for tracking and registry at `uri`."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def http_probe(uri: str, timeout: float = 2.0) -> bool:
    """Whether a tracking server answers at all (any HTTP status counts); stores that are not
    servers are always 'reachable'."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def display_uri(uri: str) -> str:
    """A URI fit for a log line: credentials removed."""
    return re.sub(r"//[^/@]*@", "//", uri)


@dataclass
class _Entry:
    seq: int
    op: dict[str, Any]
    attempts: int = field(default=0)


class Tracker:
    """Queue MLflow operations for Synergos runs; apply them in order on a background thread.

    `keys` is `{collab_id, project_id, expt_id, run_id}`; `uri` the run's tracking target
    (see `tracking_uri`), falling back to `default_uri` when empty.
    """

    def __init__(
        self,
        default_uri: str,
        spool_dir: Path,
        *,
        retry_cap_s: float = 10.0,
        client_factory: ClientFactory | None = None,
        probe: Probe | None = None,
        max_attempts: int = 5,
        first_backoff_s: float = 0.5,
        disabled: Mapping[str, backend.StoreStatus] | None = None,
    ) -> None:
        for name, value in MLFLOW_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.default_uri = default_uri
        self.retry_cap_s = retry_cap_s
        self._client_factory = client_factory or mlflow_client
        self._probe = probe or http_probe
        self._max_attempts = max_attempts
        self._first_backoff_s = first_backoff_s
        self._clients: dict[str, Any] = {}
        self._outages: set[str] = set()
        self._disabled: dict[str, backend.StoreStatus] = dict(disabled or {})
        self._held = 0  # spooled operations for a disabled store: kept, never attempted
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._nudged = False
        self._closed = False
        self._spool = Spool(Path(spool_dir))
        for seq, op in self._spool.open():
            if op.get("uri") in self._disabled:
                self._held += 1
            else:
                self._queue.append(_Entry(seq, op))
        if self._held:
            log.warning("%d spooled MLflow operations wait for a disabled store (see /health)", self._held)
        self._thread = threading.Thread(target=self._work, name="synergos-mlflow-tracker", daemon=True)
        self._thread.start()

    # -- public API: enqueue only -----------------------------------------------------------
    def start_run(
        self, uri: str, keys: Mapping[str, Any], params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> None:
        """Create (or find) the run, mark it RUNNING, log its params (stringified, truncated)."""
        self._submit(
            "start_run", uri, keys, lambda: {"params": operations.params_of(params), "tags": operations.tags_of(tags)}
        )

    def log_training(
        self,
        uri: str,
        keys: Mapping[str, Any],
        history: Mapping[str, Any],
        local_history: Mapping[str, Mapping[Any, Any]],
        artifacts: list[Path],
        model_path: Path | None,
    ) -> None:
        """Per-round losses, artifact files (`artifacts/`), the model (`model/`, registered as a
        new version of the experiment's registered model); then the run is FINISHED."""
        self._submit(
            "log_training",
            uri,
            keys,
            lambda: {
                "metrics": operations.training_metrics(history, local_history),
                "artifacts": [str(Path(p).resolve()) for p in artifacts or []],
                "model": str(Path(model_path).resolve()) if model_path else None,
            },
        )

    def fail_run(self, uri: str, keys: Mapping[str, Any], reason: str) -> None:
        """Tag `synergos.failure` and terminate FAILED (creating the run if it never started)."""
        self._submit("fail_run", uri, keys, lambda: {"reason": str(reason)})

    def log_validation(
        self, uri: str, keys: Mapping[str, Any], per_participant: Mapping[str, Any], aggregate: Mapping[str, Any] | None
    ) -> None:
        """Validation statistics at step 0: `<participant>_<stat>`, a list as
        `<participant>_<stat>_class_<i>`, and `aggregate_<stat>`."""
        self._submit(
            "log_validation", uri, keys, lambda: {"metrics": operations.validation_metrics(per_participant, aggregate)}
        )

    def set_champion(self, uri: str, collab_id: str, project_id: str, expt_id: str, run_id: str) -> None:
        """Point the registered model's `champion` alias at the latest version from that run."""
        keys = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id, "run_id": run_id}
        self._submit("set_champion", uri, keys, dict)

    # -- public API: synchronous ------------------------------------------------------------
    def champion(
        self, uri: str, collab_id: str, project_id: str, expt_id: str, timeout: float = 3.0
    ) -> dict[str, Any] | None:
        """`{registered_model, version, run_id}` of the experiment's champion, or None when there
        is none or MLflow does not answer within `timeout`."""
        uri = uri or self.default_uri
        name = registered_model_name(str(collab_id), str(project_id), str(expt_id))
        if uri in self._disabled:
            return None
        try:
            if uri.startswith(("http://", "https://")):
                return _champion_over_rest(uri, name, timeout)
            if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :].split("?", 1)[0]).exists():
                return None
            return _champion_with_client(self._client_factory(uri), name)
        except Exception as exc:  # noqa: BLE001 - unreachable, no such model, no alias: "no champion known"
            log.debug("No MLflow champion for %s at %s: %s", name, display_uri(uri), exc)
            return None

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def status(self) -> dict[str, Any]:
        """How tracking stands: operations queued, and each disabled store with why and the fix."""
        with self._cond:
            return {
                "pending": len(self._queue),
                "held": self._held,
                "disabled": [status.health() for status in self._disabled.values()],
            }

    def flush(self, timeout: float) -> bool:
        """Retry now, and wait until nothing is pending (True) or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._nudged = True
            self._cond.notify_all()
            while self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`, then stop; the rest stays spooled."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._cond:
            left = len(self._queue)
            self._spool.close()
        if left:
            log.warning(
                "MLflow tracker stopped with %d operations pending; they are spooled in %s",
                left,
                self._spool.path or "memory only (lost)",
            )

    # -- internals ----------------------------------------------------------------------------
    def _submit(self, kind: str, uri: str, keys: Mapping[str, Any], fields: Callable[[], dict]) -> None:
        try:
            op = operations.new_op(kind, uri or self.default_uri, keys, **fields())
        except Exception as exc:  # noqa: BLE001 - bad input: say so, never raise into training code
            log.error("MLflow %s not recorded: invalid input (%s: %s)", kind, type(exc).__name__, exc)
            return
        with self._cond:
            if self._closed:
                log.warning("MLflow tracker closed; %s for %s not recorded", kind, op["keys"])
                return
            seq = self._spool.append(op)
            if op["uri"] in self._disabled:
                self._held += 1
                if self._held == 1:
                    status = self._disabled[op["uri"]]
                    log.warning(
                        "MLflow tracking to %s is disabled (%s); records are kept in %s",
                        display_uri(op["uri"]),
                        status.reason,
                        self._spool.path or "memory only",
                    )
                return
            self._queue.append(_Entry(seq, op))
            self._cond.notify_all()

    def _work(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                entry = self._queue[0]
            done = self._attempt(entry)
            with self._cond:
                if entry.op["uri"] in self._disabled:  # found broken: keep its operations, stop trying
                    kept = [e for e in self._queue if e.op["uri"] == entry.op["uri"]]
                    self._queue = deque(e for e in self._queue if e.op["uri"] != entry.op["uri"])
                    self._held += len(kept)
                    self._cond.notify_all()
                    failures = 0
                    continue
                if done:
                    self._queue.popleft()
                    self._spool.done(entry.seq, now_empty=not self._queue and not self._held)
                    self._cond.notify_all()
                    failures = 0
                    continue
                failures += 1
                delay = min(self.retry_cap_s, self._first_backoff_s * 2 ** min(failures - 1, 30))
                deadline = time.monotonic() + delay
                while not self._closed and not self._nudged:  # flush() cuts the wait short
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._nudged = False

    def _attempt(self, entry: _Entry) -> bool:
        """Apply one operation; True when it is finished with (applied or given up)."""
        op = entry.op
        uri = op["uri"]
        where = (
            f"{op['kind']} for {op['keys'].get('collab_id')}/{op['keys'].get('project_id')}/"
            f"{op['keys'].get('expt_id')}/{op['keys'].get('run_id')}"
        )
        if not self._probe(uri):
            self._outage(uri, "no answer")
            return False
        try:
            client = self._clients.get(uri)
            if client is None:
                client = self._clients[uri] = self._client_factory(uri)
            operations.apply(client, op)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the op spooled for a retry
            self._clients.pop(uri, None)
            if backend.sqlite_path(uri) is not None:
                status = backend.check(uri)
                if not status.ready:  # half-migrated, unreadable: retrying would fail forever
                    self._disable(status)
                    return False
            code = operations.error_code(exc)
            if _is_unavailable(exc) or code in operations.UNAVAILABLE_CODES or not self._probe(uri):
                self._outage(uri, f"{type(exc).__name__}: {exc}")
                return False
            if (
                isinstance(exc, (operations.PermanentError, ValueError, TypeError, KeyError))
                or code in operations.PERMANENT_CODES
            ):
                log.warning("MLflow at %s refused %s; dropped: %s", display_uri(uri), where, exc)
                return True
            entry.attempts += 1
            if entry.attempts >= self._max_attempts:
                log.error("MLflow at %s failed %s %d times; dropped: %s", display_uri(uri), where, entry.attempts, exc)
                return True
            log.warning(
                "MLflow at %s failed %s (attempt %d of %d), retrying: %s",
                display_uri(uri),
                where,
                entry.attempts,
                self._max_attempts,
                exc,
            )
            return False
        if uri in self._outages:
            self._outages.discard(uri)
            log.info("MLflow at %s reachable again; %d operations to apply", display_uri(uri), self.pending() - 1)
        return True

    def _disable(self, status: backend.StoreStatus) -> None:
        with self._cond:
            self._disabled[status.uri] = status
        log.error("MLflow tracking to %s is disabled: %s %s", display_uri(status.uri), status.reason, status.fix)

    def _outage(self, uri: str, why: str) -> None:
        if uri in self._outages:
            return
        self._outages.add(uri)
        log.warning(
            "MLflow at %s unreachable; %d operations waiting (retrying at least every %gs; spooled in %s): %s",
            display_uri(uri),
            self.pending(),
            self.retry_cap_s,
            self._spool.path or "memory",
            why,
        )


def _is_unavailable(exc: BaseException) -> bool:
    """A connection failure, timeout or busy database, whoever raised it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ConnectionError", "TimeoutError", "Timeout", "OperationalError", "TransportError"}:
        return True
    text = str(exc)
    return "database is locked" in text or ("Max retries exceeded" in text and "NewConnectionError" in text)


def _champion_over_rest(uri: str, name: str, timeout: float) -> dict[str, Any] | None:
    base = f"{uri.rstrip('/')}/api/2.0/mlflow"
    with httpx.Client(timeout=timeout) as http:
        response = http.get(f"{base}/registered-models/alias", params={"name": name, "alias": CHAMPION_ALIAS})
        if response.status_code != 200:
            return None
        version = response.json()["model_version"]
        run = http.get(f"{base}/runs/get", params={"run_id": version["run_id"]})
        run.raise_for_status()
        info = run.json()["run"]
        tags = {t["key"]: t["value"] for t in info.get("data", {}).get("tags", [])}
        return {
            "registered_model": name,
            "version": str(version["version"]),
            "run_id": _synergos_run_id(info["info"].get("run_name"), tags),
        }


def _champion_with_client(client: Any, name: str) -> dict[str, Any] | None:
    version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    run = client.get_run(version.run_id)
    return {
        "registered_model": name,
        "version": str(version.version),
        "run_id": _synergos_run_id(run.info.run_name, run.data.tags),
    }


def _synergos_run_id(run_name: str | None, tags: Mapping[str, str]) -> str | None:
    if tags.get("synergos.run_id"):
        return tags["synergos.run_id"]
    if tags.get(RUN_KEY_TAG):
        return tags[RUN_KEY_TAG].rsplit("/", 1)[-1]
    return run_name
