"""`make demo`: the deployment guide's flow on this machine.

Cluster mode (the default): RabbitMQ with its management UI, the Director, two TTP grids and two
parties' Workers (two nodes each, one per grid), then the guide's Phases 1-3 and its
hyper-parameter section through the Driver. Basic mode (`--mode basic`): one TTP and two Workers.
Data: palmerpenguins split by island, so each party lacks categories the other has. Every
service started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from . import datasets, topology
from .topology import GUIDE_ADDRESSES as ADDR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "basic": ("synergos_basic.py", datasets.prepare_penguins, "palmerpenguins split by island"),
    "images": ("synergos_images.py", datasets.prepare_digits_images, "digits as 32x32 PNG files"),
    "text": ("synergos_text.py", datasets.prepare_text_reviews, "generated reviews"),
}
COMPLETED = re.compile(r"(ALIGNMENT|TRAINING|VALIDATION|PREDICTION) (COMPLETED|FAILED) - \S+")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("cluster", "basic"), default="cluster")
    parser.add_argument("--workspace", type=Path, default=Path.cwd() / "demo_workspace")
    parser.add_argument(
        "--example",
        choices=sorted(EXAMPLES),
        default="basic",
        help="basic mode only: basic (penguins), images (a CNN on digits) or text (reviews)",
    )
    parser.add_argument("--n_samples", type=int, default=3, help="cluster mode: optimization trials")
    args = parser.parse_args(argv)
    workspace: Path = args.workspace.resolve()
    if workspace.exists():
        shutil.rmtree(workspace)
    started = time.monotonic()
    code = run_cluster(workspace, args.n_samples) if args.mode == "cluster" else run_basic(workspace, args.example)
    if code == 0:
        print(f"\n[demo] finished in {time.monotonic() - started:.0f} s; every service it started is stopped.")
        print(
            f"[demo] models, loss histories and checkpoints: {workspace}/*/outputs; "
            f"each Worker's predictions: {workspace}/worker_*/outputs*; logs: {workspace / 'logs'}"
        )
    return code


def _run_script(topo: topology.Topology, name: str, *extra: str) -> int:
    """Run an example as a user would: the orchestrator's identity in SYNERGOS_CREDENTIALS."""
    env = {**os.environ, "SYNERGOS_CREDENTIALS": str(topo.user())}
    return subprocess.call([sys.executable, str(ROOT / "examples" / name), *extra], stdin=subprocess.DEVNULL, env=env)


def _identities(workspace: Path) -> topology.Identities:
    identities = topology.Identities(workspace / "credentials")
    print(
        f"[demo] every service and the orchestrator user get an identity of one collaboration CA in "
        f"{identities.root} (synergos-provision does the same for real machines); TLS both ways"
    )
    return identities


def _failed(topo: topology.Topology, logs: Path, code: int) -> int:
    print(f"[demo] the example failed (exit {code}); service logs are in {logs}")
    for service in topo.services:
        print(f"--- {service.name} ---\n{service.tail(15)}")
    return code


def run_basic(workspace: Path, example: str) -> int:
    script, prepare, what = EXAMPLES[example]
    logs = workspace / "logs"
    print(f"[demo] preparing two parties' data ({what}) in {workspace}")
    roots = prepare(workspace)
    with topology.Topology(_identities(workspace)) as topo:
        topo.add(topology.ttp("ttp", ADDR["ttp"], 5000, workspace / "ttp", logs))
        for name in ("worker_1", "worker_2"):
            topo.add(topology.worker(name, ADDR[name], 5000, 8020, roots[name], workspace / name / "outputs", logs))
        print(
            f"[demo] starting a TTP on {ADDR['ttp']}:5000 and Workers on {ADDR['worker_1']} and "
            f"{ADDR['worker_2']} (REST 5000, federation 8020)"
        )
        topo.wait()
        print(f"[demo] running examples/{script} through the Driver")
        code = _run_script(
            topo,
            script,
            "--host",
            ADDR["ttp"],
            "--port",
            "5000",
            "--worker",
            ADDR["worker_1"],
            "--worker",
            ADDR["worker_2"],
        )
        return _failed(topo, logs, code) if code else 0


def run_cluster(workspace: Path, n_samples: int) -> int:
    from .broker import ensure_local_broker

    logs = workspace / "logs"
    print(f"[demo] preparing two parties' data (palmerpenguins split by island) in {workspace}")
    roots = datasets.prepare_penguins(workspace)
    broker = ensure_local_broker()
    try:
        with topology.Topology(_identities(workspace)) as topo:
            shared = workspace / "shared"  # the volume the Director, TTPs and MLOps share, as in the guide
            topo.add(topology.mlops("mlops", ADDR["mlops"], 5500, shared / "mlflow", logs))
            director = topo.add(
                topology.director(
                    "director", ADDR["director"], 5000, shared, logs, ["--queue", "rabbitmq", "127.0.0.1", "5672"]
                )
            )
            for grid in (0, 1):
                topo.add(
                    topology.ttp(
                        f"ttp_{grid + 1}",
                        ADDR["ttp"],
                        5000 + grid,
                        shared,
                        logs,
                        topology.cluster_flags("127.0.0.1", 5672, grid),
                    )
                )
            for name in ("worker_1", "worker_2"):
                for grid in (0, 1):
                    topo.add(
                        topology.worker(
                            f"{name}_node_{grid}",
                            ADDR[name],
                            5000 + grid,
                            8020 + grid,
                            roots[name],
                            workspace / name / f"outputs_{grid}",
                            logs,
                        )
                    )
            print(
                f"[demo] starting the Director on {ADDR['director']}:5000, TTP grids 0 and 1 on {ADDR['ttp']}:5000 "
                f"and :5001, and two nodes per party on {ADDR['worker_1']} and {ADDR['worker_2']}"
            )
            topo.wait()
            print("[demo] running examples/synergos_cluster.py (the guide's script) against the Director")
            code = _run_script(
                topo,
                "synergos_cluster.py",
                "--host",
                ADDR["director"],
                "--port",
                "5000",
                "--mq",
                "127.0.0.1",
                "--worker",
                ADDR["worker_1"],
                "--worker",
                ADDR["worker_2"],
                "--n_samples",
                str(n_samples),
            )
            if code:
                return _failed(topo, logs, code)
            lines = _follow(topo.client(), director, f"https://{ADDR['director']}:5000", n_samples)
            trials = [line for line in lines if "VALIDATION COMPLETED" in line and "optim_run_" in line]
            print(f"\n[demo] hyper-parameter optimization: {len(trials)} trials validated")
            for line in trials:
                print(f"  {line}")
            print("[demo] RabbitMQ management UI: http://localhost:15672 (guest/guest)")
            print(
                f"[demo] MLflow UI (experiment collaboration_1_>_project_1_>_experiment_1): http://{ADDR['mlops']}:5500"
            )
            _show_mlflow(f"http://{ADDR['mlops']}:5500")
            return 0 if len(trials) == n_samples else 1
    finally:
        broker.stop()


def _show_mlflow(base: str, timeout: float = 60.0) -> None:
    """List the runs MLflow recorded for the guide's experiment (tracking is asynchronous)."""
    name = "collaboration_1_>_project_1_>_experiment_1"
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        try:
            found = httpx.get(
                f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=5
            )
            if found.status_code == 200:
                experiment = found.json()["experiment"]["experiment_id"]
                runs = (
                    httpx.post(f"{base}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment]}, timeout=5)
                    .json()
                    .get("runs", [])
                )
                if len(runs) >= 4 and all(r["info"]["status"] != "RUNNING" for r in runs):
                    break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    for run in runs:
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        print(
            f"  MLflow run {run['info']['run_name']}: {run['info']['status']}, "
            f"aggregate accuracy {metrics.get('aggregate_overall_accuracy', float('nan')):.3f}"
        )


def _follow(
    http: httpx.Client, director: topology.Service, base: str, n_samples: int, timeout: float = 900.0
) -> list[str]:
    """Print the Director's completion lines until every queued job and every trial is done."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in director.log_path.read_text(errors="replace").splitlines():
            match = COMPLETED.search(line)
            if match and match.group(0) not in seen:
                seen.append(match.group(0))
                print(f"[director] {match.group(0)}")
        jobs = http.get(f"{base}/ttp/status/jobs", timeout=10).json()["data"]
        trials = [line for line in seen if "VALIDATION COMPLETED" in line and "optim_run_" in line]
        if jobs and all(j["state"] in {"completed", "failed"} for j in jobs) and len(trials) >= n_samples:
            return seen
        time.sleep(1.0)
    print("[demo] timed out waiting for the cluster to finish")
    return seen


if __name__ == "__main__":
    sys.exit(main())
