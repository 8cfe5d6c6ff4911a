"""The MLflow store is made ready once, at start-up, never half: a store creation killed half-way
leaves no store behind, and a half-migrated store is reported with the file and the fix while the
TTP and the Director serve on (tracking disabled, the reason in /health); MLOps refuses to start
MLflow on it. Real service processes on loopback."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from synergos_local import topology
from synergos_mlops import backend

from .conftest import REST, register_parties

HALF_MIGRATED = "_alembic_tmp_latest_metrics"
MLP = [
    {"activation": "sigmoid", "is_input": True, "l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}}
]


def _half_migrated(mlflow_dir: Path) -> Path:
    """A store as a TTP killed during its migration left it (the leftover of a batch migration)."""
    store = mlflow_dir / "mlflow.db"
    assert backend.prepare(f"sqlite:///{store}").ready
    with sqlite3.connect(store) as connection:
        connection.execute(f"CREATE TABLE {HALF_MIGRATED} (key VARCHAR(250), value FLOAT)")
    return store


def _health(topo: topology.Topology, service: topology.Service) -> dict:
    return topo.client().get(service.health_url).json()["data"]


def test_a_store_creation_killed_half_way_leaves_no_store_and_the_next_start_builds_one(tmp_path: Path) -> None:
    mlflow_dir = tmp_path / "mlflow"
    store = mlflow_dir / "mlflow.db"
    creating = subprocess.Popen(
        [sys.executable, "-c", f"from synergos_mlops import backend; backend.prepare('sqlite:///{store}')"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(mlflow_dir.glob(".mlflow.db.creating-*")):  # the migration has begun
            assert creating.poll() is None and time.monotonic() < deadline, "the store was never being created"
            time.sleep(0.005)
        time.sleep(0.3)  # into the migrations
        os.killpg(creating.pid, signal.SIGKILL)
        creating.wait(10)
    finally:
        if creating.poll() is None:
            os.killpg(creating.pid, signal.SIGKILL)
    assert not store.exists()  # before: a half-migrated mlflow.db that no later start could use
    logs = tmp_path / "logs"
    with topology.Topology() as topo:
        ttp = topo.add(topology.ttp("ttp_after_kill", f"{topology.loopback_block()}.1", REST, tmp_path, logs))
        topo.wait(120)
        assert _health(topo, ttp)["mlflow"]["tracking"] == "ok"
    assert store.exists() and not list(mlflow_dir.glob(".mlflow.db.creating-*"))


def test_on_a_half_migrated_store_the_ttp_trains_with_tracking_disabled_and_says_what_to_do(grid) -> None:
    workdir = grid.workspace / "ttp_broken_mlflow"
    store = _half_migrated(workdir / "mlflow")
    host = f"{topology.loopback_block()}.1"
    with topology.Topology(grid.identities) as topo:
        ttp = topo.add(topology.ttp("ttp_broken_mlflow", host, REST, workdir, grid.workspace / "logs"))
        topo.wait(120)  # it starts, and serves
        mlflow = _health(topo, ttp)["mlflow"]
        assert mlflow["tracking"] == "disabled" and mlflow["store"] == str(store)
        assert mlflow["reason"] == (
            f"MLflow store {store} is half-migrated: table {HALF_MIGRATED} exists, "
            "left by a schema migration that was interrupted."
        )
        assert f"mv {store} " in mlflow["fix"]
        from synergos import Driver

        driver = Driver(host=host, port=REST, show_progress=False, credentials=grid.identities.user())
        register_parties(driver, "broken_mlflow", "p", "breast_cancer")
        driver.experiments.create(collab_id="broken_mlflow", project_id="p", expt_id="e", model=MLP)
        run = {"collab_id": "broken_mlflow", "project_id": "p", "expt_id": "e", "run_id": "r"}
        driver.runs.create(**run, rounds=2, epochs=2, criterion="BCELoss", lr_scheduler="none")
        driver.models.create(**run)
        models = driver.models.read(**run)["data"]
        assert models and models[0]["rounds_completed"] == 2  # training is not held up
        after = _health(topo, ttp)["mlflow"]
        assert after["tracking"] == "disabled" and after["held"] >= 2 and after["pending"] == 0
        time.sleep(11)  # the tracker used to retry every 10 s
        log = ttp.log_path.read_text()
    errors = [line for line in log.splitlines() if "ERROR" in line and "MLflow" in line]
    assert len(errors) == 1 and str(store) in errors[0] and f"mv {store} " in errors[0]
    assert "unreachable" not in log and "retrying" not in log
    assert HALF_MIGRATED in {r[0] for r in sqlite3.connect(store).execute("SELECT name FROM sqlite_master")}


def test_the_director_starts_on_a_half_migrated_store_and_mlops_refuses_to_serve_it(tmp_path: Path) -> None:
    workdir = tmp_path / "director"
    store = _half_migrated(workdir / "mlflow")
    logs = tmp_path / "logs"
    with topology.Topology() as topo:
        director = topo.add(topology.director("director", f"{topology.loopback_block()}.1", REST, workdir, logs))
        topo.wait(120)
        mlflow = _health(topo, director)["mlflow"]
        assert mlflow["tracking"] == "disabled" and "half-migrated" in mlflow["reason"] and str(store) in mlflow["fix"]
    mlops = topology.mlops("mlops", f"{topology.loopback_block(ports=(5500,))}.1", 5500, workdir / "mlflow", logs)
    mlops.start()
    try:
        assert mlops.process is not None and mlops.process.wait(60) == 78  # EX_CONFIG: an operator must act
    finally:
        mlops.stop()
    said = mlops.log_path.read_text()
    assert f"Not starting MLflow: MLflow store {store} is half-migrated" in said and f"mv {store} " in said
