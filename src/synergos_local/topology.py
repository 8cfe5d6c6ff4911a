"""Start and stop Synergos service processes on loopback, each on its own address.

Every process started here is stopped by its PID when the context ends, even on failure.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

GUIDE_ADDRESSES = {
    "director": "127.0.0.152",
    "ttp": "127.0.0.153",
    "worker_1": "127.0.0.154",
    "worker_2": "127.0.0.155",
    "mlops": "127.0.0.156",
}


def loopback_block(ports: tuple[int, ...] = (5000, 8020)) -> str:
    """A random 127.a.b prefix whose .1-.9 addresses are free on `ports`, so that test sessions
    running side by side never meet on an address."""
    import random
    import socket

    rng = random.Random()
    for _ in range(50):
        prefix = f"127.{rng.randint(10, 250)}.{rng.randint(0, 255)}"
        try:
            for host in range(1, 10):
                for port in ports:
                    with socket.socket() as sock:
                        sock.bind((f"{prefix}.{host}", port))
            return prefix
        except OSError:
            continue
    raise RuntimeError("no free loopback block found")


class Identities:
    """One collaboration's credentials for a local topology, provisioned on demand under `root`
    (`synergos-provision` does the same for real deployments): every service and user started
    here is issued from the same CA, so services of several `Topology` blocks trust each other."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, name: str, role: str) -> Path:
        from synergos_core.identity import Role, provision

        return provision(self.root, {Role(role): [name]})[name]

    def user(self, name: str = "orchestrator") -> Path:
        """An orchestrator user's folder: what the Driver takes (`credentials=` or SYNERGOS_CREDENTIALS)."""
        return self.folder(name, "orchestrator")

    def participant(self, name: str) -> Path:
        return self.folder(name, "participant")


@dataclass
class Service:
    name: str
    args: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    role: str | None = None  # ttp, director or worker: the identity it is issued; None for MLflow
    credentials: Path | None = None

    def secure(self, folder: Path | None) -> None:
        """Start with this identity (None: with --insecure, development only)."""
        if self.role is None:
            return
        if folder is None:
            self.args = [*self.args, "--insecure"]
            return
        self.credentials = folder
        self.args = [*self.args, "--credentials", str(folder)]
        self.health_url = self.health_url.replace("http://", "https://", 1)

    def _verify(self) -> ssl.SSLContext | bool:
        if self.credentials is None:
            return True
        from synergos_core.identity import Credentials

        return Credentials.load(self.credentials).client_context()

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        verify = self._verify()
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}:\n" + self.tail()
                )
            try:
                if httpx.get(self.health_url, timeout=1.0, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {self.health_url} within {timeout:.0f} s:\n" + self.tail())

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _cli(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def worker(
    name: str,
    host: str,
    port: int,
    ws_port: int,
    data_dir: Path,
    outputs_dir: Path,
    log_dir: Path,
    extra: list[str] | None = None,
) -> Service:
    args = (
        _cli("synergos_worker")
        + [
            "--id",
            name,
            "--logging_variant",
            "basic",
            "--censored",
            "--host",
            host,
            "--port",
            str(port),
            "--ws_port",
            str(ws_port),
            "--data_dir",
            str(data_dir),
            "--outputs_dir",
            str(outputs_dir),
        ]
        + (extra or [])
    )
    return Service(name, args, f"http://{host}:{port}/health", log_dir / f"{name}.log", role="worker")


def ttp(name: str, host: str, port: int, workdir: Path, log_dir: Path, extra: list[str] | None = None) -> Service:
    """A basic TTP, or with `extra=cluster_flags(...)` a cluster TTP; `workdir` may be shared."""
    return _orchestrator("synergos_ttp", "ttp", name, host, port, workdir, log_dir, extra)


def director(name: str, host: str, port: int, workdir: Path, log_dir: Path, extra: list[str] | None = None) -> Service:
    return _orchestrator("synergos_director", "director", name, host, port, workdir, log_dir, extra)


def mlops(name: str, host: str, port: int, mlflow_dir: Path, log_dir: Path) -> Service:
    """The MLflow tracking server and UI, its store and artifacts in `mlflow_dir` (the shared volume)."""
    args = _cli("synergos_mlops") + [
        "--id",
        name,
        "--logging_variant",
        "basic",
        "--host",
        host,
        "--port",
        str(port),
        "--mlflow_dir",
        str(mlflow_dir),
    ]
    return Service(name, args, f"http://{host}:{port}/", log_dir / f"{name}.log")


def cluster_flags(mq_host: str, mq_port: int, grid: int | None = None) -> list[str]:
    flags = ["--queue", "rabbitmq", mq_host, str(mq_port), "--censored"]
    return flags + (["--grid", str(grid)] if grid is not None else [])


def _orchestrator(
    module: str, role: str, name: str, host: str, port: int, workdir: Path, log_dir: Path, extra: list[str] | None
) -> Service:
    args = (
        _cli(module)
        + [
            "--id",
            name,
            "--logging_variant",
            "basic",
            "--host",
            host,
            "--port",
            str(port),
            "--data_dir",
            str(workdir / "data"),
            "--outputs_dir",
            str(workdir / "outputs"),
            "--mlflow_dir",
            str(workdir / "mlflow"),
        ]
        + (extra or [])
    )
    return Service(name, args, f"http://{host}:{port}/health", log_dir / f"{name}.log", role=role)


class Topology:
    """`with Topology(identities) as topo:` start services, wait until healthy; all stopped on exit.

    Each service is started with its own identity from `identities` (provisioned on first use);
    without `identities`, a fresh collaboration CA in a temporary folder removed on exit.
    `insecure=True` starts them with `--insecure` instead (development only)."""

    def __init__(self, identities: Identities | None = None, *, insecure: bool = False) -> None:
        self.services: list[Service] = []
        self._stack = ExitStack()
        self.insecure = insecure
        if identities is None and not insecure:
            identities = Identities(Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="synergos-ca-"))))
        self.identities = identities

    def add(self, service: Service) -> Service:
        if service.role is not None:
            service.secure(None if self.identities is None else self.identities.folder(service.name, service.role))
        self.services.append(service.start())
        self._stack.callback(service.stop)
        return service

    def wait(self, timeout: float = 90.0) -> None:
        for service in self.services:
            service.wait_healthy(timeout)

    def user(self, name: str = "orchestrator") -> Path | None:
        """An orchestrator user's credentials folder for the Driver (None when insecure)."""
        return None if self.identities is None else self.identities.user(name)

    def client(self, name: str = "orchestrator") -> httpx.Client:
        """An HTTP client holding `name`'s identity (plain when insecure), closed with the topology."""
        verify: ssl.SSLContext | bool = True
        folder = self.user(name)
        if folder is not None:
            from synergos_core.identity import Credentials

            verify = Credentials.load(folder).client_context()
        client = httpx.Client(verify=verify, timeout=60.0)
        self._stack.callback(client.close)
        return client

    def scheme(self) -> str:
        return "http" if self.identities is None else "https"

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
