"""What a cluster TTP refuses before it runs a job: a job that could never run is poison on its
first delivery (with a public reason), never retried."""

from __future__ import annotations

import copy

import pytest

from synergos_core.errors import InvalidRequest
from synergos_core.jobs import build_grids, make_job
from synergos_mq import PoisonMessage, messages
from synergos_ttp.cluster import check_job

REGISTERED = [
    {
        "participant_id": f"p{i}",
        "tags": {"train": [["penguins", "train"]], "evaluate": [["penguins", "evaluate"]]},
        "nodes": [{"host": f"127.0.0.{i}", "port": 8020, "f_port": 5000}],
    }
    for i in (1, 2)
]
KEYS = {"collab_id": "c", "project_id": "p", "expt_id": "e", "run_id": "r"}
MODEL = [{"l_type": "Linear", "is_input": True, "structure": {"in_features": 4, "out_features": 1}}]


def jobs() -> dict[str, dict]:
    grids = build_grids(REGISTERED, [])
    return {
        "preprocess": make_job("preprocess", {"collab_id": "c", "project_id": "p"}, grids, {"action": "classify"}),
        "train": make_job("train", KEYS, grids, {"action": "classify", "model": MODEL, "hyperparameters": {}}),
        "evaluate": make_job(
            "evaluate",
            {**KEYS, "participant_id": "p1"},
            grids,
            {"action": "classify", "model": MODEL, "hyperparameters": {"rounds": 2}, "meta": "predict"},
        ),
    }


def test_the_jobs_the_director_plans_pass() -> None:
    for job in jobs().values():
        check_job(job)


def _without(job: dict, *path: str) -> dict:
    job = copy.deepcopy(job)
    target = job
    for name in path[:-1]:
        target = target[name]
    del target[path[-1]]
    return job


@pytest.mark.parametrize(
    "process, change, why",
    [
        ("train", lambda j: _without(j, "grids"), "grids: Field required"),
        ("train", lambda j: {**j, "grids": []}, "grids: List should have at least 1 item"),
        ("train", lambda j: {**j, "grids": [[]]}, "a grid has no node"),
        ("train", lambda j: _without(j, "keys", "run_id"), "keys.run_id: missing"),
        ("train", lambda j: _without(j, "parameters", "model"), "parameters.model: missing"),
        ("train", lambda j: {**j, "parameters": {**j["parameters"], "model": "Linear"}}, "list of layers"),
        ("train", lambda j: {**j, "parameters": {**j["parameters"], "hyperparameters": {"rounds": 0}}}, "rounds"),
        ("evaluate", lambda j: {**j, "parameters": {**j["parameters"], "meta": "train"}}, "evaluate or predict"),
        ("preprocess", lambda j: _without(j, "parameters", "action"), "parameters.action: missing"),
        ("preprocess", lambda j: {**j, "grids": [[{"participant_id": "p1"}]]}, "grids.0.0.host: Field required"),
        (
            "preprocess",
            lambda j: {**j, "grids": [[{**j["grids"][0][0], "port": "eighty"}]]},
            "grids.0.0.port",
        ),
    ],
)
def test_a_job_that_could_never_run_is_poison_with_a_public_reason(process, change, why) -> None:
    with pytest.raises(PoisonMessage, match="the job cannot run") as raised:
        check_job(change(jobs()[process]))
    assert why in str(raised.value)
    # what the Director's board will show: the reason, not "internal error"
    cause = messages.failure_of(raised.value)
    assert isinstance(cause, InvalidRequest) and cause.detail == str(raised.value)
