"""Parties whose feature ranges differ widely: the federation preprocesses every split with the
pooled train statistics, so it trains what central training on the pooled data trains.

References: central training on the pooled data and a plain in-process torch FedAvg, both given
the statistics computed here with numpy from the raw CSVs; and the same row predicted alone and
inside a batch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score

from synergos_core.model import build_model
from synergos_local.datasets import write_tabular

from .conftest import REST, WORKER_HOSTS, WS, register_parties

SCHEMA = {"f1": "float64", "f2": "float64", "f3": "float64", "kind": "category", "target": "int64"}
COLLAB, PROJECT, EXPT, RUN = "shifted", "shifted_ranges", "logistic", "run_1"
HP = dict(
    algorithm="FedAvg",
    mu=0.0,
    rounds=20,
    epochs=3,
    lr=2.0,
    optimizer="SGD",
    criterion="BCELoss",
    lr_scheduler="none",
    patience=0,
    seed=7,
)
MODEL = [
    {"activation": "sigmoid", "is_input": True, "l_type": "Linear", "structure": {"in_features": 1, "out_features": 1}}
]


def _party(seed: int, n: int, shift: np.ndarray, kinds: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * np.array([3.0, 0.5, 1.0]) + shift
    # one labelling rule in raw units whose boundary crosses both parties' regions (covariate
    # shift): f3 is noise, shifted too
    target = (25 * x[:, 0] + 40 * x[:, 1] + rng.normal(0, 15, n) > 0).astype(int)
    frame = pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "kind": rng.choice(kinds, n), "target": target})
    frame.loc[::9, "f3"] = np.nan
    frame.loc[::11, "kind"] = None
    return frame


PARTIES = {
    "worker_1": _party(11, 300, np.array([0.0, 0.0, 0.0]), ["a", "b"]),
    "worker_2": _party(12, 200, np.array([40.0, -25.0, 10.0]), ["b", "c"]),
}


def _splits(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    cut = int(len(frame) * 0.7)
    return {"train": frame.iloc[:cut], "evaluate": frame.iloc[cut:], "predict": frame.iloc[cut : cut + 10]}


def _prepare(frame: pd.DataFrame, train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The pooled train statistics applied by hand: mean imputation, most frequent category,
    z-scores with the population std, sorted one-hot headers."""
    columns = {}
    for col in ("f1", "f2", "f3"):
        present = train[col].dropna().to_numpy()
        values = frame[col].fillna(present.mean()).to_numpy()
        columns[col] = (values - present.mean()) / present.std()
    counts = train["kind"].value_counts()
    mode = sorted(counts[counts == counts.max()].index)[0]
    kind = frame["kind"].fillna(mode)
    for value in sorted(train["kind"].dropna().unique()):
        columns[f"kind_{value}"] = (kind == value).to_numpy(dtype=float)
    headers = sorted(columns)
    X = np.column_stack([columns[h] for h in headers]).astype(np.float32)
    return X, frame["target"].to_numpy(dtype=np.float32).reshape(-1, 1)


def _train(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=HP["lr"])
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy(model(Xt), yt).backward()
        optimizer.step()


@pytest.fixture(scope="module")
def shifted(grid):
    for name, frame in PARTIES.items():
        root = grid.workspace / name / "data" / "shifted"
        for meta, part in _splits(frame).items():
            write_tabular(root / meta, part.reset_index(drop=True), SCHEMA)
    driver = grid.driver()
    register_parties(driver, COLLAB, PROJECT, "shifted")
    driver.experiments.create(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT, model=MODEL)
    driver.runs.create(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT, run_id=RUN, **HP)
    alignments = driver.alignments.create(collab_id=COLLAB, project_id=PROJECT)["data"]
    model = driver.models.create(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT, run_id=RUN)["data"][0]
    validations = driver.validations.create(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT, run_id=RUN)["data"]
    layers = driver.experiments.read(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT)["data"]["model"]
    return {
        "alignments": alignments,
        "model": model,
        "layers": layers,
        "validations": {v["key"]["participant_id"]: v for v in validations},
    }


def _pooled(meta: str) -> pd.DataFrame:
    return pd.concat([_splits(frame)[meta] for frame in PARTIES.values()], ignore_index=True)


def test_alignment_stores_the_pooled_train_statistics(shifted):
    pooled = _pooled("train")
    for record in shifted["alignments"]:
        preprocessing = record["preprocessing"]
        assert (preprocessing["scaling"], preprocessing["source"]) == ("standard", "global")
        stats = preprocessing["statistics"]
        assert stats["rows"] == len(pooled)
        for col in ("f1", "f2", "f3"):
            present = pooled[col].dropna()
            assert stats["numeric"][col]["count"] == len(present)
            assert stats["numeric"][col]["sum"] == pytest.approx(present.sum(), rel=1e-12)
            assert stats["numeric"][col]["min"] == present.min()
        assert stats["categorical"]["kind"] == pooled["kind"].value_counts().sort_index().to_dict()


def test_federated_weights_equal_an_in_process_fedavg(shifted, grid):
    pooled_train = _pooled("train")
    reference = build_model(shifted["layers"], seed=HP["seed"])
    total = len(pooled_train)
    for _ in range(HP["rounds"]):
        start = {k: v.clone() for k, v in reference.state_dict().items()}
        folded = {k: torch.zeros_like(v) for k, v in start.items()}
        for frame in PARTIES.values():
            train = _splits(frame)["train"]
            X, y = _prepare(train, pooled_train)
            local = build_model(shifted["layers"], seed=HP["seed"])
            local.load_state_dict(start)
            _train(local, X, y, HP["epochs"])
            for k, v in local.state_dict().items():
                folded[k] += v * (len(train) / total)
        reference.load_state_dict(folded)
    trained = load_file(grid.ttp_outputs / COLLAB / PROJECT / EXPT / RUN / "global_model.safetensors")
    expected = reference.state_dict()
    assert set(trained) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(trained[name], tensor, atol=1e-5, rtol=0), name


def test_federated_accuracy_matches_central_training(shifted):
    pooled_train, pooled_eval = _pooled("train"), _pooled("evaluate")
    central = build_model(shifted["layers"], seed=HP["seed"])
    X, y = _prepare(pooled_train, pooled_train)
    _train(central, X, y, HP["rounds"] * HP["epochs"])
    X_eval, y_eval = _prepare(pooled_eval, pooled_train)
    with torch.no_grad():
        central_accuracy = accuracy_score(y_eval[:, 0], (central(torch.from_numpy(X_eval))[:, 0] > 0.5).numpy())
    federated = shifted["validations"]["aggregate"]["evaluate"]["statistics"]["overall_accuracy"]
    assert central_accuracy > 0.8  # the task is learnable once the parties' ranges are pooled
    assert abs(federated - central_accuracy) <= 0.02, (federated, central_accuracy)
    history = shifted["model"]["global"]["loss_history"]
    assert set(history) >= {"train", "evaluate", "evaluate_accuracy"}
    assert len(history["evaluate_accuracy"]) == HP["rounds"]
    assert history["evaluate_accuracy"][str(HP["rounds"] - 1)] == pytest.approx(federated, abs=1e-9)


def test_one_row_predicts_as_inside_its_batch(shifted, grid):
    driver = grid.driver()
    evaluate = _splits(PARTIES["worker_1"])["evaluate"].reset_index(drop=True)
    for row in (0, 1):  # row 0 has a missing f3 and kind, imputed with the pooled statistics
        tag = f"row_{row}"
        write_tabular(grid.workspace / "worker_1" / "data" / "shifted" / tag, evaluate.iloc[[row]], SCHEMA)
        participant = f"{COLLAB}_participant_1"
        driver.predictions.create(
            participant_id=participant, collab_id=COLLAB, tags={PROJECT: [["shifted", tag]]}, project_id=PROJECT
        )
        run_out = grid.workspace / "worker_1" / "outputs" / COLLAB / PROJECT / EXPT / RUN
        alone = np.loadtxt(run_out / "predict" / "inference_scores_predict.txt")
        batched = np.loadtxt(run_out / "evaluate" / "inference_scores_evaluate.txt")
        assert float(alone) == pytest.approx(float(batched[row]), abs=1e-6)
        assert 0.0 < float(alone) < 1.0 and len(set(np.round(batched, 6))) > 10


def test_scaling_options_are_per_project(grid):
    driver = grid.driver()
    project = "shifted_minmax"
    driver.projects.create(
        collab_id=COLLAB, project_id=project, action="classify", scaling="minmax", statistics="local"
    )
    with pytest.raises(Exception) as refused:
        driver.projects.create(collab_id=COLLAB, project_id="bad_scaling", action="classify", scaling="robust")
    assert "scaling" in str(refused.value)
    for i in (1, 2):
        pid = f"{COLLAB}_participant_{i}"
        registrations = driver.registrations
        registrations.add_node(host=WORKER_HOSTS[f"worker_{i}"], port=WS, f_port=REST)
        registrations.create(
            collab_id=COLLAB, project_id=project, participant_id=pid, role="host" if i == 1 else "guest"
        )
        driver.tags.create(
            collab_id=COLLAB,
            project_id=project,
            participant_id=pid,
            train=[["shifted", "train"]],
            evaluate=[["shifted", "evaluate"]],
        )
    records = driver.alignments.create(collab_id=COLLAB, project_id=project)["data"]
    by_party = {r["key"]["participant_id"]: r["preprocessing"] for r in records}
    assert {p["scaling"] for p in by_party.values()} == {"minmax"}
    # local: each party's own train split
    own = _splits(PARTIES["worker_2"])["train"]["f1"]
    assert by_party[f"{COLLAB}_participant_2"]["statistics"]["numeric"]["f1"]["max"] == own.max()
    # an alignment request may override the project's choice
    records = driver.alignments.create(collab_id=COLLAB, project_id=project, scaling="none")["data"]
    assert {r["preprocessing"]["scaling"] for r in records} == {"none"}
    assert json.dumps(records).count('"global"') == 0
