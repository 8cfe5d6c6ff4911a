"""Images and text through the same header/alignment path as tabular data, on a real grid."""

from __future__ import annotations

from .conftest import register_parties

GUIDE_CNN = [
    {
        "activation": "relu",
        "is_input": True,
        "l_type": "Conv2d",
        "structure": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
    },
    {"activation": None, "is_input": False, "l_type": "Flatten", "structure": {}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 4 * 32 * 32, "out_features": 1},
    },
]


def _flow(driver, collab, model, **run):
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=model)
    driver.runs.create(collab_id=collab, project_id="p", expt_id="e", run_id="r", **run)
    alignments = driver.alignments.create(collab_id=collab, project_id="p")["data"]
    model = driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"][0]
    validations = driver.validations.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"]
    aggregate = next(v for v in validations if v["key"]["participant_id"] == "aggregate")
    return alignments, model, aggregate["evaluate"]["statistics"]


def test_guide_cnn_trains_on_32x32_images(grid):
    driver = grid.driver()
    register_parties(driver, "images", "p", "digits")
    alignments, model, stats = _flow(
        driver, "images", GUIDE_CNN, rounds=3, epochs=5, lr=0.1, criterion="BCELoss", lr_scheduler="none", batch_size=32
    )
    assert all(a["train"]["X"] == [] for a in alignments)  # same size and colour: nothing to pad
    assert len(alignments[0]["superset"]["X"]) == 32 * 32
    train = model["global"]["loss_history"]["train"]
    assert train["2"] < train["0"]
    assert stats["overall_accuracy"] > 0.9  # digits 0 and 1
    pred = driver.predictions.create(
        collab_id="images",
        tags={"p": [["digits", "predict"]]},
        participant_id="images_participant_2",
        project_id="p",
        expt_id="e",
        run_id="r",
    )["data"]
    assert pred[0]["predict"]["statistics"]["n_samples"] > 0


def test_text_run_aligns_vocabularies_and_learns(grid):
    driver = grid.driver()
    register_parties(driver, "text", "p", "reviews")
    model = [
        {
            "activation": "sigmoid",
            "is_input": True,
            "l_type": "Linear",
            "structure": {"in_features": 1, "out_features": 1},
        }
    ]
    alignments, _trained, stats = _flow(
        driver, "text", model, rounds=4, epochs=20, lr=0.5, criterion="BCELoss", lr_scheduler="none"
    )
    vocabulary = alignments[0]["superset"]["X"]
    assert vocabulary == sorted(vocabulary) and len(vocabulary) > 20
    assert any(a["train"]["X"] for a in alignments)  # each party lacks some of the other's words
    expt = driver.experiments.read(collab_id="text", project_id="p", expt_id="e")["data"]
    assert expt["model"][0]["structure"]["in_features"] == len(vocabulary)
    assert stats["overall_accuracy"] > 0.8
