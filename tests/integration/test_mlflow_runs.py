"""Every Synergos run recorded in a real MLflow server, checked through MLflow's own REST API;
MLflow going away never fails training, and what was missed arrives when it returns."""

from __future__ import annotations

import time

import httpx
import pytest

from synergos_local import topology

from .conftest import REST, TTP_HOST, http, register_parties

TTP = f"https://{TTP_HOST}:{REST}"
MLP = [
    {"activation": "relu", "is_input": True, "l_type": "Linear", "structure": {"in_features": 30, "out_features": 8}},
    {"activation": "sigmoid", "l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}},
]


@pytest.fixture(scope="module")
def mlflow_server(grid):
    host = f"{topology.loopback_block(ports=(5500,))}.1"
    service = topology.mlops("mlops", host, 5500, grid.workspace / "mlflow_server", grid.workspace / "logs")
    service.start()
    service.wait_healthy(120)
    yield service
    service.stop()


def _api(service, path: str, **params):
    base = service.health_url.rstrip("/")
    return httpx.get(f"{base}/api/2.0/mlflow/{path}", params=params, timeout=10).json()


def _runs(service, experiment: str, timeout: float = 60, want: int = 1, done: bool = True) -> list[dict]:
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        found = _api(service, "experiments/get-by-name", experiment_name=experiment)
        if "experiment" in found:
            base = service.health_url.rstrip("/")
            runs = (
                httpx.post(
                    f"{base}/api/2.0/mlflow/runs/search",
                    json={"experiment_ids": [found["experiment"]["experiment_id"]]},
                )
                .json()
                .get("runs", [])
            )
            if len(runs) >= want and (not done or all(r["info"]["status"] != "RUNNING" for r in runs)):
                return runs
        time.sleep(0.5)
    raise AssertionError(f"MLflow has {len(runs)} run(s) of {experiment}: {runs}")


def _connect_mlops(driver, collab: str, service) -> None:
    host, port = service.health_url.split("//")[1].rstrip("/").split(":")
    task = driver.collaborations
    task.configure_mlops(host=host, port=int(port))
    task.create(collab)


def _train_and_validate(driver, collab, run="r", **kw):
    driver.runs.create(
        collab_id=collab,
        project_id="p",
        expt_id="e",
        run_id=run,
        rounds=3,
        epochs=5,
        lr=0.1,
        criterion="BCELoss",
        lr_scheduler="none",
        **kw,
    )
    driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id=run)
    driver.validations.create(collab_id=collab, project_id="p", expt_id="e", run_id=run)


def _setup(grid, collab, service):
    driver = grid.driver()
    _connect_mlops(driver, collab, service)
    register_parties(driver, collab, "p", "breast_cancer", create_collaboration=False)
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MLP)
    driver.alignments.create(collab_id=collab, project_id="p", auto_fix=False)
    return driver


def test_a_run_is_recorded_with_params_metrics_validation_artifacts_and_a_model_version(grid, mlflow_server):
    collab = "tracked"
    driver = _setup(grid, collab, mlflow_server)
    _train_and_validate(driver, collab)
    experiment = f"{collab}_>_p_>_e"
    (run,) = _runs(mlflow_server, experiment)
    assert run["info"]["run_name"] == "r" and run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["rounds"] == "3" and params["criterion"] == "BCELoss" and params["lr"] == "0.1"
    run_id = run["info"]["run_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # validation is recorded after training, asynchronously
        metrics = {m["key"] for m in _runs(mlflow_server, experiment)[0]["data"].get("metrics", [])}
        if any(k.startswith("aggregate_") for k in metrics):
            break
        time.sleep(0.5)
    history = _api(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="global_train_loss")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1, 2]
    assert (
        len(
            _api(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=f"{collab}_participant_1_local_loss")[
                "metrics"
            ]
        )
        == 3
    )
    assert f"{collab}_participant_2_overall_accuracy" in metrics and "aggregate_overall_accuracy" in metrics
    artifacts = httpx.get(
        f"{mlflow_server.health_url.rstrip('/')}/api/2.0/mlflow/artifacts/list",
        params={"run_id": run_id, "path": "model"},
    ).json()
    assert any(f["path"].endswith("global_model.safetensors") for f in artifacts.get("files", []))
    versions = httpx.get(
        f"{mlflow_server.health_url.rstrip('/')}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name='{experiment}'"},
    ).json()["model_versions"]
    assert [v["run_id"] for v in versions] == [run_id]


def test_training_survives_mlflow_going_away_and_the_metrics_arrive_when_it_returns(grid, mlflow_server):
    collab = "outage"
    driver = _setup(grid, collab, mlflow_server)
    mlflow_server.stop()
    try:
        _train_and_validate(driver, collab)  # completes although MLflow is down
        model = driver.models.read(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"][0]
        assert model["rounds_completed"] == 3
    finally:
        mlflow_server.start()
        mlflow_server.wait_healthy(120)
    (run,) = _runs(mlflow_server, f"{collab}_>_p_>_e", timeout=90)
    assert run["info"]["status"] == "FINISHED"
    history = _api(
        mlflow_server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="global_evaluate_loss"
    )["metrics"]
    assert len(history) == 3
    accuracy = _api(
        mlflow_server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="global_evaluate_accuracy"
    )["metrics"]
    recorded = model["global"]["loss_history"]["evaluate_accuracy"]
    assert sorted((m["step"], m["value"]) for m in accuracy) == sorted((int(k), v) for k, v in recorded.items())


def test_a_failed_run_ends_failed_not_running(grid, mlflow_server):
    collab = "doomed"
    _setup(grid, collab, mlflow_server)
    http().put(
        f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/participants/{collab}_participant_2/registration",
        json={"node_0": {"host": "127.0.0.250", "port": 8020, "f_port": 5000}},
    )
    resp = http().post(
        f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments/e/runs",
        json={"run_id": "r", "lr_scheduler": "none", "criterion": "BCELoss"},
    )
    assert resp.status_code == 201
    assert (
        http().post(f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models/e/r", json={}, timeout=120).status_code
        == 502
    )
    (run,) = _runs(mlflow_server, f"{collab}_>_p_>_e")
    assert run["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    assert "127.0.0.250" in tags.get("synergos.failure", "")
