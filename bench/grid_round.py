"""Benchmark one federated round on a real grid on loopback.

Real Worker processes (`python -m synergos_worker`, one per 127.0.1.x address) serve the data;
the TTP side of each run (GridRun + federated.train) runs in a fresh subprocess of this script,
so its memory can be read from its own `ru_maxrss`. The transfer floor is measured in the same
run with a plain TCP socket pair on 127.0.0.1.

    .venv/bin/python bench/grid_round.py            # all workloads, ~3-5 minutes on 2 cores
    .venv/bin/python bench/grid_round.py --cases tabular:2 large:2

Prints ONE JSON line on stdout; progress goes to stderr. See bench/README.md for the figures.
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
    {"l_type": "Linear", "structure": {"in_features": 30, "out_features": 64}, "activation": "relu",
     "is_input": True},
    {"l_type": "Linear", "structure": {"in_features": 64, "out_features": 1}, "activation": "sigmoid"},
]
LARGE_FEATURES = 16
# 16*4096+4096 + 4096*4096+4096 + 4096*2048+2048 + 2048+1 = 25,243,649 parameters (~101 MB float32)
LARGE_SPEC = [
    {"l_type": "Linear", "structure": {"in_features": LARGE_FEATURES, "out_features": 4096}, "activation": "relu",
     "is_input": True},
    {"l_type": "Linear", "structure": {"in_features": 4096, "out_features": 4096}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 4096, "out_features": 2048}, "activation": "relu"},
    {"l_type": "Linear", "structure": {"in_features": 2048, "out_features": 1}},
]
LARGE_ROWS = {"train": 64, "evaluate": 16, "predict": 16}

WORKLOADS = {
    "tabular": {"spec": TABULAR_SPEC, "action": "classify", "rounds": 5,
                "hp": {"criterion": "BCELoss", "lr": 0.01}},
    "large": {"spec": LARGE_SPEC, "action": "regress", "rounds": 3,
              "hp": {"criterion": "MSELoss", "lr": 1e-4}},
}
DEFAULT_CASES = ["tabular:2", "tabular:8", "large:2", "large:4"]

# the targets: seconds per round by (workload, K); TTP peak above base in model sizes
ROUND_TARGETS_S = {("tabular", 2): 0.015, ("tabular", 8): 0.035, ("large", 2): 1.5, ("large", 4): 3.0}
TTP_PEAK_TARGET_MODELS = 4.0


def say(*parts: object) -> None:
    print("[grid_round]", *parts, file=sys.stderr, flush=True)


def dataset_name(workload: str, k: int) -> str:
    return f"{'bc' if workload == 'tabular' else 'synth'}_k{k}"


# ---- data ----

def prepare_data(workspace: Path, cases: list[tuple[str, int]]) -> None:
    """Each worker_i's data root gets one dataset per case it takes part in (bc_k2, synth_k4, ...)."""
    import numpy as np
    import pandas as pd

    from synergos_local.datasets import METAS, prepare_sklearn, write_tabular

    for workload, k in cases:
        name = dataset_name(workload, k)
        if workload == "tabular":
            staging = workspace / "staging" / name
            prepare_sklearn(staging, "breast_cancer", parties=k)
            for i in range(1, k + 1):
                dest = workspace / f"worker_{i}" / "data" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staging / f"worker_{i}" / "data" / "breast_cancer"), str(dest))
        else:
            schema = {f"x{j:02d}": "float64" for j in range(LARGE_FEATURES)} | {"target": "float64"}
            rng = np.random.default_rng(7)
            w = rng.normal(size=LARGE_FEATURES)
            for i in range(1, k + 1):
                for meta in METAS:
                    X = rng.normal(size=(LARGE_ROWS[meta], LARGE_FEATURES))
                    frame = pd.DataFrame(X, columns=[f"x{j:02d}" for j in range(LARGE_FEATURES)])
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
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    got = 0
    while got < total:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    conn.sendall(b"k")
    conn.close()
    srv.close()
    os._exit(0)


def loopback_throughput(total_bytes: int, repeats: int = 2) -> dict:
    """Bytes/s of a plain TCP stream 127.0.0.1 -> 127.0.0.1 between two processes (best of `repeats`)."""
    chunk = memoryview(bytes(4 * MiB))
    results = []
    for _ in range(repeats):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                _sink(w, total_bytes)
            finally:
                os._exit(1)
        os.close(w)
        port = int.from_bytes(os.read(r, 2), "big")
        os.close(r)
        s = socket.create_connection(("127.0.0.1", port))
        started = time.perf_counter()
        sent = 0
        while sent < total_bytes:
            n = min(len(chunk), total_bytes - sent)
            s.sendall(chunk[:n])
            sent += n
        assert s.recv(1) == b"k"
        elapsed = time.perf_counter() - started
        s.close()
        os.waitpid(pid, 0)
        results.append(total_bytes / elapsed)
    return {"bytes_per_s": max(results), "runs_bytes_per_s": results, "bytes": total_bytes}


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
                    raise SystemExit(f"{host}:{port} is not free ({exc}); pick --address-prefix/--rest-port/--ws-port")
        root = workspace / f"worker_{i}"
        service = worker(f"w{i}", host, args.rest_port, args.ws_port, root / "data", root / "outputs",
                         workspace / "logs")
        service.env.update(env)
        if args.profile_workers:
            # the worker's main thread (event loop, wire codec) under cProfile; stats written on SIGTERM
            args.profile_workers.mkdir(parents=True, exist_ok=True)
            at = service.args.index("synergos_worker")
            service.args = [sys.executable, __file__, "--_profile-worker", str(args.profile_workers / f"w{i}.prof"),
                            *service.args[at + 1:]]
        topo.add(service)
        nodes.append({"participant_id": f"w{i}", "host": host, "port": args.ws_port, "f_port": args.rest_port,
                      "pid": service.process.pid})
    return nodes


# ---- CPU used by other processes on the machine while a case runs (benchmark noise) ----

def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]


def _proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def _proc_cpu_ns(pid: int) -> int:
    """CPU time of all of a process's threads, in ns (schedstat is finer than the tick counters)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total


class CpuMeter:
    """CPU seconds used by the whole machine, by this benchmark (workers + TTP child) and by others."""

    def __init__(self, worker_pids: list[int]) -> None:
        self.pids = worker_pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "CpuMeter":
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
        ours = (sum(_proc_ticks(p) for p in self.pids) - self.ours0) / self.hz + (ru.ru_utime + ru.ru_stime - self.child0)
        self.ours_s = ours
        self.foreign_s = max(0.0, busy - ours)
        self.foreign_share = self.foreign_s / (self.wall * (os.cpu_count() or 1))


# ---- the TTP side of one case (runs in its own subprocess) ----

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Spans:
    """Opt-in (--spans) perf_counter totals of the TTP's round phases, by monkeypatching the TTP modules."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.rounds: list[dict[str, float]] = []
        self.events: list[tuple[str, float, float]] = []

    def add(self, name: str, dt: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + dt

    def cut(self) -> None:
        self.rounds.append(self.totals)
        self.totals = {}

    def wrap_async(self, owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        async def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return await original(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t)
                self.events.append((name, t, time.perf_counter()))
        setattr(owner, attr, timed)

    def wrap(self, owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t)
        setattr(owner, attr, timed)

    def install(self) -> None:
        from synergos_ttp import federated, grid

        self.wrap_async(grid.GridRun, "broadcast", "broadcast")
        self.wrap_async(grid.GridRun, "replies", "await_reply_headers")
        self.wrap_async(federated, "_aggregate", "aggregate(total)")
        self.wrap(federated, "fold_slices", "aggregate.fold")
        self.wrap(federated.StateFileWriter, "__init__", "aggregate.local_files_open")
        self.wrap(federated.StateFileWriter, "write", "aggregate.local_files_write")
        self.wrap(federated.StateFileWriter, "commit", "aggregate.local_files_commit")
        self.wrap(federated, "_checkpoint", "checkpoint")


def ttp_case(case: dict) -> dict:
    import httpx
    import torch

    if case.get("ttp_threads"):
        torch.set_num_threads(int(case["ttp_threads"]))

    from synergos_core.schemas import RunHyperparameters
    from synergos_core.settings import FederationLimits
    from synergos_ttp import federated
    from synergos_ttp.grid import GridNode, GridRun

    workload = WORKLOADS[case["workload"]]
    name = dataset_name(case["workload"], case["k"])
    tags = {"train": [[name, "train"]], "evaluate": [[name, "evaluate"]], "predict": []}
    nodes = [GridNode(n["participant_id"], n["host"], n["port"], n["f_port"], tags=tags, alignment={})
             for n in case["nodes"]]
    hp = RunHyperparameters(algorithm="FedAvg", mu=0.0, rounds=case.get("rounds") or workload["rounds"], epochs=1, batch_size=None,
                            optimizer="SGD", lr_scheduler=None, patience=0, seed=42,
                            **workload["hp"]).model_dump()
    limits = FederationLimits()
    out_dir = Path(case["out_dir"])
    marks: list[float] = []

    if case.get("sync_files") and hasattr(federated, "_FileQueue"):
        # A/B switch: write the run's files inline on the event loop, as before the background writer
        async def _no_wait(self) -> None:
            return None

        def _inline(self, fn, *a) -> None:
            fn(*a)
        federated._FileQueue.submit = _inline
        federated._FileQueue.wait = _no_wait
    spans = Spans() if case.get("spans") else None
    if spans is not None:
        spans.install()

    worker_pids = [n["pid"] for n in case["nodes"]]
    cpu_marks: list[list[int]] = [[_proc_cpu_ns(p) for p in worker_pids]]

    def progress(**_: object) -> None:
        marks.append(time.perf_counter())
        cpu_marks.append([_proc_cpu_ns(p) for p in worker_pids])
        if spans is not None:
            spans.cut()

    async def go() -> dict:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0)) as http:
            keys = ("bench", "grid_round", case["workload"], f"k{case['k']}")
            async with GridRun(keys, nodes, workload["action"], workload["spec"], hp, limits, http) as grid:
                base = rss_bytes()
                maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                profiler = None
                if case.get("profile"):
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                started = time.perf_counter()
                outcome = await federated.train(grid, out_dir, progress)
                ended = time.perf_counter()
                total = ended - started
                tail = ended - marks[-1] if marks else 0.0
                if profiler is not None:
                    profiler.disable()
                    import io
                    import pstats

                    buf = io.StringIO()
                    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(45)
                    print(buf.getvalue(), file=sys.stderr)
                    buf = io.StringIO()
                    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
                    print(buf.getvalue(), file=sys.stderr)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        state_bytes = sum(t.numel() * t.element_size() for t in outcome.state.values())
        params = sum(t.numel() for t in outcome.state.values())
        timings = outcome.timings
        # federated.train adds the closing `evaluate` request to the last round's timing; progress is
        # called after every round and once more after that request, so take it back out.
        final_eval_s = marks[-1] - marks[-2] if len(marks) == len(timings) + 1 else 0.0
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
            "train_total_s": total,
            "tail_s": tail,
            "state_bytes": state_bytes,
            "params": params,
            "rss_base": base,
            "maxrss_before": maxrss_before,
            "maxrss_peak": peak,
            "torch_threads": torch.get_num_threads(),
            "shard_bytes": limits.shard_bytes,
            "train_loss": outcome.history["train"],
            "spans": spans.rounds if spans is not None else None,
            "span_events": spans.events if spans is not None else None,
            # per round: CPU seconds of each worker process (all threads), from /proc/<pid>/task/*/schedstat
            "worker_cpu": [[(b - a) / 1e9 for a, b in zip(x, y)] for x, y in zip(cpu_marks, cpu_marks[1:])],
        }

    return asyncio.run(go())


def run_case(workload: str, k: int, nodes: list[dict], workspace: Path, args: argparse.Namespace,
             floor_bps: float) -> dict:
    out_dir = workspace / "ttp" / f"{workload}_k{k}"
    case = {"workload": workload, "k": k, "nodes": nodes[:k], "out_dir": str(out_dir),
            "ttp_threads": args.ttp_threads, "profile": args.profile, "spans": args.spans,
            "sync_files": args.sync_files, "rounds": args.rounds}
    env = dict(os.environ)
    if args.shard_bytes:
        env["SYNERGOS_FED_SHARD_BYTES"] = str(args.shard_bytes)
    with CpuMeter([n["pid"] for n in nodes[:k]]) as cpu:
        proc = subprocess.run([sys.executable, __file__, "--_ttp", json.dumps(case)], stdout=subprocess.PIPE,
                              env=env, check=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"TTP side of {workload} K={k} failed (exit {proc.returncode}); see stderr")
    raw = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if os.environ.get("BENCH_DUMP_RAW"):
        Path(os.environ["BENCH_DUMP_RAW"]).write_text(json.dumps(raw))
    walls, compute, moved = raw["walls"], raw["worker_compute"], raw["bytes_moved"]
    steady = slice(1, None) if len(walls) > 1 else slice(0, None)
    wall_med = statistics.median(walls[steady])
    bytes_round = int(statistics.median(moved[steady]))
    floor_s = bytes_round / floor_bps
    model = raw["state_bytes"]
    peak_delta = max(0, raw["maxrss_peak"] - raw["rss_base"])
    target_s = ROUND_TARGETS_S.get((workload, k))
    return {
        "workload": workload,
        "K": k,
        "params": raw["params"],
        "model_bytes": model,
        "rounds": raw["rounds_completed"],
        "round_wall_s": [round(w, 6) for w in walls],
        "warmup_round_s": round(walls[0], 6),
        "round_wall_median_s": round(wall_med, 6),
        "worker_compute_median_s": round(statistics.median(compute[steady]), 6),
        "bytes_per_round": bytes_round,
        "transfer_floor_s": round(floor_s, 6),
        "wall_over_floor": round(wall_med / floor_s, 2) if floor_s else None,
        "worker_compute_s": [round(c, 6) for c in compute],
        "final_evaluate_s": round(raw["final_evaluate_s"], 6),
        "after_last_round_s": round(raw["tail_s"], 6),
        "train_total_s": round(raw["train_total_s"], 3),
        **({"ttp_spans_median_ms": {k: round(1e3 * statistics.median(r.get(k, 0.0) for r in raw["spans"][:len(walls)][steady]), 2)
                                    for k in sorted({k for r in raw["spans"] for k in r})}}
           if raw.get("spans") else {}),
        "ttp_torch_threads": raw["torch_threads"],
        "cpu_s_bench": round(cpu.ours_s, 2),
        "worker_cpu_median_s": round(statistics.median(max(c) for c in raw["worker_cpu"][:len(walls)][steady]), 6),
        "workers_cpu_total_median_s": round(statistics.median(sum(c) for c in raw["worker_cpu"][:len(walls)][steady]), 6),
        "cpu_s_foreign": round(cpu.foreign_s, 2),
        "foreign_cpu_share": round(cpu.foreign_share, 3),
        "shard_bytes": raw["shard_bytes"],
        "ttp_rss_base_mb": round(raw["rss_base"] / MiB, 1),
        "ttp_peak_delta_mb": round(peak_delta / MiB, 1),
        "ttp_peak_over_model": round(peak_delta / model, 2),
        "targets": {
            "round_wall_s": {"target": target_s, "met": target_s is not None and wall_med <= target_s},
            "ttp_peak_delta_models": {"target": TTP_PEAK_TARGET_MODELS,
                                      "met": peak_delta <= TTP_PEAK_TARGET_MODELS * model},
        },
    }


def profile_worker(out: str, argv: list[str]) -> None:
    """Run a Worker with cProfile on every thread (event loop and executor); stats dumped when it stops."""
    import cProfile
    import pstats
    import signal
    import threading

    signal.raise_signal = lambda sig: None  # uvicorn re-raises SIGTERM after shutdown; we want to dump first
    profilers = []
    thread_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profilers.append(prof)
        prof.enable()
        try:
            thread_run(self)
        finally:
            prof.disable()
    if not os.environ.get("BENCH_PHASES_ONLY"):
        threading.Thread.run = run
    from synergos_worker.cli import main as worker_main

    # per-round phase timings (wall and this thread's CPU), written next to the profile
    import synergos_worker.federation as wf
    from synergos_core.training import LocalTrainer

    phases: dict[str, list[tuple[float, float]]] = {}
    events: list[tuple[str, float, float]] = []

    def timed(owner: object, attr: str, name: str, is_async: bool) -> None:
        original = getattr(owner, attr)
        if is_async:
            async def wrapper(*a, **kw):
                t, c = time.perf_counter(), time.thread_time()
                try:
                    return await original(*a, **kw)
                finally:
                    phases.setdefault(name, []).append((time.perf_counter() - t, time.thread_time() - c))
                    events.append((name, t, time.perf_counter()))
        else:
            def wrapper(*a, **kw):
                t, c = time.perf_counter(), time.thread_time()
                try:
                    return original(*a, **kw)
                finally:
                    phases.setdefault(name, []).append((time.perf_counter() - t, time.thread_time() - c))
        setattr(owner, attr, wrapper)

    timed(wf.FederationServer, "_serve", "serve(total)", True)
    timed(wf.FederationServer, "_receive_weights", "receive_weights", True)
    timed(wf, "send_state", "send_state", True)
    timed(LocalTrainer, "train", "train", False)
    timed(LocalTrainer, "evaluate", "evaluate", False)
    timed(wf.asyncio, "to_thread", "to_thread", True)
    timed(wf.FederationServer, "_handle", "handle", True)
    timed(wf, "recv_header", "recv_header", True)

    prof = cProfile.Profile()
    if not os.environ.get("BENCH_PHASES_ONLY"):
        prof.enable()
    try:
        worker_main(argv)
    finally:
        prof.disable()
        with open(out + ".phases.json", "w") as f:
            json.dump({k: {"n": len(v), "median_wall_ms": 1e3 * statistics.median(w for w, _ in v[2:] or v),
                           "median_cpu_ms": 1e3 * statistics.median(c for _, c in v[2:] or v)}
                       for k, v in phases.items()}, f, indent=1)
        with open(out + ".events.json", "w") as f:
            json.dump(events, f)
        if not os.environ.get("BENCH_PHASES_ONLY"):
            stats = pstats.Stats(prof)
            for other in profilers:
                try:
                    stats.add(other)
                except (TypeError, ValueError):
                    pass
            stats.dump_stats(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_profile-worker":
        return profile_worker(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="workload:K pairs (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="keep data, logs and outputs here (default: a temp dir)")
    parser.add_argument("--address-prefix", default="127.0.1", help="worker i listens on PREFIX.i (default 127.0.1)")
    parser.add_argument("--rest-port", type=int, default=5000)
    parser.add_argument("--ws-port", type=int, default=8020)
    parser.add_argument("--shard-bytes", type=int, help="SYNERGOS_FED_SHARD_BYTES for workers and TTP alike")
    parser.add_argument("--ttp-threads", type=int, help="torch.set_num_threads in the TTP process (default: torch's)")
    parser.add_argument("--loopback-mb", type=int, default=512, help="MiB sent to measure loopback TCP throughput")
    parser.add_argument("--rounds", type=int, help="override every workload's round count (for profiling)")
    parser.add_argument("--spans", action="store_true", help="time the TTP's round phases (median ms per round)")
    parser.add_argument("--profile-workers", type=Path, metavar="DIR",
                        help="run each worker under cProfile, writing DIR/wN.prof when it stops")
    parser.add_argument("--sync-files", action="store_true",
                        help="A/B: write local model files and checkpoints inline instead of in the background")
    parser.add_argument("--profile", action="store_true", help="cProfile the TTP side; stats go to stderr")
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
        os.environ["SYNERGOS_FED_SHARD_BYTES"] = str(args.shard_bytes)

    from synergos_local.topology import Topology

    began = time.perf_counter()
    temp = None
    if args.workdir is None:
        temp = tempfile.mkdtemp(prefix="synergos_bench_")
        workspace = Path(temp)
    else:
        workspace = args.workdir
        workspace.mkdir(parents=True, exist_ok=True)
    try:
        say(f"workspace {workspace}")
        prepare_data(workspace, cases)
        say(f"measuring loopback TCP throughput ({args.loopback_mb} MiB)")
        loopback = loopback_throughput(args.loopback_mb * MiB, repeats=3)
        say(f"loopback: {loopback['bytes_per_s'] / 1e9:.2f} GB/s")
        results = []
        with Topology() as topo:
            count = max(k for _, k in cases)
            say(f"starting {count} workers on {args.address_prefix}.1-{count}")
            nodes = start_workers(topo, workspace, count, args)
            topo.wait(120)
            say("workers healthy")
            for workload, k in cases:
                say(f"running {workload} K={k}")
                result = run_case(workload, k, nodes, workspace, args, loopback["bytes_per_s"])
                say(f"  {workload} K={k}: round {result['round_wall_median_s'] * 1e3:.1f} ms "
                    f"(warm-up {result['warmup_round_s'] * 1e3:.1f} ms), worker compute "
                    f"{result['worker_compute_median_s'] * 1e3:.1f} ms, floor {result['transfer_floor_s'] * 1e3:.1f} ms,"
                    f" TTP peak +{result['ttp_peak_delta_mb']} MB ({result['ttp_peak_over_model']}x model)")
                results.append(result)
        # re-measure after the run, to see whether the floor moved while the grid was busy
        loopback_after = loopback_throughput(args.loopback_mb * MiB, repeats=1)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    from importlib.metadata import version

    targets = {}
    for r in results:
        targets[f"{r['workload']}_k{r['K']}_round"] = r["targets"]["round_wall_s"]["met"]
        targets[f"{r['workload']}_k{r['K']}_ttp_peak"] = r["targets"]["ttp_peak_delta_models"]["met"]
    report = {
        "benchmark": "grid_round",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": version("torch"),
                    "platform": platform.platform()},
        "loopback_bytes_per_s": round(loopback["bytes_per_s"]),
        "loadavg_end": os.getloadavg(),
        "loopback_runs_bytes_per_s": [round(x) for x in loopback["runs_bytes_per_s"] + loopback_after["runs_bytes_per_s"]],
        "cases": results,
        "targets_met": targets,
        "all_targets_met": all(targets.values()),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
