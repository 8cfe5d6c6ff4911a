"""The MLflow tracking server as a child process: command line, host choice, supervision.

`serve()` first creates or migrates the backend store `sqlite:///<mlflow_dir>/mlflow.db` (or
`--db_url`) itself, once and atomically (`backend.prepare`); a store it finds broken
(half-migrated, unreadable) is reported with the fix and MLflow is not started (exit status
`STORE_BROKEN_STATUS`). Then it starts `python -m mlflow server` from this interpreter's
environment with that store and proxied artifacts in `<mlflow_dir>/artifacts`, forwards
SIGTERM/SIGINT to it, and exits with its status.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from . import backend
from .settings import MLOpsSettings, in_container

log = logging.getLogger("synergos_mlops")
mlflow_log = logging.getLogger("synergos_mlops.mlflow")

STOP_GRACE_S = 15.0
STORE_BROKEN_STATUS = 78  # EX_CONFIG: the operator must fix the store; restarting will not
READY_TIMEOUT_S = 120.0
# MLflow's own default Host allow-list (localhost and private networks), plus every loopback
# address: outside containers each Synergos service binds its own 127.0.0.x.
DEFAULT_ALLOWED_HOSTS = [
    "localhost",
    "localhost:*",
    "127.*",
    "[[]::1]",
    "[[]::1]:*",
    "0.0.0.0",
    "0.0.0.0:*",
    "10.*",
    "192.168.*",
    *[f"172.{i}.*" for i in range(16, 32)],
    "fc00:*",
    "fd00:*",
]


def bind_host(explicit: str | None, env: Mapping[str, str]) -> str:
    """`--host`, else the host of `GUNICORN_CMD_ARGS --bind`, else 0.0.0.0 in a container,
    else 127.0.0.1."""
    if explicit:
        return explicit
    bound = _gunicorn_bind_host(env.get("GUNICORN_CMD_ARGS", ""))
    if bound:
        return bound
    return "0.0.0.0" if in_container() else "127.0.0.1"


def _gunicorn_bind_host(args: str) -> str | None:
    try:
        tokens = shlex.split(args)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if token.startswith("--bind="):
            value = token.split("=", 1)[1]
        elif token.startswith("-b") and len(token) > 2:
            value = token[2:].lstrip("=")
        elif token in ("--bind", "-b") and i + 1 < len(tokens):
            value = tokens[i + 1]
        else:
            continue
        if value.startswith(("unix:", "fd://")):
            continue
        if value.startswith("["):  # [::]:5500
            return value[1 : value.index("]")] if "]" in value else None
        host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
        return host or None
    return None


def allowed_hosts(settings: MLOpsSettings, host: str) -> str:
    if settings.allowed_hosts:
        return settings.allowed_hosts
    hosts = list(DEFAULT_ALLOWED_HOSTS)
    if host not in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
        hosts += [host, f"{host}:*"]
    return ",".join(hosts)


def backend_store_uri(settings: MLOpsSettings, mlflow_dir: Path) -> str:
    return settings.db_url or f"sqlite:///{mlflow_dir / 'mlflow.db'}"


def build_command(settings: MLOpsSettings, mlflow_dir: Path, host: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri(settings, mlflow_dir),
        "--serve-artifacts",
        "--artifacts-destination",
        str(mlflow_dir / "artifacts"),
        "--host",
        host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        "--allowed-hosts",
        allowed_hosts(settings, host),
    ]


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    out.pop("GUNICORN_CMD_ARGS", None)  # consumed above; the server runs on uvicorn
    # the GenAI job runner (extra processes) is of no use to Synergos; nor is usage telemetry
    out.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    out.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return out


def serve(settings: MLOpsSettings) -> int:
    mlflow_dir = settings.resolve_mlflow_dir()
    store = backend.prepare(backend_store_uri(settings, mlflow_dir))  # never lazily, by MLflow
    if not store.ready:
        log.error("Not starting MLflow: %s %s", store.reason, store.fix)
        return STORE_BROKEN_STATUS
    host = bind_host(settings.host, os.environ)
    command = build_command(settings, mlflow_dir, host)
    log.info(
        "Starting MLflow %s on http://%s:%s (store %s, artifacts %s)",
        settings.id,
        host,
        settings.port,
        backend_store_uri(settings, mlflow_dir).split("@")[-1],
        mlflow_dir / "artifacts",
    )
    # own process group, so stragglers (uvicorn workers) can be cleaned up as a group
    child = subprocess.Popen(
        command,
        env=child_env(os.environ),
        start_new_session=True,
        preexec_fn=_die_with_parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    # MLflow's own output goes through our logging: the service id on every line, `--censored`
    threading.Thread(target=_relay, args=(child,), name="mlflow-output", daemon=True).start()
    stopping: dict[str, float] = {}

    def forward(signum: int, _frame: object) -> None:
        stopping.setdefault("deadline", time.monotonic() + STOP_GRACE_S)
        if child.poll() is None:
            log.info("Stopping MLflow (signal %d)", signum)
            try:
                child.send_signal(signum)  # mlflow passes it on to its uvicorn server
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _announce_when_ready(child, host, settings.port)
        while child.poll() is None:
            if "deadline" in stopping and time.monotonic() > stopping["deadline"]:
                log.warning("MLflow did not stop within %.0fs; killing it", STOP_GRACE_S)
                _kill_group(child.pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            _kill_group(child.pid, signal.SIGKILL)
            child.wait()
        _kill_group(child.pid, signal.SIGKILL)  # anything left in its group
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = child.returncode
    log.info("MLflow exited with status %s", code)
    return 128 - code if code < 0 else code


def _relay(child: subprocess.Popen) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip():
            mlflow_log.info("%s", line.rstrip())


def _announce_when_ready(child: subprocess.Popen, host: str, port: int) -> None:
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in probe_host:
        probe_host = f"[{probe_host}]"
    url = f"http://{probe_host}:{port}/health"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                log.info("MLflow UI and tracking API ready at http://%s:%s", host, port)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    if child.poll() is None:
        log.warning("MLflow not answering on %s after %.0fs", url, READY_TIMEOUT_S)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """Linux: have the child receive SIGTERM if this supervisor dies without forwarding."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
