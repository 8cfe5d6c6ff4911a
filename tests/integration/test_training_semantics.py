"""Training semantics on a real grid: every supported loss trains, the same seed gives the same
model bit for bit, concurrent runs do not interfere, and impossible recipes are refused early."""

from __future__ import annotations

import hashlib
import threading

import pytest

from synergos_core.model import LOSSES

from .conftest import REST, TTP_HOST, http, register_parties

TTP = f"https://{TTP_HOST}:{REST}"


def _layer(out: int, activation: str | None) -> list[dict]:
    return [
        {
            "l_type": "Linear",
            "is_input": True,
            "activation": "relu",
            "structure": {"in_features": 30, "out_features": 8},
        },
        {"l_type": "Linear", "activation": activation, "structure": {"in_features": 8, "out_features": out}},
    ]


# the output each loss expects for a two-class task
LOSS_MODELS = {
    "BCELoss": _layer(1, "sigmoid"),
    "BCEWithLogitsLoss": _layer(1, None),
    "CrossEntropyLoss": _layer(2, None),
    "NLLLoss": _layer(2, "log_softmax"),
    "KLDivLoss": _layer(2, "log_softmax"),
    "MultiMarginLoss": _layer(2, None),
    "MultiLabelMarginLoss": _layer(2, None),
    "MultiLabelSoftMarginLoss": _layer(2, None),
    "HingeEmbeddingLoss": _layer(1, None),
    "SoftMarginLoss": _layer(1, None),
    "PoissonNLLLoss": _layer(1, None),
    "GaussianNLLLoss": _layer(1, "sigmoid"),
    "L1Loss": _layer(1, "sigmoid"),
    "MSELoss": _layer(1, "sigmoid"),
    "SmoothL1Loss": _layer(1, "sigmoid"),
    "HuberLoss": _layer(1, "sigmoid"),
}


def test_the_sweep_covers_every_supported_loss():
    assert set(LOSS_MODELS) == set(LOSSES)


def test_every_supported_loss_trains_and_validates(grid):
    driver = grid.driver()
    collab, project = "losses", "p"
    register_parties(driver, collab, project, "breast_cancer")
    for name, model in LOSS_MODELS.items():
        expt = name.lower()
        driver.experiments.create(collab_id=collab, project_id=project, expt_id=expt, model=model)
        driver.runs.create(
            collab_id=collab,
            project_id=project,
            expt_id=expt,
            run_id="r",
            rounds=3,
            epochs=10,
            lr=0.05,
            criterion=name,
            lr_scheduler="none",
            mu=0.0,
        )
    driver.alignments.create(collab_id=collab, project_id=project, auto_fix=False)
    models = driver.models.create(collab_id=collab, project_id=project)["data"]
    assert len(models) == len(LOSS_MODELS)
    for record in models:
        train = record["global"]["loss_history"]["train"]
        assert train["2"] < train["0"], (record["key"]["expt_id"], train)
    validations = driver.validations.create(collab_id=collab, project_id=project)["data"]
    aggregates = {v["key"]["expt_id"]: v for v in validations if v["key"]["participant_id"] == "aggregate"}
    assert set(aggregates) == {name.lower() for name in LOSS_MODELS}
    for expt, record in aggregates.items():
        stats = record["evaluate"]["statistics"]
        assert stats["n_samples"] > 0 and len(stats["accuracy"]) == 2, expt


def _global_digest(grid, collab, project, expt, run) -> str:
    path = grid.ttp_outputs / collab / project / expt / run / "global_model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_model_bit_for_bit_and_concurrent_runs_do_not_interfere(grid):
    driver = grid.driver()
    collab, project = "repro", "p"
    register_parties(driver, collab, project, "breast_cancer")
    driver.experiments.create(collab_id=collab, project_id=project, expt_id="e", model=_layer(1, "sigmoid"))
    for run in ("alone", "twin_a", "twin_b", "other_seed"):
        driver.runs.create(
            collab_id=collab,
            project_id=project,
            expt_id="e",
            run_id=run,
            rounds=3,
            epochs=5,
            lr=0.05,
            criterion="BCELoss",
            lr_scheduler="none",
            batch_size=32,
            seed=7 if run != "other_seed" else 8,
        )
    driver.alignments.create(collab_id=collab, project_id=project, auto_fix=False)
    driver.models.create(collab_id=collab, project_id=project, expt_id="e", run_id="alone")
    driver.models.create(collab_id=collab, project_id=project, expt_id="e", run_id="other_seed")

    errors: list[BaseException] = []

    def train(run: str) -> None:
        try:
            resp = http().post(
                f"{TTP}/ttp/train/collaborations/{collab}/projects/{project}/models/e/{run}", json={}, timeout=300
            )
            assert resp.status_code == 201, resp.text
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(run,)) for run in ("twin_a", "twin_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    alone = _global_digest(grid, collab, project, "e", "alone")
    assert _global_digest(grid, collab, project, "e", "twin_a") == alone
    assert _global_digest(grid, collab, project, "e", "twin_b") == alone
    assert _global_digest(grid, collab, project, "e", "other_seed") != alone


@pytest.mark.parametrize(
    "model, run, code",
    [
        (_layer(2, "softmax"), {"criterion": "NLLLoss"}, "run.invalid_combination"),  # log-probabilities needed
        (_layer(1, None), {"criterion": "NLLLoss"}, "run.invalid_combination"),  # one output must be P(class 1)
        (_layer(1, None), {"criterion": "BCELoss"}, "run.invalid_combination"),
    ],
)
def test_recipes_that_cannot_train_are_refused_and_leave_nothing(grid, model, run, code):
    driver = grid.driver()
    collab = "refused" + hashlib.md5(repr((model, run)).encode()).hexdigest()[:6]
    register_parties(driver, collab, "p", "breast_cancer")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=model)
    resp = http().post(
        f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments/e/runs",
        json={"run_id": "r", "lr_scheduler": "none", **run},
    )
    if resp.status_code == 201:  # valid on its own; refused once alignment knows there are 2 classes
        driver.alignments.create(collab_id=collab, project_id="p", auto_fix=False)
        resp = http().post(f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models/e/r", json={})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == code
        models = http().get(f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models")
        assert models.status_code == 200 and models.json()["data"] == []  # nothing trained
        return
    assert resp.status_code == 422 and resp.json()["error"]["code"] == code, resp.text
    assert http().get(f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments/e/runs/r").status_code == 404


def test_a_regression_project_refuses_class_losses(grid):
    driver = grid.driver()
    register_parties(driver, "regloss", "p", "diabetes", action="regress")
    driver.experiments.create(collab_id="regloss", project_id="p", expt_id="e", model=_layer(1, None))
    resp = http().post(
        f"{TTP}/ttp/connect/collaborations/regloss/projects/p/experiments/e/runs",
        json={"run_id": "r", "criterion": "NLLLoss", "lr_scheduler": "none"},
    )
    assert resp.status_code == 422 and "regression" in resp.json()["error"]["detail"]
