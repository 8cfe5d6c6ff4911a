"""Phases 1-3 of the deployment guide through the Driver against real TTP and Worker processes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from .conftest import http, register_parties

MLP = [
    {"activation": "relu", "is_input": True, "l_type": "Linear", "structure": {"in_features": 8, "out_features": 16}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"in_features": 16, "out_features": 1},
    },
]


def _train_validate_predict(driver, collab, project, expt, run, model, **run_kwargs):
    driver.experiments.create(collab_id=collab, project_id=project, expt_id=expt, model=model)
    driver.runs.create(collab_id=collab, project_id=project, expt_id=expt, run_id=run, **run_kwargs)
    alignments = driver.alignments.create(collab_id=collab, project_id=project)["data"]
    models = driver.models.create(collab_id=collab, project_id=project, expt_id=expt, run_id=run)["data"]
    validations = driver.validations.create(collab_id=collab, project_id=project, expt_id=expt, run_id=run)["data"]
    return alignments, models[0], {v["key"]["participant_id"]: v for v in validations}


def test_binary_classification_learns_and_exports(grid):
    driver = grid.driver()
    collab, project = "binary", "breast_cancer"
    register_parties(driver, collab, project, "breast_cancer")
    _alignments, model, validations = _train_validate_predict(
        driver,
        collab,
        project,
        "mlp",
        "run_1",
        MLP,
        rounds=4,
        epochs=20,
        lr=0.5,
        lr_scheduler="none",
        criterion="BCELoss",
        optimizer="SGD",
        mu=0.01,
    )
    # auto_fix resized the input layer to the 30 aligned features
    expt = driver.experiments.read(collab_id=collab, project_id=project, expt_id="mlp")["data"]
    assert expt["model"][0]["structure"]["in_features"] == 30
    history = model["global"]["loss_history"]
    train = [history["train"][str(r)] for r in range(4)]
    assert train[-1] < train[0], f"training loss did not fall: {train}"
    assert len(history["evaluate"]) == 4
    # validation well above chance on every party, and an aggregate over both
    for pid in (f"{collab}_participant_1", f"{collab}_participant_2", "aggregate"):
        stats = validations[pid]["evaluate"]["statistics"]
        assert stats["overall_accuracy"] > 0.85, (pid, stats["overall_accuracy"])
        assert min(stats["roc_auc_score"]) > 0.9
    agg = validations["aggregate"]["evaluate"]["statistics"]
    assert agg["n_samples"] == sum(
        validations[f"{collab}_participant_{i}"]["evaluate"]["statistics"]["n_samples"] for i in (1, 2)
    )
    # exports: global and local models, loss histories, the checkpoints of the last 2 rounds and the best
    out = grid.ttp_outputs / collab / project / "mlp" / "run_1"
    weights = load_file(out / "global_model.safetensors")
    assert weights["layers.0.weight"].shape == (16, 30)
    for i in (1, 2):
        assert (out / f"local_model_{collab}_participant_{i}.safetensors").is_file()
        assert json.loads((out / f"local_loss_history_{collab}_participant_{i}.json").read_text())
    evaluate = {int(r): loss for r, loss in history["evaluate"].items() if int(r) < 3}  # known at round 3's
    kept = {f"round_{r}" for r in (2, 3, min(evaluate, key=evaluate.__getitem__))}
    assert {p.name for p in (out / "checkpoints").iterdir()} == kept
    assert all((out / "checkpoints" / name / "manifest.json").is_file() for name in kept)
    # predictions: each participant on its own predict data; predictions stay with the Worker
    pred = driver.predictions.create(
        collab_id=collab,
        tags={project: [["breast_cancer", "predict"]]},
        participant_id=f"{collab}_participant_1",
        project_id=project,
        expt_id="mlp",
        run_id="run_1",
    )["data"]
    assert pred[0]["predict"]["statistics"]["overall_accuracy"] > 0.85
    res = grid.workspace / "worker_1" / "outputs" / pred[0]["predict"]["res_path"]
    assert (res / "inference_predictions_predict.txt").is_file()
    read_back = driver.predictions.read(participant_id=f"{collab}_participant_1", collab_id=collab)["data"]
    assert len(read_back) == 1


def test_multiclass_with_a_category_missing_at_each_party(grid):
    """Penguins split by island: party 1 never saw a Chinstrap, party 2 never saw a Gentoo."""
    driver = grid.driver()
    collab, project = "multiclass", "penguins"
    register_parties(driver, collab, project, "penguins")
    alignments, _model, validations = _train_validate_predict(
        driver,
        collab,
        project,
        "linear",
        "run_1",
        [
            {
                "activation": "sigmoid",
                "is_input": True,
                "l_type": "Linear",
                "structure": {"bias": True, "in_features": 18, "out_features": 1},
            }
        ],
        rounds=5,
        epochs=50,
        lr=0.5,
        lr_scheduler="none",
        criterion="CrossEntropyLoss",
        optimizer="SGD",
        mu=0.0,
        algorithm="FedAvg",
    )
    by_party = {a["key"]["participant_id"]: a for a in alignments}
    superset = by_party[f"{collab}_participant_1"]["superset"]
    assert superset["y"] == ["target_Adelie", "target_Chinstrap", "target_Gentoo"]
    assert "island_Dream" in superset["X"] and "island_Biscoe" in superset["X"]
    # each party gets spacers exactly where it lacks a class
    assert by_party[f"{collab}_participant_1"]["train"]["y"] == [1]
    assert by_party[f"{collab}_participant_2"]["train"]["y"] == [2]
    expt = driver.experiments.read(collab_id=collab, project_id=project, expt_id="linear")["data"]
    assert expt["model"][-1]["structure"]["out_features"] == 3
    stats = validations["aggregate"]["evaluate"]["statistics"]
    assert stats["overall_accuracy"] > 0.8  # chance is about 0.4
    assert len(stats["accuracy"]) == 3


def test_regression_reports_r2_mse_mae(grid):
    driver = grid.driver()
    collab, project = "regression", "diabetes"
    register_parties(driver, collab, project, "diabetes", action="regress")
    _, model, validations = _train_validate_predict(
        driver,
        collab,
        project,
        "linear",
        "run_1",
        [
            {
                "activation": None,
                "is_input": True,
                "l_type": "Linear",
                "structure": {"in_features": 1, "out_features": 1},
            }
        ],
        rounds=3,
        epochs=200,
        lr=0.5,
        lr_scheduler="none",
        criterion="MSELoss",
        optimizer="Adam",
        mu=0.0,
        batch_size=64,
    )
    agg = validations["aggregate"]["evaluate"]["statistics"]
    assert set(agg) >= {"R2", "MSE", "MAE"}
    assert agg["R2"] > 0.2, agg
    # the target is standardised for training, where predicting the mean costs an MSE of exactly 1
    train = model["global"]["loss_history"]["train"]
    assert max(train.values()) < 1.0, train
    # every party's metrics and predictions are in the target's original units: recomputed with
    # scikit-learn from the raw evaluate CSV and the predictions kept on the Worker
    pooled_truth, pooled_predicted = [], []
    for i, name in enumerate(("worker_1", "worker_2"), start=1):
        truth = pd.concat(
            pd.read_csv(p) for p in sorted((grid.workspace / name / "data" / "diabetes" / "evaluate").glob("*.csv"))
        )["target"].to_numpy()
        predicted = np.loadtxt(
            grid.workspace
            / name
            / "outputs"
            / collab
            / project
            / "linear"
            / "run_1"
            / "evaluate"
            / "inference_predictions_evaluate.txt"
        )
        pooled_truth.append(truth)
        pooled_predicted.append(predicted)
        stats = validations[f"{collab}_participant_{i}"]["evaluate"]["statistics"]
        assert stats["MSE"] == pytest.approx(mean_squared_error(truth, predicted), rel=1e-6)
        assert stats["MAE"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-6)
        assert stats["R2"] == pytest.approx(r2_score(truth, predicted), rel=1e-6, abs=1e-9)
        assert abs(predicted.mean() - truth.mean()) < truth.std()  # diabetes progression is ~25-346
    # the aggregate is the pooled evaluate data's: R2 against the pooled mean, not a mean of R2s
    truth, predicted = np.concatenate(pooled_truth), np.concatenate(pooled_predicted)
    assert agg["R2"] == pytest.approx(r2_score(truth, predicted), rel=1e-6)
    assert agg["MSE"] == pytest.approx(mean_squared_error(truth, predicted), rel=1e-6)
    history_r2 = model["global"]["loss_history"]["evaluate_r2"]
    assert history_r2[str(len(history_r2) - 1)] == pytest.approx(agg["R2"], rel=1e-6)


def test_progress_is_readable_after_training(grid):

    from .conftest import REST, TTP_HOST

    jobs = http().get(f"https://{TTP_HOST}:{REST}/ttp/status/jobs", params={"collab_id": "binary"}).json()["data"]
    kinds = {j["kind"] for j in jobs}
    assert {"alignment", "training", "validation"} <= kinds
    training = next(j for j in jobs if j["kind"] == "training")
    assert training["state"] == "completed" and training["round"] == training["rounds"] == 4
    # the progress line shows the final global model's losses and validation accuracy
    metrics = training["metrics"]
    assert (
        set(metrics) >= {"train_loss", "evaluate_loss", "evaluate_accuracy"} and 0.5 < metrics["evaluate_accuracy"] <= 1
    )
    from synergos_driver._progress import format_job

    assert "evaluate accuracy" in format_job(training)
