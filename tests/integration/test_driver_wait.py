"""`read(..., wait=True)` against a real TTP: it returns what is there and times out naming the scope."""

from __future__ import annotations

import time

import pytest

from synergos import WaitTimeout

from .conftest import register_parties

MODEL = [
    {"activation": "sigmoid", "is_input": True, "l_type": "Linear", "structure": {"in_features": 1, "out_features": 1}}
]


def test_wait_returns_the_trained_model_and_times_out_on_work_never_asked_for(grid):
    driver = grid.driver()
    c, p = "waiting", "p"
    register_parties(driver, c, p, "breast_cancer")
    driver.experiments.create(collab_id=c, project_id=p, expt_id="e", model=MODEL)
    driver.runs.create(
        collab_id=c, project_id=p, expt_id="e", run_id="r", rounds=1, epochs=1, lr_scheduler="none", criterion="BCELoss"
    )
    assert driver.validations.read(collab_id=c, project_id=p)["data"] == []  # an empty scope, not a 404
    driver.models.create(collab_id=c, project_id=p, expt_id="e", run_id="r")
    models = driver.models.read(collab_id=c, project_id=p, expt_id="e", run_id="r", wait=True, timeout=60)["data"]
    assert models and models[0]["rounds_completed"] == 1
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timed_out:
        driver.validations.read(collab_id=c, project_id=p, expt_id="e", run_id="r", wait=True, timeout=2)
    assert 2 <= time.monotonic() - started < 10
    assert "validations of waiting/p/e/r" in str(timed_out.value)
    assert "no record yet, and no job is queued or running" in str(timed_out.value)
