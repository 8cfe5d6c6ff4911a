"""Hyper-parameters nothing would read are refused with the closest accepted name, not stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from synergos_contract.routes.train import OptimizationRequest
from synergos_core.errors import InvalidRequest
from synergos_core.model import validate_run
from synergos_core.settings import TTPSettings
from synergos_director.optimizations import check_search_space
from synergos_ttp.app import create_app

GUIDE_RUN = {
    "rounds": 2,
    "epochs": 1,
    "base_lr": 0.0005,
    "max_lr": 0.005,
    "criterion": "L1Loss",
    "optimizer": "SGD",
    "lr_scheduler": "CyclicLR",
}


def test_a_misspelt_name_is_refused_naming_the_closest() -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_run({**GUIDE_RUN, "momentumm": 0.9})
    assert refused.value.code == "run.unknown_parameter"
    assert "'momentumm'" in refused.value.detail and "did you mean 'momentum'" in refused.value.detail
    assert refused.value.fields[0]["path"] == "momentumm"


@pytest.mark.parametrize(
    "extra",
    [
        {"momentum": 0.9},
        {"step_size_up": 10},
        {"reduction": "sum"},
        {"L": 1, "temperature": 2.0, "alpha": 0.5, "server_epochs": 3},
        {"betas": [0.9, 0.99], "optimizer": "Adam", "cycle_momentum": False},
    ],
)
def test_names_a_constructor_or_synergos_reads_are_accepted(extra: dict) -> None:
    validate_run({**GUIDE_RUN, **extra})


def test_a_scheduler_argument_without_that_scheduler_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="base_lr"):
        validate_run({**GUIDE_RUN, "lr_scheduler": "none"})


def test_runs_create_answers_422_and_stores_nothing(tmp_path) -> None:
    settings = TTPSettings(
        insecure=True, data_dir=tmp_path / "data", outputs_dir=tmp_path / "outputs", mlflow_dir=tmp_path / "ml"
    )
    with TestClient(create_app(settings)) as client:
        base = "/ttp/connect/collaborations"
        client.post(base, json={"collab_id": "c"})
        client.post(f"{base}/c/projects", json={"project_id": "p", "action": "classify"})
        model = [{"l_type": "Linear", "structure": {"in_features": 2, "out_features": 1}, "activation": "sigmoid"}]
        client.post(f"{base}/c/projects/p/experiments", json={"expt_id": "e", "model": model})
        runs = f"{base}/c/projects/p/experiments/e/runs"
        response = client.post(runs, json={"run_id": "r", **GUIDE_RUN, "momentumm": 0.9})
        assert response.status_code == 422
        assert "momentum" in response.json()["error"]["detail"]
        assert client.get(runs).json()["data"] == []


def test_a_search_space_name_no_trial_would_read_is_refused() -> None:
    check_search_space(
        {
            "lr": {"_type": "loguniform", "_value": [0.001, 0.1]},
            **GUIDE_RUN,
            "optimizer": {"_type": "choice", "_value": ["SGD", "Adam"]},
            "betas": [0.9, 0.99],
        }
    )
    with pytest.raises(InvalidRequest, match="did you mean 'epochs'"):
        check_search_space({"epoch": {"_type": "choice", "_value": [1, 2]}})


def test_the_original_drivers_max_trial_num_sets_the_trial_count() -> None:
    assert OptimizationRequest(search_space={}, max_trial_num=7).n_samples == 7
    assert OptimizationRequest(search_space={}, max_trial_num=7, n_samples=2).n_samples == 2
    assert OptimizationRequest(search_space={}, searcher="OptunaSearch").tuner == "OptunaSearch"
    assert "max_trial_num" not in OptimizationRequest(search_space={}, max_trial_num=7).model_dump()
