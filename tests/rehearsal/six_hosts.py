"""Six-host rehearsal of the deployment guide without Docker.

Creates six network namespaces with the guide's addresses (172.19.152.151-156) joined by a
bridge, starts in each exactly the command its image's entrypoint runs (same flags, same
ports), runs the guide's Driver script from the host namespace against the Director at
172.19.152.152:5000 with the Workers registered at .154/.155 (ports 8020 and 5000), waits for the
cluster to finish, and tears everything down, even on failure. It needs root, and only ever
talks to its own namespaces.

    .venv/bin/python -m tests.rehearsal.six_hosts [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from synergos_core.identity import Credentials
from synergos_local import datasets
from synergos_local.broker import TestBroker

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUBNET = "172.19.152"
HOSTS = {"mq": 151, "director": 152, "ttp": 153, "worker_1": 154, "worker_2": 155, "mlops": 156}
# what each image's ENTRYPOINT and the guide's `docker run` arguments amount to
COMMANDS = {
    "director": ["synergos-director", "--id", "director", "--logging_variant", "basic"],
    "ttp": [
        "synergos-ttp",
        "--id",
        "ttp",
        "--logging_variant",
        "basic",
        "--queue",
        "rabbitmq",
        f"{SUBNET}.151",
        "5672",
        "--censored",
    ],
    "worker_1": ["synergos-worker", "--id", "worker_1", "--logging_variant", "basic", "--censored"],
    "worker_2": ["synergos-worker", "--id", "worker_2", "--logging_variant", "basic", "--censored"],
    "mlops": ["synergos-mlops"],
}
HEALTH = {"director": 5000, "ttp": 5000, "worker_1": 5000, "worker_2": 5000, "mlops": 5500}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """The bridge and one namespace per host; removed on close."""

    def __init__(self, stack: ExitStack) -> None:
        tag = secrets.token_hex(2)
        self.bridge = f"synbr{tag}"
        self.namespaces = {name: f"syn{tag}_{name}" for name in HOSTS}
        ip("link", "add", self.bridge, "type", "bridge")
        stack.callback(lambda: subprocess.run(["ip", "link", "del", self.bridge], capture_output=True))
        ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for name, octet in HOSTS.items():
            ns, veth = self.namespaces[name], f"syn{tag}{octet}"
            ip("netns", "add", ns)
            stack.callback(lambda ns=ns: subprocess.run(["ip", "netns", "del", ns], capture_output=True))
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", self.bridge)
            ip("link", "set", veth, "up")
            ip("netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
            ip("netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[name]]


def start_broker(network: Network, stack: ExitStack, definitions: Path | None) -> TestBroker:
    """The MQ host: RabbitMQ on 5672 and its management UI on 15672, the Synergos topology preloaded."""
    broker = TestBroker(management=True)
    broker.command_prefix = network.prefix("mq")
    prepare = broker._prepare

    def in_namespace(root: Path) -> dict[str, str]:
        env = prepare(root)
        config = [
            "log.file.level = info",
            "disk_free_limit.absolute = 1MB",
            "loopback_users = none",
            "management.tcp.port = 15672",
        ]
        if definitions is not None:
            config.append(f"management.load_definitions = {definitions}")
        (root / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        env.update(RABBITMQ_NODE_IP_ADDRESS="0.0.0.0", RABBITMQ_NODE_PORT="5672")
        broker.address = broker.address.__class__(
            host=f"{SUBNET}.151", port=5672, connection_attempts=1, retry_delay=0.2
        )
        broker.management_url = f"http://{SUBNET}.151:15672"
        return env

    broker._prepare = in_namespace  # type: ignore[method-assign]
    broker.start()
    stack.callback(broker.stop)
    return broker


def start_service(network: Network, stack: ExitStack, name: str, env: dict[str, str], logs: Path) -> subprocess.Popen:
    command = [str(BIN / COMMANDS[name][0]), *COMMANDS[name][1:]]
    log = open(logs / f"{name}.log", "ab")
    process = subprocess.Popen(
        [*network.prefix(name), *command],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    stack.callback(stop)
    return process


def provision_identities(workdir: Path) -> Path:
    """What the operator does once before the guide: one folder per VM's service, and the user's."""
    kit = workdir / "credentials"
    command = [str(BIN / "synergos-provision"), str(kit), "--ttp", "ttp", "--director", "director"]
    command += ["--worker", "worker_1", "worker_2", "--user", "orchestrator"]
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return kit


def wait_healthy(name: str, process: subprocess.Popen, logs: Path, http: httpx.Client, timeout: float = 120) -> None:
    scheme = "http" if name == "mlops" else "https"
    url = f"{scheme}://{SUBNET}.{HOSTS[name]}:{HEALTH[name]}/" + ("health" if name != "mlops" else "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{(logs / f'{name}.log').read_text()[-3000:]}")
        try:
            if http.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not answer {url}:\n{(logs / f'{name}.log').read_text()[-3000:]}")


def rehearse(workdir: Path, logs: Path) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    roots = datasets.prepare_penguins(workdir)
    shared = workdir / "shared"  # the volume the Director, the TTP and MLOps share in the guide
    definitions = ROOT / "docker" / "mq" / "definitions.json"
    kit = provision_identities(workdir)
    with ExitStack() as stack:
        http = stack.enter_context(
            httpx.Client(verify=Credentials.load(kit / "orchestrator").client_context(), timeout=30)
        )
        network = Network(stack)
        start_broker(network, stack, definitions if definitions.exists() else None)
        image_env = {"SYNERGOS_HOST": "0.0.0.0"}  # the images' ENV
        volumes = {
            "director": {
                "SYNERGOS_DATA_DIR": shared / "ttp_data",
                "SYNERGOS_OUTPUTS_DIR": shared / "ttp_outputs",
                "SYNERGOS_MLFLOW_DIR": shared / "mlflow",
            },
            "ttp": {
                "SYNERGOS_DATA_DIR": shared / "ttp_data",
                "SYNERGOS_OUTPUTS_DIR": shared / "ttp_outputs",
                "SYNERGOS_MLFLOW_DIR": shared / "mlflow",
            },
            "worker_1": {"SYNERGOS_DATA_DIR": roots["worker_1"], "SYNERGOS_OUTPUTS_DIR": workdir / "outputs_1"},
            "worker_2": {"SYNERGOS_DATA_DIR": roots["worker_2"], "SYNERGOS_OUTPUTS_DIR": workdir / "outputs_2"},
            "mlops": {"SYNERGOS_MLFLOW_DIR": shared / "mlflow", "GUNICORN_CMD_ARGS": "--bind=0.0.0.0"},
        }
        processes = {}
        for name in ("mlops", "director", "ttp", "worker_1", "worker_2"):
            env = {**image_env, **{k: str(v) for k, v in volumes[name].items()}}
            if name != "mlops":  # each VM holds its own folder (in the images: /<role>/credentials)
                env["SYNERGOS_CREDENTIALS"] = str(kit / name)
            processes[name] = start_service(network, stack, name, env, logs)
        for name, process in processes.items():
            wait_healthy(name, process, logs, http)
        script = [
            sys.executable,
            str(ROOT / "examples" / "guide_script.py"),
            f"{SUBNET}.152",
            "5000",
            f"{SUBNET}.154",
            f"{SUBNET}.155",
        ]
        user = {**os.environ, "SYNERGOS_CREDENTIALS": str(kit / "orchestrator")}
        result = subprocess.run(script, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=user)
        if result.returncode != 0:
            raise RuntimeError(f"the guide's script failed:\n{result.stdout}\n{result.stderr}")
        base = f"https://{SUBNET}.152:5000"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = http.get(f"{base}/ttp/status/jobs", params={"collab_id": "collaboration_1"}).json()["data"]
            if jobs and all(j["state"] in {"completed", "failed"} for j in jobs):
                break
            time.sleep(1)
        validations = http.get(
            f"{base}/ttp/evaluate/collaborations/collaboration_1/projects/project_1/validations/experiment_1/run_1"
        ).json()
        predictions = http.get(
            f"{base}/ttp/evaluate/participants/participant_1/collaborations/collaboration_1/predictions"
        ).json()
        return {
            "jobs": jobs,
            "validations": validations.get("data") or [],
            "predictions": predictions.get("data") or [],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-logs", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="synergos-six-hosts-"))
    try:
        outcome = rehearse(workdir, args.keep_logs or workdir / "logs")
        print(
            json.dumps(
                {
                    "jobs": [(j["kind"], j["state"]) for j in outcome["jobs"]],
                    "validated": [v["key"]["participant_id"] for v in outcome["validations"]],
                }
            )
        )
        return 0 if all(j["state"] == "completed" for j in outcome["jobs"]) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
