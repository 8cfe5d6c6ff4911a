"""FedGKT on a real grid: the guide's model form trains, validates and predicts; labels stay home."""

from __future__ import annotations

from safetensors.torch import load_file

from .conftest import register_parties

GUIDE_FEDGKT = [
    {
        "activation": None,
        "is_input": True,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 18, "out_features": 1},
    },
    {"activation": None, "is_input": False, "l_type": "Sigmoid", "structure": {}},
]
DEEPER = [
    {"activation": None, "is_input": True, "l_type": "Linear", "structure": {"in_features": 30, "out_features": 16}},
    {"activation": None, "is_input": False, "l_type": "ReLU", "structure": {}},
    {"activation": None, "is_input": False, "l_type": "Linear", "structure": {"in_features": 16, "out_features": 8}},
    {"activation": None, "is_input": False, "l_type": "ReLU", "structure": {}},
    {"activation": None, "is_input": False, "l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}},
    {"activation": None, "is_input": False, "l_type": "Sigmoid", "structure": {}},
]


def test_guide_fedgkt_model_trains_validates_and_predicts(grid):
    driver = grid.driver()
    c = "gkt_guide"
    register_parties(driver, c, "p", "penguins")
    driver.experiments.create(collab_id=c, project_id="p", expt_id="e", model=GUIDE_FEDGKT)
    driver.runs.create(
        collab_id=c,
        project_id="p",
        expt_id="e",
        run_id="r",
        algorithm="FedGKT",
        rounds=3,
        epochs=20,
        lr=0.5,
        criterion="BCELoss",
        lr_scheduler="none",
        temperature=2.0,
        alpha=0.5,
    )
    driver.alignments.create(collab_id=c, project_id="p")
    model = driver.models.create(collab_id=c, project_id="p", expt_id="e", run_id="r")["data"][0]
    assert model["rounds_completed"] == 3
    validations = driver.validations.create(collab_id=c, project_id="p", expt_id="e", run_id="r")["data"]
    stats = next(v for v in validations if v["key"]["participant_id"] == "aggregate")["evaluate"]["statistics"]
    assert stats["overall_accuracy"] > 0.6 and len(stats["accuracy"]) == 3
    pred = driver.predictions.create(
        collab_id=c,
        tags={"p": [["penguins", "predict"]]},
        participant_id=f"{c}_participant_1",
        project_id="p",
        expt_id="e",
        run_id="r",
    )["data"]
    assert pred[0]["predict"]["statistics"]["n_samples"] > 0


def test_fedgkt_split_model_learns_by_knowledge_transfer(grid):
    driver = grid.driver()
    c = "gkt_deep"
    register_parties(driver, c, "p", "breast_cancer")
    driver.experiments.create(collab_id=c, project_id="p", expt_id="e", model=DEEPER)
    # inputs are z-scores of the pooled train data: a gentler lr than [0, 1]-scaled inputs took
    driver.runs.create(
        collab_id=c,
        project_id="p",
        expt_id="e",
        run_id="r",
        algorithm="FedGKT",
        L=2,
        rounds=5,
        epochs=30,
        lr=0.05,
        criterion="BCELoss",
        lr_scheduler="none",
        server_epochs=50,
        temperature=3.0,
        alpha=1.0,
    )
    driver.alignments.create(collab_id=c, project_id="p", auto_fix=False)
    model = driver.models.create(collab_id=c, project_id="p", expt_id="e", run_id="r")["data"][0]
    history = model["global"]["loss_history"]
    assert history["evaluate"]["4"] < history["evaluate"]["0"], history
    out = grid.ttp_outputs / c / "p" / "e" / "r"
    server = load_file(out / "global_model.safetensors")
    assert sorted(server) == ["layers.2.bias", "layers.2.weight", "layers.4.bias", "layers.4.weight"]
    extractor = load_file(out / f"local_model_{c}_participant_1.safetensors")
    assert "layers.0.weight" in extractor and "layers.2.weight" not in extractor
    validations = driver.validations.create(collab_id=c, project_id="p", expt_id="e", run_id="r")["data"]
    for record in validations:
        assert record["evaluate"]["statistics"]["overall_accuracy"] > 0.85, record["key"]
