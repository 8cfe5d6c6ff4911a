"""The MLflow tracking adapter without MLflow: names, URIs, the spool and the retrying queue.

A small in-memory stand-in for `MlflowClient` is injected through `client_factory`; the real
server is exercised in tests/integration/test_mlops_tracker.py."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS

from synergos_mlops import Tracker, default_uri_for, operations, tracking_uri
from synergos_mlops.naming import experiment_name, metric_name, param_value, registered_model_name
from synergos_mlops.spool import Spool

URI = "fake://mlflow"
KEYS = {"collab_id": "c1", "project_id": "p1", "expt_id": "e1", "run_id": "r1"}


class FakeMlflow:
    """Just enough of MlflowClient for the Tracker's operations, kept in memory."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.experiments: dict[str, SimpleNamespace] = {}
        self.runs: dict[str, SimpleNamespace] = {}
        self.metrics: dict[str, set[tuple]] = {}
        self.artifacts: dict[str, list[str]] = {}
        self.models: dict[str, dict] = {}
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)

    def get_experiment_by_name(self, name):
        self._call("get_experiment_by_name")
        return self.experiments.get(name)

    def create_experiment(self, name, artifact_location=None):
        self._call("create_experiment")
        if name in self.experiments:
            raise MlflowException("exists", RESOURCE_ALREADY_EXISTS)
        self.experiments[name] = SimpleNamespace(
            experiment_id=str(next(self.ids)), lifecycle_stage="active", name=name, artifact_location=artifact_location
        )
        return self.experiments[name].experiment_id

    def restore_experiment(self, experiment_id):
        self._call("restore_experiment")

    def search_runs(self, experiment_ids, filter_string="", max_results=1000, order_by=None):
        self._call("search_runs")
        wanted = filter_string.split("=", 1)[1].strip().strip("'\"")
        return [
            r
            for r in self.runs.values()
            if r.info.experiment_id in experiment_ids and r.data.tags.get("synergos.run_key") == wanted
        ]

    def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
        self._call("create_run")
        run_id = f"mlrun{next(self.ids)}"
        run = SimpleNamespace(
            info=SimpleNamespace(
                run_id=run_id,
                experiment_id=experiment_id,
                run_name=run_name,
                status="RUNNING",
                artifact_uri=f"fake-artifacts:/{run_id}/artifacts",
            ),
            data=SimpleNamespace(params={}, tags=dict(tags or {})),
        )
        self.runs[run_id] = run
        return run

    def get_run(self, run_id):
        self._call("get_run")
        return self.runs[run_id]

    def update_run(self, run_id, status=None, name=None):
        self._call("update_run")
        self.runs[run_id].info.status = status

    def delete_tag(self, run_id, key):
        self._call("delete_tag")
        del self.runs[run_id].data.tags[key]

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call("log_batch")
        run = self.runs[run_id]
        for p in params:
            if p.key in run.data.params and run.data.params[p.key] != p.value:
                raise MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE)
            run.data.params[p.key] = p.value
        run.data.tags.update({t.key: t.value for t in tags})
        self.metrics.setdefault(run_id, set()).update((m.key, m.value, m.timestamp, m.step) for m in metrics)

    def set_terminated(self, run_id, status=None, end_time=None):
        self._call("set_terminated")
        self.runs[run_id].info.status = status

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self._call("log_artifact")
        self.artifacts.setdefault(run_id, []).append(f"{artifact_path}/{Path(local_path).name}")

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        self._call("log_artifacts")
        self.artifacts.setdefault(run_id, []).append(f"{artifact_path}/")

    def create_registered_model(self, name, description=None):
        self._call("create_registered_model")
        if name in self.models:
            raise MlflowException("exists", RESOURCE_ALREADY_EXISTS)
        self.models[name] = {"versions": [], "aliases": {}}

    def search_model_versions(self, filter_string):
        self._call("search_model_versions")
        name = filter_string.split("name=", 1)[1].split(" and ", 1)[0].strip("'\"")
        run_id = filter_string.split("run_id=", 1)[1].strip("'\"")
        return [v for v in self.models.get(name, {"versions": []})["versions"] if v.run_id == run_id]

    def create_model_version(self, name, source, run_id=None, tags=None, await_creation_for=300):
        self._call("create_model_version")
        versions = self.models[name]["versions"]
        versions.append(SimpleNamespace(version=str(len(versions) + 1), source=source, run_id=run_id, tags=tags))
        return versions[-1]

    def set_registered_model_alias(self, name, alias, version):
        self._call("set_registered_model_alias")
        self.models[name]["aliases"][alias] = version

    def get_model_version_by_alias(self, name, alias):
        self._call("get_model_version_by_alias")
        version = self.models[name]["aliases"][alias]
        return next(v for v in self.models[name]["versions"] if v.version == version)

    def run(self, run_id: str = "r1") -> SimpleNamespace:
        return next(r for r in self.runs.values() if r.info.run_name == run_id)


class Flaky:
    """Delegates to a FakeMlflow; the first `failures` calls raise `exc` instead."""

    def __init__(self, inner: FakeMlflow, failures: int, exc: Exception) -> None:
        self.inner, self.failures, self.exc = inner, failures, exc
        self.raised = 0

    def __getattr__(self, name):
        target = getattr(self.inner, name)

        def call(*args, **kwargs):
            if self.raised < self.failures:
                self.raised += 1
                raise self.exc
            return target(*args, **kwargs)

        return call


def make_tracker(tmp_path: Path, client, **kwargs) -> Tracker:
    kwargs.setdefault("retry_cap_s", 0.05)
    kwargs.setdefault("first_backoff_s", 0.01)
    return Tracker(URI, tmp_path / "spool", client_factory=lambda uri: client, **kwargs)


# -- names and URIs ------------------------------------------------------------------------------
def test_tracking_uri_comes_from_the_mlops_section_else_the_default():
    section = {"host": "10.0.0.5", "ports": {"main": 5500, "ui": 5500}, "secure": False}
    assert tracking_uri(section, "sqlite:///x.db") == "http://10.0.0.5:5500"
    assert tracking_uri({**section, "secure": True}, "d") == "https://10.0.0.5:5500"
    assert tracking_uri({"host": "::1", "ports": {"main": "5500"}}, "d") == "http://[::1]:5500"
    assert tracking_uri(SimpleNamespace(model_dump=lambda: section), "d") == "http://10.0.0.5:5500"
    assert tracking_uri(None, "sqlite:///x.db") == "sqlite:///x.db"
    assert tracking_uri({"host": "", "ports": {"main": 5500}}, "default") == "default"
    assert tracking_uri({"host": "mlops", "ports": {}}, "default") == "http://mlops:5500"


def test_default_uri_is_the_sqlite_store_in_the_mlflow_dir(tmp_path):
    assert default_uri_for(tmp_path / "mlflow") == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_names_follow_the_synergos_scheme_and_are_sanitised_for_mlflow():
    assert experiment_name("c", "p", "e") == "c_>_p_>_e"
    assert registered_model_name("c:1", "p/2", "e") == "c_1_>_p_2_>_e"
    assert metric_name("worker 1/node:0", "local_loss") == "worker_1_node_0_local_loss"
    assert metric_name("..") == "_.."
    assert metric_name("α β", "acc") == "__acc"
    assert len(metric_name("x" * 400)) == 250
    assert len(param_value("v" * 10_000)) == 6000


def test_training_metrics_take_str_or_int_rounds_and_skip_missing_values():
    history = {"train": {"1": 0.5, 2: 0.4, "3": None}, "evaluate": {"1": math.nan, "2": 0.7}}
    local = {"worker 1": {1: 0.3, "x": 0.2}}
    assert sorted(operations.training_metrics(history, local)) == [
        ["global_evaluate_loss", 0.7, 2],
        ["global_train_loss", 0.4, 2],
        ["global_train_loss", 0.5, 1],
        ["worker_1_local_loss", 0.3, 1],
    ]


def test_validation_metrics_prefix_participants_and_split_lists_per_class():
    metrics = operations.validation_metrics(
        {"p1": {"accuracy": [0.5, 0.75], "f_score": 0.6, "note": "text"}}, {"accuracy": 0.625}
    )
    assert sorted(metrics) == [
        ["aggregate_accuracy", 0.625, 0],
        ["p1_accuracy_class_0", 0.5, 0],
        ["p1_accuracy_class_1", 0.75, 0],
        ["p1_f_score", 0.6, 0],
    ]


# -- applying operations ---------------------------------------------------------------------------
def test_a_run_is_recorded_end_to_end_and_replaying_it_changes_nothing(tmp_path):
    model = tmp_path / "global.safetensors"
    model.write_bytes(b"weights")
    fake = FakeMlflow()
    tracker = make_tracker(tmp_path, fake)
    tracker.start_run(URI, KEYS, {"rounds": 2, "lr": 0.1}, tags={"mode": "basic"})
    tracker.log_training(URI, KEYS, {"train": {"1": 0.5}}, {"p1": {"1": 0.4}}, [model], model)
    tracker.log_validation(URI, KEYS, {"p1": {"accuracy": 0.9}}, None)
    tracker.set_champion(URI, "c1", "p1", "e1", "r1")
    assert tracker.flush(5)

    run = fake.run("r1")
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "rounds": "2"}
    assert run.data.tags["synergos.run_key"] == "c1/p1/e1/r1" and run.data.tags["mode"] == "basic"
    assert {m[0] for m in fake.metrics[run.info.run_id]} == {"global_train_loss", "p1_local_loss", "p1_accuracy"}
    assert fake.artifacts[run.info.run_id] == ["artifacts/global.safetensors", "model/global.safetensors"]
    version = fake.models["c1_>_p1_>_e1"]["versions"][0]
    assert version.source == f"fake-artifacts:/{run.info.run_id}/artifacts/model/global.safetensors"
    assert tracker.champion(URI, "c1", "p1", "e1") == {
        "registered_model": "c1_>_p1_>_e1",
        "version": "1",
        "run_id": "r1",
    }
    tracker.close()

    # a crash after applying but before the journal said so: the same operation runs again (made a
    # millisecond later than the first log_training, whose metric would otherwise look identical)
    time.sleep(0.002)
    op = operations.new_op(
        "log_training", URI, KEYS, metrics=[["global_train_loss", 0.5, 1]], artifacts=[], model=str(model)
    )
    operations.apply(fake, op)
    operations.apply(fake, op)
    assert len(fake.runs) == 1
    assert len(fake.models["c1_>_p1_>_e1"]["versions"]) == 2  # one per log_training call, not per attempt
    assert len([m for m in fake.metrics[run.info.run_id] if m[0] == "global_train_loss"]) == 2


def test_fail_run_creates_a_missing_run_and_marks_it_failed_until_it_is_trained_again(tmp_path):
    fake = FakeMlflow()
    tracker = make_tracker(tmp_path, fake)
    tracker.fail_run(URI, KEYS, "worker_2 dropped in round 3")
    assert tracker.flush(5)
    run = fake.run("r1")
    assert run.info.status == "FAILED"
    assert run.data.tags["synergos.failure"] == "worker_2 dropped in round 3"

    tracker.start_run(URI, KEYS, {"lr": 0.1})
    assert tracker.flush(5)
    tracker.close()
    assert run.info.status == "RUNNING" and "synergos.failure" not in run.data.tags


# -- the queue -----------------------------------------------------------------------------------
def test_an_unreachable_store_is_retried_until_it_answers_with_one_warning(tmp_path, caplog):
    fake = FakeMlflow()
    flaky = Flaky(fake, failures=4, exc=ConnectionError("connection refused"))
    tracker = make_tracker(tmp_path, flaky)
    with caplog.at_level(logging.WARNING, logger="synergos_mlops"):
        tracker.start_run(URI, KEYS, {"lr": 0.1})
        tracker.fail_run(URI, KEYS, "stopped")
        assert tracker.flush(5)
    tracker.close()
    assert flaky.raised == 4
    assert fake.run("r1").info.status == "FAILED"
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    # one warning for the outage, however many operations had queued when it was noticed (1 or 2)
    assert len(unreachable) == 1 and re.search(r"\b[12] operations? waiting", unreachable[0].getMessage())


def test_an_operation_mlflow_refuses_is_dropped_and_the_queue_moves_on(tmp_path, caplog):
    fake = FakeMlflow()
    tracker = make_tracker(tmp_path, fake)
    tracker.start_run(URI, KEYS, {"lr": 0.1})
    tracker.start_run(URI, KEYS, {"lr": 0.2, "new": 1})  # a param may not change: warned, kept
    tracker.set_champion(URI, "c1", "p1", "e1", "r1")  # no model registered: refused, dropped
    tracker.fail_run(URI, KEYS, "later")
    with caplog.at_level(logging.WARNING, logger="synergos_mlops"):
        assert tracker.flush(5)
    tracker.close()
    assert fake.run("r1").data.params == {"lr": "0.1", "new": "1"}
    assert fake.run("r1").info.status == "FAILED"
    assert any("refused set_champion" in r.getMessage() for r in caplog.records)


def test_other_errors_are_retried_a_bounded_number_of_times(tmp_path):
    fake = FakeMlflow()
    flaky = Flaky(fake, failures=100, exc=RuntimeError("boom"))
    tracker = make_tracker(tmp_path, flaky, max_attempts=3)
    tracker.start_run(URI, KEYS, {})
    assert tracker.flush(5)
    tracker.close()
    assert flaky.raised == 3 and not fake.runs


def test_callers_never_wait_for_mlflow_nor_see_its_errors(tmp_path):
    release = threading.Event()

    class Hanging:
        def __getattr__(self, name):
            def call(*args, **kwargs):
                release.wait(10)
                raise ConnectionError("down")

            return call

    tracker = make_tracker(tmp_path, Hanging())
    started = time.monotonic()
    for i in range(20):
        tracker.start_run(URI, {**KEYS, "run_id": f"r{i}"}, {"lr": 0.1})
        tracker.log_training(URI, {**KEYS, "run_id": f"r{i}"}, {"train": {1: 0.1}}, {}, [], None)
    tracker.log_training(URI, {"collab_id": "c1"}, {}, {}, [], None)  # bad keys: logged, not raised
    assert time.monotonic() - started < 0.5
    assert tracker.pending() == 40
    assert tracker.flush(0.2) is False
    release.set()
    tracker.close(timeout=0.5)


def test_many_threads_may_enqueue_at_once(tmp_path):
    fake = FakeMlflow()
    tracker = make_tracker(tmp_path, fake)

    def trainer(n: int) -> None:
        for i in range(10):
            tracker.start_run(URI, {**KEYS, "run_id": f"t{n}_{i}"}, {"i": i})

    threads = [threading.Thread(target=trainer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.flush(10)
    tracker.close()
    assert len(fake.runs) == 80


# -- the spool -----------------------------------------------------------------------------------
def test_pending_operations_survive_a_restart_in_order(tmp_path, caplog):
    down = Flaky(FakeMlflow(), failures=10**6, exc=ConnectionError("down"))
    first = make_tracker(tmp_path, down)
    first.start_run(URI, KEYS, {"lr": 0.1})
    first.log_training(URI, KEYS, {"train": {"1": 0.5, "2": 0.25}}, {}, [], None)
    first.fail_run(URI, {**KEYS, "run_id": "r2"}, "crashed")
    assert first.pending() == 3
    first.close(timeout=0.2)

    spooled = [json.loads(line) for line in (tmp_path / "spool" / "mlflow-spool.jsonl").read_text().splitlines()]
    assert [entry["op"]["kind"] for entry in spooled] == ["start_run", "log_training", "fail_run"]

    fake = FakeMlflow()
    with caplog.at_level(logging.INFO, logger="synergos_mlops"):
        second = make_tracker(tmp_path, fake)
        assert second.flush(5)
    assert any("Reloaded 3 pending MLflow operations" in r.getMessage() for r in caplog.records)
    second.close()
    assert fake.run("r1").info.status == "FINISHED"
    assert {(m[0], m[1], m[3]) for m in fake.metrics[fake.run("r1").info.run_id]} == {
        ("global_train_loss", 0.5, 1),
        ("global_train_loss", 0.25, 2),
    }
    assert fake.run("r2").info.status == "FAILED"
    assert (tmp_path / "spool" / "mlflow-spool.jsonl").read_text() == ""


def test_the_spool_skips_done_and_torn_lines_and_adopts_orphaned_journals(tmp_path):
    (tmp_path / "mlflow-spool.jsonl").write_text(
        json.dumps({"seq": 0, "op": {"kind": "a"}})
        + "\n"
        + json.dumps({"seq": 1, "op": {"kind": "b"}})
        + "\n"
        + json.dumps({"done": 0})
        + "\n"
        + '{"seq": 2, "op": {"ki'
    )
    (tmp_path / "mlflow-spool-123-0.jsonl").write_text(json.dumps({"seq": 0, "op": {"kind": "c"}}) + "\n")
    spool = Spool(tmp_path)
    assert [op["kind"] for _, op in spool.open()] == ["b", "c"]
    assert not (tmp_path / "mlflow-spool-123-0.jsonl").exists()

    second = Spool(tmp_path)  # the primary journal is held: a second tracker gets its own
    assert second.open() == []
    assert second.path != spool.path
    seq = second.append({"kind": "d"})
    second.close()
    spool.close()
    third = Spool(tmp_path)
    assert [op["kind"] for _, op in third.open()] == ["b", "c", "d"]
    third.done(0, now_empty=False)
    third.close()
    assert seq == 0
