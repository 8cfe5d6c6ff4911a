"""The Tracker against a real `synergos-mlops` server process, checked through MLflow's REST API.

The server runs on a random loopback address and free port with its store in a temp dir; it is
stopped by PID at the end, even on failure. One test stops and restarts it (the outage case)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from synergos_mlops import Tracker, default_uri_for, tracking_uri

pytestmark = pytest.mark.integration

EXPERIMENT = "mlops_c_>_mlops_p_>_e1"


def free_address() -> tuple[str, int]:
    for _ in range(50):
        host = f"127.{random.randint(10, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as sock:
            try:
                sock.bind((host, 0))
            except OSError:
                continue
            return host, sock.getsockname()[1]
    raise RuntimeError("no free loopback address")


def mlops_command() -> list[str]:
    script = Path(sys.executable).with_name("synergos-mlops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "synergos_mlops"]


class MLflowServer:
    def __init__(self, host: str, port: int, mlflow_dir: Path, log_path: Path) -> None:
        self.host, self.port, self.mlflow_dir, self.log_path = host, port, mlflow_dir, log_path
        self.url = f"http://{host}:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *mlops_command(),
                    "--id",
                    "mlops",
                    "--logging_variant",
                    "basic",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--mlflow_dir",
                    str(self.mlflow_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"synergos-mlops exited:\n{self.tail()}"
            try:
                if httpx.get(f"{self.url}/", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"MLflow UI never answered on {self.url}:\n{self.tail()}")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started
            return self.process.wait()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlops")
    host, port = free_address()
    server = MLflowServer(host, port, root / "mlflow", root / "mlops.log")
    try:
        server.start()
        yield server
    finally:
        code = server.stop()
        assert code in (0, None), f"synergos-mlops stopped with {code}:\n{server.tail()}"


@pytest.fixture
def tracker(tmp_path):
    tracker = Tracker("unused-default", tmp_path / "spool", retry_cap_s=1.0)
    yield tracker
    tracker.close(timeout=5)


@pytest.fixture
def training_outputs(tmp_path) -> tuple[Path, Path]:
    model = tmp_path / "global_model.safetensors"
    save_file(
        {"layer.weight": np.ones((3, 2), dtype=np.float32), "layer.bias": np.zeros(3, dtype=np.float32)}, str(model)
    )
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"train": {"1": 0.7, "2": 0.5}, "evaluate": {"1": 0.8, "2": 0.6}}))
    return model, history


def keys(run_id: str) -> dict[str, str]:
    return {"collab_id": "mlops_c", "project_id": "mlops_p", "expt_id": "e1", "run_id": run_id}


def record_training(tracker: Tracker, uri: str, run_id: str, model: Path, history: Path) -> None:
    tracker.start_run(uri, keys(run_id), {"algorithm": "FedProx", "rounds": 2, "lr": 0.001, "batch_size": None})
    tracker.log_training(
        uri,
        keys(run_id),
        json.loads(history.read_text()),
        {"participant_1": {1: 0.65, 2: 0.45}, "participant_2": {"1": 0.75, "2": 0.55}},
        [history],
        model,
    )


class MLflowRest:
    """MLflow's own REST API: what the UI and any other client would see."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/2.0/mlflow", timeout=10)

    def get(self, endpoint: str, **params) -> dict:
        response = self.http.get(endpoint, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def run(self, run_id: str) -> dict:
        experiment = self.get("/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
        response = self.http.post(
            "/runs/search",
            json={
                "experiment_ids": [experiment["experiment_id"]],
                "filter": f"tags.`synergos.run_key` = 'mlops_c/mlops_p/e1/{run_id}'",
            },
        )
        runs = response.json().get("runs", [])
        assert len(runs) == 1, response.text
        return runs[0]

    def history(self, mlflow_run_id: str, metric: str) -> list[tuple[int, float]]:
        metrics = self.get("/metrics/get-history", run_id=mlflow_run_id, metric_key=metric)["metrics"]
        return sorted((int(m.get("step", 0)), m["value"]) for m in metrics)

    def artifacts(self, mlflow_run_id: str, path: str) -> list[str]:
        return [f["path"] for f in self.get("/artifacts/list", run_id=mlflow_run_id, path=path).get("files", [])]

    def versions(self, mlflow_run_id: str) -> list[dict]:
        found = self.get("/model-versions/search", filter=f"name='{EXPERIMENT}'").get("model_versions", [])
        return [v for v in found if v["run_id"] == mlflow_run_id]


def assert_training_recorded(rest: MLflowRest, run_id: str) -> dict:
    run = rest.run(run_id)
    info, data = run["info"], run["data"]
    assert info["run_name"] == run_id and info["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params == {"algorithm": "FedProx", "batch_size": "None", "lr": "0.001", "rounds": "2"}
    mlflow_run_id = info["run_id"]
    assert rest.history(mlflow_run_id, "global_train_loss") == [(1, 0.7), (2, 0.5)]
    assert rest.history(mlflow_run_id, "global_evaluate_loss") == [(1, 0.8), (2, 0.6)]
    assert rest.history(mlflow_run_id, "participant_2_local_loss") == [(1, 0.75), (2, 0.55)]
    assert rest.artifacts(mlflow_run_id, "artifacts") == ["artifacts/history.json"]
    assert rest.artifacts(mlflow_run_id, "model") == ["model/global_model.safetensors"]
    versions = rest.versions(mlflow_run_id)
    assert len(versions) == 1 and versions[0]["source"].endswith("/model/global_model.safetensors")
    return run


def test_a_federated_run_is_recorded_in_mlflow(mlflow_server, tracker, training_outputs):
    model, history = training_outputs
    uri = tracking_uri(
        {"host": mlflow_server.host, "ports": {"main": mlflow_server.port, "ui": mlflow_server.port}, "secure": False},
        "unused-default",
    )
    record_training(tracker, uri, "run_1", model, history)
    tracker.log_validation(
        uri,
        keys("run_1"),
        {
            "participant_1": {"accuracy": [0.5, 0.75], "f_score": 0.6, "TP": 3},
            "participant_2": {"accuracy": [0.25, 1.0], "f_score": 0.7, "TP": 5},
        },
        {"accuracy": 0.625, "f_score": 0.65},
    )
    assert tracker.flush(30), "operations still pending"

    rest = MLflowRest(mlflow_server.url)
    run = assert_training_recorded(rest, "run_1")
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["participant_1_accuracy_class_1"] == 0.75 and metrics["participant_2_TP"] == 5
    assert metrics["aggregate_f_score"] == 0.65
    model_info = rest.get("/registered-models/get", name=EXPERIMENT)["registered_model"]
    assert model_info["name"] == EXPERIMENT

    tracker.set_champion(uri, "mlops_c", "mlops_p", "e1", "run_1")
    assert tracker.flush(30)
    version = rest.versions(run["info"]["run_id"])[0]["version"]
    assert tracker.champion(uri, "mlops_c", "mlops_p", "e1") == {
        "registered_model": EXPERIMENT,
        "version": version,
        "run_id": "run_1",
    }
    assert tracker.champion(uri, "mlops_c", "mlops_p", "no_such_expt") is None

    tracker.fail_run(uri, keys("run_2"), "worker_2 stopped answering in round 1")
    assert tracker.flush(30)
    failed = rest.run("run_2")
    assert failed["info"]["status"] == "FAILED"
    assert {t["key"]: t["value"] for t in failed["data"]["tags"]}[
        "synergos.failure"
    ] == "worker_2 stopped answering in round 1"


def test_runs_recorded_while_mlflow_is_down_arrive_once_it_is_back(mlflow_server, tracker, training_outputs, caplog):
    model, history = training_outputs
    uri = mlflow_server.url
    assert mlflow_server.stop() == 0  # SIGTERM is forwarded and the service exits cleanly

    with caplog.at_level(logging.INFO, logger="synergos_mlops"):
        started = time.monotonic()
        record_training(tracker, uri, "run_outage", model, history)
        assert time.monotonic() - started < 0.5, "training code waited for MLflow"
        time.sleep(1.5)  # long enough for several retries
        assert tracker.pending() == 2
        assert tracker.champion(uri, "mlops_c", "mlops_p", "e1") is None  # unreachable: no answer, no error

        mlflow_server.start()
        assert tracker.flush(60), "operations still pending after MLflow came back"
    assert_training_recorded(MLflowRest(mlflow_server.url), "run_outage")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreachable; 2 operations waiting" in m]) == 1
    assert any("reachable again" in m for m in messages)


def test_without_a_server_runs_go_to_the_shared_sqlite_store(tmp_path, tracker, training_outputs):
    from mlflow.tracking import MlflowClient

    model, history = training_outputs
    uri = default_uri_for(tmp_path / "mlflow")
    record_training(tracker, uri, "run_local", model, history)
    tracker.set_champion(uri, "mlops_c", "mlops_p", "e1", "run_local")
    assert tracker.flush(60)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == f"file://{tmp_path}/mlflow/artifacts/{EXPERIMENT}"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run_local" and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "global_train_loss")] == [
        (1, 0.7),
        (2, 0.5),
    ]
    assert (
        tmp_path
        / "mlflow"
        / "artifacts"
        / EXPERIMENT
        / run.info.run_id
        / "artifacts"
        / "model"
        / "global_model.safetensors"
    ).read_bytes() == model.read_bytes()
    assert tracker.champion(uri, "mlops_c", "mlops_p", "e1") == {
        "registered_model": EXPERIMENT,
        "version": "1",
        "run_id": "run_local",
    }
