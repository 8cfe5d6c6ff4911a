"""Benchmark federated rounds on a real grid on loopback, and check them against the issue's targets.

Real Worker processes (`python -m synergos_worker`, worker i on 127.0.1.i) serve the data; the
TTP side of each run (GridRun + federated.train) runs in a fresh subprocess of this script, so
its peak memory is its own `ru_maxrss`. The transfer floor is measured in the same run with a
plain TCP socket pair on 127.0.0.1 between two processes.

    .venv/bin/python bench/grid_round.py                          # all cases twice, ~2.5 min on 2 cores
    .venv/bin/python bench/grid_round.py --cases tabular:2 large:2 --repeats 1

Prints ONE JSON line on stdout; progress goes to stderr. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024

# ---- workloads ----

TABULAR_SPEC = [
    {"l_type": "Linear", "structure": {"in_features": 30, "out_features": 64}, "activation": "relu", "is_input": True},
    {"l_type": "Linear", "structure": {"in_features": 64, "out_features": 1}, "activation": "sigmoid"},
]
LARGE_FEATURES = 16
# 16*4096+4096 + 4096*4096+4096 + 4096*2048+2048 + 2048+1 = 25,243,649 parameters (101 MB float32)
LARGE_SPEC = [
    {
        "l_type": "Linear",
        "structure": {"in_features": LARGE_FEATURES, "out_features": 4096},
        "activation": "relu",
        "is_input": True,
    },
    {"l_type": "Linear", "structure": {"in_features": 4096, "out_features": 4096}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 4096, "out_features": 2048}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 2048, "out_features": 1}},
]
LARGE_ROWS = {"train": 64, "evaluate": 16, "predict": 16}  # per worker

WORKLOADS = {
    # breast cancer (569 rows, 30 features) split IID; full batch, 5 rounds of 1 epoch
    "tabular": {"spec": TABULAR_SPEC, "action": "classify", "rounds": 5, "hp": {"criterion": "BCELoss", "lr": 0.01}},
    # synthetic regression rows; 3 rounds of 1 epoch
    "large": {"spec": LARGE_SPEC, "action": "regress", "rounds": 3, "hp": {"criterion": "MSELoss", "lr": 1e-4}},
}
DEFAULT_CASES = ["tabular:2", "tabular:8", "large:2", "large:4"]

# the targets: steady-state seconds per round by (workload, K); TTP peak above base in model sizes
ROUND_TARGETS_S = {("tabular", 2): 0.015, ("tabular", 8): 0.035, ("large", 2): 1.5, ("large", 4): 3.0}
TTP_PEAK_TARGET_MODELS = 4.0
# the memory target is about model-sized buffers; for an 8 kB model the interpreter's own noise dominates
PEAK_TARGET_WORKLOADS = {"large"}


def say(*parts: object) -> None:
    print("[grid_round]", *parts, file=sys.stderr, flush=True)


def dataset_name(workload: str, k: int) -> str:
    return f"{'bc' if workload == 'tabular' else 'synth'}_k{k}"


# ---- data ----


def prepare_data(workspace: Path, cases: list[tuple[str, int]]) -> None:
    """worker_i's data root gets one dataset per case it takes part in (bc_k2, synth_k4, ...)."""
    import numpy as np
    import pandas as pd

    from synergos_local.datasets import METAS, prepare_sklearn, write_tabular

    for workload, k in sorted(set(cases)):
        name = dataset_name(workload, k)
        if workload == "tabular":
            staging = workspace / "staging" / name
            prepare_sklearn(staging, "breast_cancer", parties=k)
            for i in range(1, k + 1):
                dest = workspace / f"worker_{i}" / "data" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staging / f"worker_{i}" / "data" / "breast_cancer"), str(dest))
        else:
            columns = [f"x{j:02d}" for j in range(LARGE_FEATURES)]
            schema = {c: "float64" for c in columns} | {"target": "float64"}
            rng = np.random.default_rng(7)
            w = rng.normal(size=LARGE_FEATURES)
            for i in range(1, k + 1):
                for meta in METAS:
                    X = rng.normal(size=(LARGE_ROWS[meta], LARGE_FEATURES))
                    frame = pd.DataFrame(X, columns=columns)
                    frame["target"] = X @ w * 0.1 + rng.normal(scale=0.01, size=len(X))
                    write_tabular(workspace / f"worker_{i}" / "data" / name / meta, frame, schema)
    shutil.rmtree(workspace / "staging", ignore_errors=True)


# ---- loopback TCP throughput (the transfer floor) ----


def _sink(port_w: int, total: int) -> None:
    """Child process: accept one connection, read `total` bytes, acknowledge with one byte."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    os.write(port_w, srv.getsockname()[1].to_bytes(2, "big"))
    conn, _ = srv.accept()
    view = memoryview(bytearray(4 * MiB))
    got = 0
    while got < total:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    conn.sendall(b"k")
    conn.close()
    srv.close()


def loopback_throughput(total_bytes: int, repeats: int) -> list[float]:
    """Bytes/s of plain TCP streams 127.0.0.1 -> 127.0.0.1 between two processes, one per repeat."""
    chunk = memoryview(bytes(4 * MiB))
    results = []
    for _ in range(repeats):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # this process has no threads yet: forking is safe
            os.close(r)
            try:
                _sink(w, total_bytes)
            finally:
                os._exit(0)
        os.close(w)
        port = int.from_bytes(os.read(r, 2), "big")
        os.close(r)
        with socket.create_connection(("127.0.0.1", port)) as s:
            started = time.perf_counter()
            sent = 0
            while sent < total_bytes:
                n = min(len(chunk), total_bytes - sent)
                s.sendall(chunk[:n])
                sent += n
            if s.recv(1) != b"k":
                raise RuntimeError("loopback sink did not acknowledge")
            elapsed = time.perf_counter() - started
        os.waitpid(pid, 0)
        results.append(total_bytes / elapsed)
    return results


# ---- workers ----


def start_workers(topo, workspace: Path, count: int, args: argparse.Namespace) -> list[dict]:
    from synergos_local.topology import worker

    nodes = []
    env = {"SYNERGOS_TORCH_THREADS": "1"}
    if args.shard_bytes:
        env["SYNERGOS_FED_SHARD_BYTES"] = str(args.shard_bytes)
    for i in range(1, count + 1):
        host = f"{args.address_prefix}.{i}"
        for port in (args.rest_port, args.ws_port):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    raise SystemExit(f"{host}:{port} is not free ({exc}); use --address-prefix/--rest-port/--ws-port")
        root = workspace / f"worker_{i}"
        service = worker(
            f"w{i}", host, args.rest_port, args.ws_port, root / "data", root / "outputs", workspace / "logs"
        )
        service.env.update(env)
        if args.profile_workers:
            args.profile_workers.mkdir(parents=True, exist_ok=True)
            at = service.args.index("synergos_worker")
            service.args = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--_profile-worker",
                str(args.profile_workers / f"w{i}"),
                *service.args[at + 1 :],
            ]
            if args.cprofile_workers:
                service.env["GRID_ROUND_CPROFILE"] = "1"
        topo.add(service)
        nodes.append(
            {
                "participant_id": f"w{i}",
                "host": host,
                "port": args.ws_port,
                "f_port": args.rest_port,
                "pid": service.process.pid,
            }
        )
    return nodes


# ---- CPU accounting: this benchmark's processes, and everything else on the machine (noise) ----


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7))  # user nice system irq softirq steal


def _proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def _proc_cpu_ns(pid: int) -> int:
    """CPU time of all of a process's threads in ns (schedstat is finer than the tick counters)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total


class CpuMeter:
    """CPU seconds used by the machine, by this benchmark (workers + TTP child) and by other processes."""

    def __init__(self, worker_pids: list[int]) -> None:
        self.pids = worker_pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMeter:
        self.busy0 = _busy_ticks()
        self.ours0 = sum(_proc_ticks(p) for p in self.pids)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.child0 = ru.ru_utime + ru.ru_stime
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        busy = (_busy_ticks() - self.busy0) / self.hz
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.ours_s = (
            (sum(_proc_ticks(p) for p in self.pids) - self.ours0) / self.hz + ru.ru_utime + ru.ru_stime - self.child0
        )
        self.foreign_s = max(0.0, busy - self.ours_s)
        self.foreign_share = self.foreign_s / max(1e-9, self.wall * (os.cpu_count() or 1))


def wait_quiet(worker_pids: list[int], max_wait: float, cores: float) -> tuple[float, float]:
    """Wait (up to `max_wait` s) until other processes use less than `cores` CPUs over half a second."""
    started = time.perf_counter()
    while True:
        with CpuMeter(worker_pids) as meter:
            time.sleep(0.5)
        load = meter.foreign_s / meter.wall
        waited = time.perf_counter() - started
        if load < cores or waited >= max_wait:
            return waited, load


# ---- the TTP side of one case (runs in its own subprocess) ----


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Spans:
    """--spans: time the TTP's round phases by wrapping the TTP module functions (events and totals)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.rounds: list[dict[str, float]] = []
        self.events: list[tuple[str, float, float]] = []

    def cut(self) -> None:
        self.rounds.append(self.totals)
        self.totals = {}

    def _record(self, name: str, t: float) -> None:
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - t
        self.events.append((name, t, now))

    def wrap(self, owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)
        if asyncio.iscoroutinefunction(original):

            async def timed(*a, **kw):
                t = time.perf_counter()
                try:
                    return await original(*a, **kw)
                finally:
                    self._record(name, t)
        else:

            def timed(*a, **kw):
                t = time.perf_counter()
                try:
                    return original(*a, **kw)
                finally:
                    self._record(name, t)

        setattr(owner, attr, timed)

    def install(self) -> None:
        from synergos_ttp import federated, grid

        self.wrap(grid.GridRun, "broadcast", "broadcast")
        self.wrap(grid.GridRun, "replies", "await_reply_headers")
        self.wrap(federated, "_aggregate", "aggregate")
        self.wrap(federated, "fold_slices", "aggregate.fold")
        # file writes (on the TTP's writer thread where it has one)
        self.wrap(federated.StateFileWriter, "write", "files.local_write")
        self.wrap(federated.StateFileWriter, "commit", "files.local_commit")
        self.wrap(federated, "_checkpoint", "files.checkpoint")


def ttp_case(case: dict) -> dict:
    import torch

    from synergos_core.identity import Credentials
    from synergos_ttp.grid import WorkerClient

    if case.get("ttp_threads"):
        torch.set_num_threads(int(case["ttp_threads"]))

    from synergos_core.schemas import RunHyperparameters
    from synergos_core.settings import FederationLimits
    from synergos_ttp import federated
    from synergos_ttp.grid import GridNode, GridRun

    workload = WORKLOADS[case["workload"]]
    name = dataset_name(case["workload"], case["k"])
    tags = {"train": [[name, "train"]], "evaluate": [[name, "evaluate"]], "predict": []}
    nodes = [
        GridNode(n["participant_id"], n["host"], n["port"], n["f_port"], tags=tags, alignment={}) for n in case["nodes"]
    ]
    hp = RunHyperparameters(
        algorithm="FedAvg",
        mu=0.0,
        rounds=case.get("rounds") or workload["rounds"],
        epochs=1,
        batch_size=None,
        optimizer="SGD",
        lr_scheduler=None,
        patience=0,
        seed=42,
        **workload["hp"],
    ).model_dump()
    limits = FederationLimits()
    out_dir = Path(case["out_dir"])

    if case.get("sync_files"):
        if not hasattr(federated, "_FileQueue"):
            raise SystemExit("--sync-files needs the TTP's background file writer (federated._FileQueue)")

        async def no_wait(self) -> None:
            return None

        def inline(self, fn, *a) -> None:
            fn(*a)

        federated._FileQueue.submit = inline
        federated._FileQueue.wait = no_wait
    spans = Spans() if case.get("spans") else None
    if spans is not None:
        spans.install()

    marks: list[float] = []
    worker_pids = [n["pid"] for n in case["nodes"]]
    cpu_marks: list[list[int]] = [[_proc_cpu_ns(p) for p in worker_pids]]

    def progress(**_: object) -> None:
        marks.append(time.perf_counter())
        cpu_marks.append([_proc_cpu_ns(p) for p in worker_pids])
        if spans is not None:
            spans.cut()

    async def go() -> dict:
        credentials = Credentials.load(case["credentials"]) if case.get("credentials") else None
        async with WorkerClient(credentials, 600.0) as http:
            keys = ("bench", "grid_round", case["workload"], f"k{case['k']}")
            async with GridRun(keys, nodes, workload["action"], workload["spec"], hp, limits, http) as grid:
                base = rss_bytes()
                maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                rss_trace: list[tuple[float, int]] = []
                sampling = [spans is not None]
                if sampling[0]:
                    import threading

                    def sample() -> None:
                        while sampling[0]:
                            rss_trace.append((time.perf_counter(), rss_bytes()))
                            time.sleep(0.005)

                    threading.Thread(target=sample, daemon=True).start()
                profiler = None
                if case.get("profile"):
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                started = time.perf_counter()
                outcome = await federated.train(grid, out_dir, progress)
                ended = time.perf_counter()
                sampling[0] = False
                if profiler is not None:
                    import io
                    import pstats

                    profiler.disable()
                    for order, count in (("cumulative", 45), ("tottime", 30)):
                        buf = io.StringIO()
                        pstats.Stats(profiler, stream=buf).sort_stats(order).print_stats(count)
                        print(buf.getvalue(), file=sys.stderr)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        state_bytes = sum(t.numel() * t.element_size() for t in outcome.state.values())
        timings = outcome.timings
        # train() adds the closing `evaluate` request to the last round's timing and reports how long
        # it took, so it can be taken back out.
        final_eval_s = outcome.final_evaluate_s
        walls = [t.wall_s for t in timings]
        moved = [t.bytes_moved for t in timings]
        if final_eval_s:
            walls[-1] -= final_eval_s
            moved[-1] -= state_bytes * len(nodes)
        return {
            "rounds_completed": outcome.rounds_completed,
            "walls": walls,
            "worker_compute": [max(t.worker_compute_s.values()) for t in timings],
            "bytes_moved": moved,
            "final_evaluate_s": final_eval_s,
            "train_total_s": ended - started,
            "after_last_progress_s": ended - marks[-1] if marks else 0.0,
            "state_bytes": state_bytes,
            "params": sum(t.numel() for t in outcome.state.values()),
            "rss_base": base,
            "maxrss_before": maxrss_before,
            "maxrss_peak": peak,
            "torch_threads": torch.get_num_threads(),
            "shard_bytes": limits.shard_bytes,
            "train_loss": outcome.history["train"],
            # per round: CPU seconds of each worker process (all threads)
            "worker_cpu": [[(b - a) / 1e9 for a, b in zip(x, y)] for x, y in zip(cpu_marks, cpu_marks[1:])],
            "spans": spans.rounds if spans is not None else None,
            "span_events": spans.events if spans is not None else None,
            "rss_trace": rss_trace,
        }

    return asyncio.run(go())


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_case(
    workload: str, k: int, nodes: list[dict], workspace: Path, args: argparse.Namespace, floor_bps: float, repeat: int
) -> dict:
    out_dir = workspace / "ttp" / f"{workload}_k{k}_{repeat}"
    case = {
        "workload": workload,
        "k": k,
        "nodes": nodes[:k],
        "out_dir": str(out_dir),
        "rounds": args.rounds,
        "ttp_threads": args.ttp_threads,
        "profile": args.profile,
        "spans": args.spans,
        "sync_files": args.sync_files,
        "credentials": args.ttp_credentials,  # the TTP's identity of the Workers' collaboration CA
    }
    waited, quiet_load = wait_quiet([n["pid"] for n in nodes], args.quiet_wait, args.quiet_cores)
    with CpuMeter([n["pid"] for n in nodes]) as cpu:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_ttp", json.dumps(case)],
            stdout=subprocess.PIPE,
            check=False,
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the TTP side of {workload} K={k} failed (exit {proc.returncode}); see stderr")
    raw = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if args.raw_dir:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
        (args.raw_dir / f"{workload}_k{k}_{repeat}.json").write_text(json.dumps(raw))
    walls, compute, moved = raw["walls"], raw["worker_compute"], raw["bytes_moved"]
    steady = slice(1, None) if len(walls) > 1 else slice(0, None)  # round 0 is the warm-up
    wall_med = _median(walls[steady])
    bytes_round = int(_median(moved[steady]))
    floor_s = bytes_round / floor_bps
    model = raw["state_bytes"]
    peak_delta = max(0, raw["maxrss_peak"] - raw["rss_base"])
    round_target = ROUND_TARGETS_S.get((workload, k))
    peak_target = TTP_PEAK_TARGET_MODELS if workload in PEAK_TARGET_WORKLOADS else None
    worker_cpu = raw["worker_cpu"][: len(walls)]
    result = {
        "workload": workload,
        "K": k,
        "params": raw["params"],
        "model_bytes": model,
        "rounds": raw["rounds_completed"],
        "round_wall_median_s": round(wall_med, 6),
        "warmup_round_s": round(walls[0], 6),
        "round_wall_s": [round(w, 6) for w in walls],
        "worker_compute_median_s": round(_median(compute[steady]), 6),
        "worker_compute_s": [round(c, 6) for c in compute],
        "worker_cpu_median_s": round(_median([max(c) for c in worker_cpu[steady]]), 6),
        "bytes_per_round": bytes_round,
        "transfer_floor_s": round(floor_s, 6),
        "wall_over_floor": round(wall_med / floor_s, 1) if floor_s else None,
        "final_evaluate_s": round(raw["final_evaluate_s"], 6),
        "after_last_round_s": round(raw["after_last_progress_s"], 6),
        "ttp_rss_base_mb": round(raw["rss_base"] / MiB, 1),
        "ttp_peak_delta_mb": round(peak_delta / MiB, 1),
        "ttp_peak_over_model": round(peak_delta / model, 2),
        "ttp_torch_threads": raw["torch_threads"],
        "shard_bytes": raw["shard_bytes"],
        "foreign_cpu_share": round(cpu.foreign_share, 3),
        "quiet_wait_s": round(waited, 1),
        "targets": {
            "round_wall_s": {
                "target": round_target,
                "value": round(wall_med, 6),
                "met": None if round_target is None else wall_med <= round_target,
            },
            "ttp_peak_over_model": {
                "target": peak_target,
                "value": round(peak_delta / model, 2),
                "met": None if peak_target is None else peak_delta <= peak_target * model,
            },
        },
    }
    if raw.get("spans"):
        rounds = raw["spans"][: len(walls)][steady]
        names = sorted({n for r in raw["spans"] for n in r})
        result["ttp_spans_median_ms"] = {n: round(1e3 * _median([r.get(n, 0.0) for r in rounds]), 2) for n in names}
    return result


def profile_worker(out: str, argv: list[str]) -> None:
    """A Worker with its federation phases timed (OUT.phases.json, OUT.events.json) and, with
    GRID_ROUND_CPROFILE=1, every thread under cProfile (OUT.prof); written when it stops."""
    import cProfile
    import pstats
    import signal
    import threading

    signal.raise_signal = lambda sig: None  # uvicorn re-raises SIGTERM after shutting down: dump first
    use_cprofile = os.environ.get("GRID_ROUND_CPROFILE") == "1"
    profilers: list[cProfile.Profile] = []
    if use_cprofile:
        thread_run = threading.Thread.run

        def run(self: threading.Thread) -> None:
            prof = cProfile.Profile()
            profilers.append(prof)
            prof.enable()
            try:
                thread_run(self)
            finally:
                prof.disable()

        threading.Thread.run = run

    import synergos_worker.federation as wf
    from synergos_core.training import LocalTrainer
    from synergos_worker.cli import main as worker_main

    phases: dict[str, list[tuple[float, float]]] = {}
    events: list[tuple[str, float, float]] = []

    def timed(owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def record(t: float, c: float) -> None:
            now = time.perf_counter()
            phases.setdefault(name, []).append((now - t, time.thread_time() - c))
            events.append((name, t, now))

        if asyncio.iscoroutinefunction(original):

            async def wrapper(*a, **kw):
                t, c = time.perf_counter(), time.thread_time()
                try:
                    return await original(*a, **kw)
                finally:
                    record(t, c)
        else:

            def wrapper(*a, **kw):
                t, c = time.perf_counter(), time.thread_time()
                try:
                    return original(*a, **kw)
                finally:
                    record(t, c)

        setattr(owner, attr, wrapper)

    timed(wf, "recv_header", "wait_request")
    timed(wf.FederationServer, "_serve", "serve")
    timed(wf.FederationServer, "_receive_weights", "serve.receive_weights")
    timed(LocalTrainer, "evaluate", "serve.evaluate")
    timed(LocalTrainer, "train", "serve.train")
    timed(wf, "send_state", "serve.send_state")

    prof = cProfile.Profile()
    if use_cprofile:
        prof.enable()
    try:
        worker_main(argv)
    finally:
        prof.disable()
        summary = {
            name: {
                "n": len(v),
                "median_wall_ms": 1e3 * _median([w for w, _ in v[2:] or v]),
                "median_thread_cpu_ms": 1e3 * _median([c for _, c in v[2:] or v]),
            }
            for name, v in phases.items()
        }
        Path(out + ".phases.json").write_text(json.dumps(summary, indent=1))
        Path(out + ".events.json").write_text(json.dumps(events))
        if use_cprofile:
            stats = pstats.Stats(prof)
            for other in profilers:
                try:
                    stats.add(other)
                except (TypeError, ValueError):
                    pass
            stats.dump_stats(out + ".prof")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_profile-worker":
        return profile_worker(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="workload:K pairs (default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="run each case N times and report the run with the lowest median round (default 2)",
    )
    parser.add_argument("--rounds", type=int, help="override every workload's round count")
    parser.add_argument("--workdir", type=Path, help="keep data and worker logs here (default: a temp dir)")
    parser.add_argument("--address-prefix", default="127.0.1", help="worker i listens on PREFIX.i (default 127.0.1)")
    parser.add_argument("--rest-port", type=int, default=5000)
    parser.add_argument("--ws-port", type=int, default=8020)
    parser.add_argument("--shard-bytes", type=int, help="SYNERGOS_FED_SHARD_BYTES for the workers and the TTP")
    parser.add_argument("--ttp-threads", type=int, help="torch.set_num_threads in the TTP process (default: torch's)")
    parser.add_argument("--loopback-mb", type=int, default=512, help="MiB per loopback TCP measurement (default 512)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each case wait up to S seconds for other processes to go quiet (default 20)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="'quiet' means other processes use fewer than this many CPUs (default 0.25)",
    )
    parser.add_argument("--spans", action="store_true", help="time the TTP's round phases (medians in the output)")
    parser.add_argument("--profile", action="store_true", help="cProfile the TTP side; stats go to stderr")
    parser.add_argument(
        "--profile-workers",
        type=Path,
        metavar="DIR",
        help="time each worker's federation phases into DIR/wN.phases.json and DIR/wN.events.json",
    )
    parser.add_argument(
        "--cprofile-workers",
        action="store_true",
        help="with --profile-workers, also cProfile every worker thread into DIR/wN.prof",
    )
    parser.add_argument(
        "--sync-files",
        action="store_true",
        help="A/B: the TTP writes model files inline on its event loop, not on its writer thread",
    )
    parser.add_argument("--raw-dir", type=Path, help="write each TTP run's raw measurements here")
    parser.add_argument("--_ttp", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._ttp:
        print(json.dumps(ttp_case(json.loads(args._ttp))), flush=True)
        return

    cases = []
    for item in args.cases:
        workload, _, k = item.partition(":")
        if workload not in WORKLOADS or not k.isdigit() or int(k) < 1:
            parser.error(f"bad case {item!r}; use tabular:K or large:K")
        cases.append((workload, int(k)))
    if args.shard_bytes:
        os.environ["SYNERGOS_FED_SHARD_BYTES"] = str(args.shard_bytes)  # the TTP subprocesses inherit it

    from importlib.metadata import version

    from synergos_local.topology import Topology

    began = time.perf_counter()
    temp = None
    if args.workdir is None:
        temp = tempfile.mkdtemp(prefix="synergos_bench_")
        workspace = Path(temp)
    else:
        workspace = args.workdir
        workspace.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        say(f"workspace {workspace}")
        prepare_data(workspace, cases)
        say(f"measuring loopback TCP throughput ({args.loopback_mb} MiB x 3)")
        wait_quiet([], args.quiet_wait, args.quiet_cores)
        loopback = loopback_throughput(args.loopback_mb * MiB, 3)
        floor_bps = max(loopback)
        say(f"loopback: best {floor_bps / 1e9:.2f} GB/s")
        with Topology() as topo:  # every worker is stopped on exit, even on failure
            count = max(k for _, k in cases)
            say(f"starting {count} workers on {args.address_prefix}.1-{count}")
            nodes = start_workers(topo, workspace, count, args)
            topo.wait(120)
            args.ttp_credentials = str(topo.identities.folder("bench_ttp", "ttp")) if topo.identities else None
            for workload, k in cases:
                runs = []
                for repeat in range(args.repeats):
                    result = run_case(workload, k, nodes, workspace, args, floor_bps, repeat)
                    say(
                        f"{workload} K={k}: round {result['round_wall_median_s'] * 1e3:.1f} ms "
                        f"(warm-up {result['warmup_round_s'] * 1e3:.0f} ms), worker compute "
                        f"{result['worker_compute_median_s'] * 1e3:.1f} ms, floor {result['transfer_floor_s'] * 1e3:.1f}"
                        f" ms, TTP peak +{result['ttp_peak_delta_mb']} MB ({result['ttp_peak_over_model']}x model),"
                        f" other processes {100 * result['foreign_cpu_share']:.0f}% CPU"
                    )
                    runs.append(result)
                best = min(runs, key=lambda r: r["round_wall_median_s"])
                if len(runs) > 1:
                    best["repeat_round_wall_medians_s"] = [r["round_wall_median_s"] for r in runs]
                results.append(best)
        # once more at the end (the floor is the best of all), in case the machine was busy at the start
        wait_quiet([], args.quiet_wait, args.quiet_cores)
        loopback += loopback_throughput(args.loopback_mb * MiB, 1)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    if max(loopback) > floor_bps:
        floor_bps = max(loopback)
        for r in results:
            r["transfer_floor_s"] = round(r["bytes_per_round"] / floor_bps, 6)
            r["wall_over_floor"] = round(r["round_wall_median_s"] / r["transfer_floor_s"], 1)

    targets = {}
    for r in results:
        ms = r["targets"]["round_wall_s"]["target"]
        if ms is not None:
            targets[f"{r['workload']}_k{r['K']}_round_le_{ms * 1e3:g}ms"] = r["targets"]["round_wall_s"]["met"]
        if r["targets"]["ttp_peak_over_model"]["met"] is not None:
            targets[f"{r['workload']}_k{r['K']}_ttp_peak_le_{TTP_PEAK_TARGET_MODELS:g}x_model"] = r["targets"][
                "ttp_peak_over_model"
            ]["met"]
    report = {
        "benchmark": "grid_round",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": version("torch"),
            "platform": platform.platform(),
        },
        "settings": {
            "shard_bytes": results[0]["shard_bytes"] if results else None,
            "ttp_torch_threads": results[0]["ttp_torch_threads"] if results else None,
            "worker_torch_threads": 1,
            "repeats": args.repeats,
        },
        "loopback_bytes_per_s": round(floor_bps),
        "loopback_runs_bytes_per_s": [round(x) for x in loopback],
        "cases": results,
        "targets_met": targets,
        "all_targets_met": all(targets.values()) if targets else None,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
