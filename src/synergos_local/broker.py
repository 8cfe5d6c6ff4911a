"""RabbitMQ on this machine: the demo's broker (`ensure_local_broker`) and a private one per test
session (`TestBroker`).

Both need the `rabbitmq-server` package. When it is missing and we run as root it is installed
with `apt-get update && apt-get install -y rabbitmq-server` (Debian/Ubuntu); otherwise the error
says how to install it.

`TestBroker` never touches a system broker: its own node name, AMQP/distribution/epmd ports,
Erlang cookie, data, logs and config all live under a temporary directory, and everything it
starts is stopped by PID (or by `rabbitmqctl -n <its node> stop`) when the context ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions

from synergos_mq import BrokerAddress

# Debian's /usr/sbin/rabbitmq-* are wrappers that `su` to the rabbitmq user and use its cookie;
# the real scripts live here and run as whoever calls them, which a private node needs.
_DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
MANAGEMENT_URL = "http://localhost:15672"
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an AMQP 0-9-1 broker answers on host:port (it sends Connection.Start)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_AMQP_HEADER)
            first = sock.recv(7)
            return len(first) == 7 and first[0] == 1  # a method frame on channel 0
    except OSError:
        return False


def ensure_rabbitmq_installed() -> None:
    """Install Debian's `rabbitmq-server` package if its scripts are missing (needs root)."""
    if _find_script("rabbitmq-server", system=True):
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            "rabbitmq-server is not installed; install it with: "
            "sudo apt-get update && sudo apt-get install -y rabbitmq-server"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "rabbitmq-server"], check=True, env=env)
    if not _find_script("rabbitmq-server", system=True):
        raise RuntimeError("rabbitmq-server is still missing after apt-get install")


# --- the demo's broker ------------------------------------------------------------------------


@dataclass
class LocalBroker:
    """The broker `ensure_local_broker` found or started. `stop()` stops it only if it started it."""

    address: BrokerAddress
    started: bool
    management_url: str = MANAGEMENT_URL
    started_epmd: bool = False

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (and the epmd it brought up) if `ensure_local_broker` started them."""
        if not self.started:
            return
        subprocess.run(
            [_script("rabbitmqctl", system=True), "stop"], env=_system_env(), capture_output=True, timeout=timeout
        )
        deadline = time.monotonic() + timeout
        while amqp_answers(self.address.host, self.address.port, timeout=1) and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.started_epmd:
            # epmd refuses `-kill` while any node is still registered with it.
            subprocess.run(
                [shutil.which("epmd") or "/usr/lib/erlang/bin/epmd", "-kill"],
                env=_system_env(),
                capture_output=True,
                timeout=10,
                check=False,
            )
        self.started = False


def ensure_local_broker(timeout: float = 60.0, *, host: str = "localhost", port: int = 5672) -> LocalBroker:
    """A RabbitMQ broker on localhost for the demo.

    If one answers on host:port it is used as is (`started=False`). Otherwise the system node is
    started with `rabbitmq-server -detached` (installing the package first if needed, as root),
    and this waits until it answers, then enables the management UI. The returned handle's
    `stop()` stops the node only when this call started it, so a broker someone else runs is
    never stopped by the demo.
    """
    address = BrokerAddress(host=host, port=port)
    if amqp_answers(host, port):
        print(f"RabbitMQ already running at {address}; management UI (if enabled): {MANAGEMENT_URL}")
        return LocalBroker(address, started=False)
    ensure_rabbitmq_installed()
    epmd_was_running = _port_open("localhost", 4369)
    subprocess.run(
        [_script("rabbitmq-server", system=True), "-detached"],
        env=_system_env(),
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    deadline = time.monotonic() + timeout
    while not amqp_answers(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"RabbitMQ did not answer on {host}:{port} within {timeout:.0f} s (see /var/log/rabbitmq/)"
            )
        time.sleep(0.5)
    broker = LocalBroker(address, started=True, started_epmd=not epmd_was_running)
    plugins = subprocess.run(
        [_script("rabbitmq-plugins", system=True), "enable", "rabbitmq_management"],
        env=_system_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if plugins.returncode != 0:
        print(
            f"RabbitMQ started at {address}, but the management plugin could not be enabled: "
            f"{plugins.stderr.strip()[-300:]}"
        )
    else:
        print(f"RabbitMQ started at {address}; management UI at {MANAGEMENT_URL} (guest/guest)")
    return broker


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _system_env() -> dict[str, str]:
    # A caller's RABBITMQ_*/ERL_* settings (say, from a TestBroker) must not leak into the system node.
    return {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}


def _find_script(name: str, *, system: bool = False) -> str | None:
    """Path of a RabbitMQ script, None when it is not installed. `system`: the distribution's entry
    point (Debian's wrapper that runs as the rabbitmq user); otherwise the real script that runs as
    the caller."""
    if not system and (_DEBIAN_SCRIPTS / name).exists():
        return str(_DEBIAN_SCRIPTS / name)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/usr/lib/rabbitmq/bin")


def _script(name: str, *, system: bool = False) -> str:
    found = _find_script(name, system=system)
    if found is None:
        raise RuntimeError(f"{name} is not installed: install Debian's rabbitmq-server (make install does)")
    return found


# --- a private broker for tests ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_range(size: int) -> int:
    """The first port of `size` consecutive free ports (for the CLI tools' distribution ports)."""
    for _ in range(100):
        base = secrets.randbelow(20_000) + 20_000
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range found")


class TestBroker:
    """A dedicated RabbitMQ node for one test session, on free loopback ports.

        with TestBroker() as broker:
            consumer = JobConsumer(broker.address, handler, name="ttp")

    The node (`synergos_<random>@localhost`) runs as a child process with its own epmd, cookie,
    data, logs and config under a temporary directory; on exit it is stopped with
    `rabbitmqctl -n <node> stop`, waited for, and killed by PID if it will not go, even when the
    body failed. `management=True` also serves the management UI on a free port (`management_url`).
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, *, startup_timeout: float = 60.0, management: bool = False) -> None:
        self.startup_timeout = startup_timeout
        self.management = management
        self.node = f"synergos_{secrets.token_hex(4)}@localhost"
        self.address: BrokerAddress | None = None
        self.management_url: str | None = None
        self.workdir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._env: dict[str, str] = {}
        self.command_prefix: list[str] = []  # e.g. ["ip", "netns", "exec", NS] to run the node elsewhere

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> TestBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ensure_rabbitmq_installed()
        server = _script("rabbitmq-server")
        self.workdir = Path(tempfile.mkdtemp(prefix="synergos-rabbitmq-"))
        try:
            self._env = self._prepare(self.workdir)
            self._spawn(server)
            self._await_startup()
        except BaseException:
            self.stop()
            raise

    def restart(self, downtime: float = 0.0, timeout: float = 60.0) -> None:
        """Stop this node (`rabbitmqctl -n <node> stop`) and start it again with the same name, ports
        and data directory, so durable queues and persistent messages survive, as a broker restart
        would keep them. Clients see their connections drop and the port refuse for `downtime` s."""
        process = self._process
        if process is None or self.workdir is None:
            raise RuntimeError(f"RabbitMQ node {self.node} is not started")
        self._ctl("stop", timeout=timeout)
        process.wait(timeout=timeout)
        self._process = None
        time.sleep(downtime)
        try:
            self._spawn(_script("rabbitmq-server"))
            self._await_startup()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, server: str) -> None:
        assert self.workdir is not None
        log = open(self.workdir / "server.out", "ab")
        try:
            self._process = subprocess.Popen(
                [*self.command_prefix, server],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self) -> None:
        """Stop the node and its epmd, then delete the temporary directory. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                try:
                    self._ctl("stop", timeout=30)
                except Exception:  # noqa: BLE001 - fall through to waiting, then killing by PID
                    pass
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # The shell script forwards SIGTERM to the VM; then the whole session goes by PID.
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        if self._env.get("ERL_EPMD_PORT"):
            epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
            subprocess.run(
                [*self.command_prefix, epmd, "-port", self._env["ERL_EPMD_PORT"], "-kill"],
                env=self._env,
                capture_output=True,
                timeout=10,
                check=False,
            )
            self._env = {}
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # --- helpers for tests ----------------------------------------------------------------

    def close_all_connections(self, reason: str = "test") -> None:
        """Force-close every client connection (as a broker restart or network cut would)."""
        self._ctl("close_all_connections", reason, timeout=30)

    def queue_depth(self, name: str) -> int:
        """Messages ready in queue `name` (not counting unacked ones), via a passive declare."""
        connection = pika.BlockingConnection(self._address().parameters("synergos-test-probe"))
        try:
            return connection.channel().queue_declare(queue=name, passive=True).method.message_count
        finally:
            connection.close()

    def purge(self, *names: str) -> None:
        """Empty the named queues (those that exist)."""
        connection = pika.BlockingConnection(self._address().parameters("synergos-test-purge"))
        try:
            for name in names:
                channel = connection.channel()
                try:
                    channel.queue_purge(name)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # not declared yet
        finally:
            connection.close()

    def log_tail(self, chars: int = 3000) -> str:
        if self.workdir is None:
            return ""
        parts = [
            p.read_text(errors="replace")
            for p in sorted(self.workdir.glob("log/*.log")) + [self.workdir / "server.out"]
            if p.exists()
        ]
        return "\n".join(parts)[-chars:]

    # --- internals ------------------------------------------------------------------------

    def _prepare(self, root: Path) -> dict[str, str]:
        amqp, dist, epmd, ctl = _free_port(), _free_port(), _free_port(), _free_range(11)
        cookie = root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        config = ["log.file.level = info", "disk_free_limit.absolute = 1MB"]
        plugins = "[]."
        if self.management:
            port = _free_port()
            config += ["management.tcp.ip = 127.0.0.1", f"management.tcp.port = {port}"]
            plugins = "[rabbitmq_management]."
            self.management_url = f"http://127.0.0.1:{port}"
        (root / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (root / "enabled_plugins").write_text(plugins + "\n")
        (root / "rabbitmq-env.conf").write_text("")
        self.address = BrokerAddress(host="127.0.0.1", port=amqp, connection_attempts=1, retry_delay=0.2)
        drop = ("RABBITMQ_", "ERL_")
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(drop)},
            "HOME": str(root),  # the Erlang cookie is read from $HOME
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl + 10),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(epmd),  # our own epmd, never the system's
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }

    def _address(self) -> BrokerAddress:
        if self.address is None:
            raise RuntimeError(f"RabbitMQ node {self.node} is not started")
        return self.address

    def _await_startup(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        address, process = self._address(), self._process
        assert process is not None  # started just before
        while not amqp_answers(address.host, address.port, timeout=1):
            if process.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.node} exited with {process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"RabbitMQ node {self.node} did not start within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)
        left = max(5, int(deadline - time.monotonic()))
        self._ctl("await_startup", "--timeout", str(left), timeout=left + 10)

    def _ctl(self, *args: str, timeout: float) -> str:
        result = subprocess.run(
            [*self.command_prefix, _script("rabbitmqctl"), "-n", self.node, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {args[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-500:]}"
            )
        return result.stdout
