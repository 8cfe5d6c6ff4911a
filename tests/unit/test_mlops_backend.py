"""The MLflow store made ready before a service takes work (`synergos_mlops.backend`): created
whole or not at all, migrated on a copy, a broken one reported with the fix and never retried.
Real SQLite stores built by MLflow's own migrations; no server."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from synergos_mlops import Tracker, backend
from synergos_mlops.records import RunRecorder

KEYS = {"collab_id": "c1", "project_id": "p1", "expt_id": "e1", "run_id": "r1"}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _version(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def head() -> str:
    return backend._head_revision()


@pytest.fixture()
def ready_store(tmp_path: Path) -> Path:
    path = tmp_path / "mlflow" / "mlflow.db"
    assert backend.prepare(f"sqlite:///{path}").ready
    return path


def test_a_new_store_is_created_whole_at_the_latest_schema_and_nothing_is_left_beside_it(
    ready_store: Path, head: str
) -> None:
    assert _version(ready_store) == head and {"runs", "metrics", "latest_metrics"} <= _tables(ready_store)
    assert sorted(p.name for p in ready_store.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    before = _digest(ready_store)
    status = backend.prepare(f"sqlite:///{ready_store}")  # once made, left alone
    assert status.ready and status.health() == {"tracking": "ok", "store": str(ready_store)}
    assert _digest(ready_store) == before


def test_what_a_killed_creation_left_beside_the_store_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    stale = tmp_path / ".mlflow.db.creating-4242"
    stale.write_bytes(b"half a store")
    assert backend.prepare(f"sqlite:///{path}").ready
    assert not stale.exists() and path.exists()


def test_a_half_migrated_store_is_reported_with_the_file_and_the_fix_and_left_as_it_is(
    ready_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(ready_store) as connection:  # what an interrupted batch migration leaves
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    before = _digest(ready_store)
    uri = f"sqlite:///{ready_store}"
    status = backend.prepare(uri)
    assert not status.ready and status.uri == uri and status.path == ready_store
    assert status.reason == (
        f"MLflow store {ready_store} is half-migrated: table _alembic_tmp_latest_metrics exists, "
        "left by a schema migration that was interrupted."
    )
    assert f"mv {ready_store} {ready_store}.broken-" in (status.fix or "")
    assert _digest(ready_store) == before
    error = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error and str(ready_store) in error[0] and "mv " in error[0]
    assert status.health()["tracking"] == "disabled" and backend.check(uri).reason == status.reason


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(b"this is no database" * 100), "cannot be read as an SQLite database"),
        (lambda p: _set_version(p, "ffffffffffff"), "schema version ffffffffffff, which this MLflow does not know"),
        (lambda p: _drop(p, "alembic_version"), "holds tables but no MLflow schema version"),
    ],
)
def test_other_broken_stores_are_reported_not_touched(ready_store: Path, damage, why) -> None:
    damage(ready_store)
    before = _digest(ready_store)
    status = backend.prepare(f"sqlite:///{ready_store}")
    assert not status.ready and why in (status.reason or "")
    assert _digest(ready_store) == before


def _set_version(path: Path, version: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (version,))


def _drop(path: Path, table: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(f"DROP TABLE {table}")


def test_an_out_of_date_store_is_migrated_on_a_copy_that_replaces_it(tmp_path: Path, head: str) -> None:
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    path = tmp_path / "mlflow.db"
    engine = create_sqlalchemy_engine(f"sqlite:///{path}")  # a store as an MLflow 1.x left it
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(f"sqlite:///{path}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0a8213491aaa")
    engine.dispose()
    assert _version(path) == "0a8213491aaa"
    status = backend.prepare(f"sqlite:///{path}")
    assert status.ready and _version(path) == head
    assert not list(tmp_path.glob(".mlflow.db.migrating-*"))


def test_an_empty_database_file_becomes_a_store(tmp_path: Path, head: str) -> None:
    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).close()
    assert backend.prepare(f"sqlite:///{path}").ready and _version(path) == head


def test_services_sharing_the_directory_prepare_it_once(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    results: list[backend.StoreStatus] = []
    threads = [threading.Thread(target=lambda: results.append(backend.prepare(f"sqlite:///{path}"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and all(r.ready for r in results)


def test_servers_and_other_uris_are_not_prepared_here() -> None:
    assert backend.prepare("http://mlops:5500").ready
    assert backend.sqlite_path("sqlite:///:memory:") is None and backend.sqlite_path("sqlite:////a/b.db") == Path(
        "/a/b.db"
    )


# -- the Tracker and a broken store ---------------------------------------------------------------
class CountingClient:
    """Fails like MLflow on a half-migrated store, and counts the attempts."""

    attempts = 0

    def get_experiment_by_name(self, name):
        CountingClient.attempts += 1
        raise OperationalError("CREATE TABLE _alembic_tmp_latest_metrics", {}, Exception("already exists"))


def test_a_store_found_broken_at_run_time_disables_tracking_once_and_keeps_the_records(
    ready_store: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{ready_store}"
    CountingClient.attempts = 0
    tracker = Tracker(uri, tmp_path / "spool", client_factory=lambda _uri: CountingClient(), first_backoff_s=0.01)
    try:
        _drop(ready_store, "runs")  # still a store, but the migration went wrong ...
        with sqlite3.connect(ready_store) as connection:
            connection.execute("CREATE TABLE _alembic_tmp_runs (run_uuid VARCHAR(32))")  # ... half-way
        tracker.start_run(uri, KEYS, {"lr": 0.1})
        deadline = time.monotonic() + 10
        while not tracker.status()["disabled"] and time.monotonic() < deadline:
            time.sleep(0.02)
        tracker.start_run(uri, KEYS, {"lr": 0.2})
        time.sleep(0.3)
        status = tracker.status()
        assert CountingClient.attempts == 1  # not retried every 10 s forever
        assert status["pending"] == 0 and status["held"] == 2
        assert status["disabled"][0]["reason"].endswith(
            "table _alembic_tmp_runs exists, left by a schema migration that was interrupted."
        )
        assert tracker.champion(uri, "c1", "p1", "e1") is None
    finally:
        tracker.close(timeout=2)
    # the records wait in the spool for a store that works (applied then: see the next test)
    spool = list((tmp_path / "spool").glob("*.jsonl"))
    assert spool and sum(1 for line in spool[0].read_text().splitlines() if '"op"' in line) == 2


def test_a_recorder_on_a_broken_directory_store_serves_on_with_tracking_disabled(tmp_path: Path) -> None:
    mlflow_dir = tmp_path / "mlflow"
    store = mlflow_dir / "mlflow.db"
    assert backend.prepare(f"sqlite:///{store}").ready
    with sqlite3.connect(store) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    recorder = RunRecorder(mlflow_dir, tmp_path / "outputs", tmp_path / "spool")
    try:
        recorder.started(recorder.default_uri, KEYS, {"lr": 0.1})  # neither raises nor blocks
        health = recorder.health()["mlflow"]
        assert health["tracking"] == "disabled" and health["store"] == str(store)
        assert "half-migrated" in health["reason"] and "move it aside" in health["fix"]
        assert health["held"] == 1 and health["pending"] == 0
    finally:
        recorder.close()
    # fixed (moved aside): the next start creates a fresh store and applies what was held
    store.rename(store.with_name("mlflow.db.broken"))
    recorder = RunRecorder(mlflow_dir, tmp_path / "outputs", tmp_path / "spool")
    try:
        assert recorder.health()["mlflow"]["tracking"] == "ok"
        assert recorder.tracker.flush(60) and recorder.health()["mlflow"]["held"] == 0
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=recorder.default_uri)
        [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
        [run] = client.search_runs([experiment.experiment_id])
        assert run.data.params["lr"] == "0.1"
    finally:
        recorder.close()
