"""Phase work is planned once (synergos_contract.planning) and run by thin runners: the jobs a
request makes, their order, what is refused before any Worker is touched, what a finished job
leaves in the store, and an optimization trial that runs in the Director without a Driver."""

from __future__ import annotations

import inspect
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from synergos_contract import planning
from synergos_contract.schemas import OptimizationRequest
from synergos_contract.store import Store
from synergos_core.errors import InvalidRequest, NotFound
from synergos_core.records import AGGREGATE, QueuedJob, Run
from synergos_core.schemas import RunHyperparameters
from synergos_director import optimizations
from synergos_director.ledger import Entry, Ledger
from synergos_director.optimizations import Optimization

C, P, E = "c", "p", "e"
ONE_OUTPUT = [
    {"l_type": "Linear", "structure": {"in_features": 4, "out_features": 1}, "activation": "sigmoid", "is_input": True}
]
NODE = {"host": "127.0.0.1", "port": 8020, "f_port": 5000, "log_msgs": False, "verbose": False}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/synergos.db")
    store.create_collaboration(C, {})
    store.create_project(C, P, {"action": "classify", "incentives": {}})
    store.create_experiment(C, P, E, {"model": ONE_OUTPUT})
    for pid in ("u1", "u2"):
        store.create_participant(pid, {})
        store.create_registration(C, P, pid, "guest", [NODE, {**NODE, "port": 8021}])
        store.create_tags(C, P, pid, {"train": [["train"]], "evaluate": [["evaluate"]], "predict": []})
    yield store
    store.close()


def _run(store: Store, run_id: str, **hyperparameters: Any) -> Run:
    hp = RunHyperparameters.model_validate({"lr_scheduler": "none", **hyperparameters})
    return planning.accept_run(store, C, P, E, run_id, hp).record


def _aligned(store: Store, classes: list[str]) -> None:
    for pid in ("u1", "u2"):
        store.put_alignment(
            C, P, pid, {"train": {"X": [], "y": []}, "superset": {"X": ["a", "b", "c", "d"], "y": classes}}
        )


def test_the_core_records_pull_in_no_web_framework_and_no_database() -> None:
    code = (
        "import sys, synergos_core.records\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'sqlalchemy'}))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_a_run_holds_every_default_from_one_place_and_its_extras_by_name() -> None:
    run = Run.of(
        {"collab_id": C, "project_id": P, "expt_id": E, "run_id": "r"},
        datetime.now(UTC),
        {"rounds": 2, "momentum": 0.9, "optimization_id": "optim_1"},
    )
    hp = run.hyperparameter_dict()
    assert hp == {**RunHyperparameters().model_dump(mode="json"), "rounds": 2, "momentum": 0.9}
    assert run.optimization_id == "optim_1" and "optimization_id" not in hp  # a trial's, not a hyper-parameter
    assert run.details() == {**hp, "optimization_id": "optim_1"}


def test_training_plans_the_alignment_it_needs_first_and_builds_jobs_when_they_start(store: Store) -> None:
    _run(store, "r1", rounds=3)
    alignment, training = planning.plan_training(store, C, P)
    assert (alignment.process, training.process) == ("preprocess", "train")
    assert training.after == (planning.alignment_mark(C, P), planning.training_mark(C, P, E, "r1"))
    assert training.marks == (planning.training_mark(C, P, E, "r1"),) and training.rounds == 3
    _aligned(store, ["target_0", "target_1"])  # what the alignment leaves, before the training's turn
    job = training.build()
    assert job["process"] == "train" and job["keys"] == {"collab_id": C, "project_id": P, "expt_id": E, "run_id": "r1"}
    assert job["parameters"]["hyperparameters"] == store.get_run(C, P, E, "r1").hyperparameter_dict()
    assert len(job["grids"]) == 2 and [n["participant_id"] for n in job["grids"][1]] == ["u1", "u2"]
    assert job["grids"][1][0]["port"] == 8021 and job["grids"][0][0]["superset"]["X"] == ["a", "b", "c", "d"]
    # with an alignment stored (or one on the way), none is planned again
    assert [j.kind for j in planning.plan_training(store, C, P)] == ["training"]


def test_a_recipe_that_cannot_train_is_refused_for_the_whole_request_before_any_job(store: Store) -> None:
    _run(store, "fine", criterion="BCELoss")
    _run(store, "doomed", criterion="CrossEntropyLoss")
    _aligned(store, ["target_a", "target_b", "target_c"])  # three classes, one output
    with pytest.raises(InvalidRequest) as refused:
        planning.plan_training(store, C, P)
    assert refused.value.code == "run.invalid_combination"
    # while an alignment is pending its classes are unknown: the job checks again when it starts
    (job,) = planning.plan_training(store, C, P, E, "doomed", pending=lambda mark: mark[0] == "alignment")
    with pytest.raises(InvalidRequest):
        job.build()


def test_validation_needs_a_model_or_a_training_on_the_way(store: Store) -> None:
    _run(store, "r1")
    with pytest.raises(InvalidRequest) as refused:
        planning.plan_validation(store, C, P)
    assert refused.value.code == "model.not_trained"
    (planned,) = planning.plan_validation(store, C, P, pending=lambda mark: mark[0] == "training")
    assert planned.kind == "validation" and planning.training_mark(C, P, E, "r1") in planned.after
    with pytest.raises(NotFound) as unknown:
        planning.plan_validation(store, C, P, participant_id="u9", pending=lambda mark: True)
    assert unknown.value.code == "registration.not_found"


def test_what_a_job_produced_is_archived_the_same_whichever_mode_ran_it(store: Store) -> None:
    _run(store, "r1")
    keys = {"collab_id": C, "project_id": P, "expt_id": E, "run_id": "r1"}
    (model,) = planning.archive(
        store,
        "train",
        keys,
        {"global": {"origin": "ttp", "path": "g"}, "locals": {}, "rounds_completed": 1, "stopped_early": False},
    )
    assert model.global_model is not None and model.global_model.path == "g" and model.rounds_completed == 1
    stats = {"evaluate": {"statistics": {"accuracy": [0.5, 0.7]}}}
    outcome = {
        "meta": "evaluate",
        "results": {"u1": stats, "u2": stats},
        "aggregate": {"evaluate": {"statistics": {"accuracy": [0.6, 0.6]}, "participants": ["u1", "u2"]}},
    }
    written = planning.archive(store, "evaluate", keys, outcome)
    assert [v.participant_id for v in written] == ["u1", "u2", AGGREGATE]
    # a validation of one participant's data is not the aggregate of all
    planning.archive(store, "evaluate", {**keys, "participant_id": "u1"}, {**outcome, "results": {"u1": stats}})
    assert planning.completion_line("evaluate", keys, outcome) == f"VALIDATION COMPLETED - {P}/{E}/r1"


def test_the_ledger_tells_a_waiter_how_its_job_ended_also_when_a_dependency_failed() -> None:
    ledger = Ledger()
    board: Any = None
    # nothing to wait for: the caller publishes it at once; the training waits for the alignment
    assert ledger.submit(Entry("align", "preprocess", board, lambda: None, marks=[("alignment", C, P)]), []) is True
    assert ledger.submit(Entry("train", "train", board, lambda: None), [("alignment", C, P)]) is False
    _, ready, failed = ledger.finish("align", "failed", "no data")
    assert ready == [] and [e.job_id for e in failed] == ["train"]
    ledger.finish("train", "failed", "a job it depended on failed (align)")
    assert ledger.wait("align", 1) == ("failed", "no data")
    assert ledger.wait("train", 1)[0] == "failed"
    with pytest.raises(TimeoutError):
        ledger.wait("never", 0.05)


class _Director:
    """The Director as a trial uses it: its store, its planning-backed submits, its ledger's wait.
    Jobs complete at once, archived as a TTP's outcome would be."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.submitted: list[tuple[str, str]] = []

    def _queued(self, planned: list[planning.PlannedJob], outcome: dict[str, Any]) -> list[QueuedJob]:
        for item in planned:
            item.build()
            self.submitted.append((item.kind, item.keys["run_id"] if "run_id" in item.keys else ""))
            planning.archive(self.store, item.process, item.keys, outcome)
        return [QueuedJob(job_id=f"job-{len(self.submitted)}", kind=item.kind, keys=item.keys) for item in planned]

    def submit_training(self, c: str, p: str, e: str, r: str) -> list[QueuedJob]:
        return self._queued(
            planning.plan_training(self.store, c, p, e, r, auto_align=False),
            {"global": {"origin": "ttp"}, "locals": {}},
        )

    def submit_validation(self, c: str, p: str, e: str, r: str) -> list[QueuedJob]:
        statistics = {"evaluate": {"statistics": {"accuracy": [0.25, 0.75]}}}
        return self._queued(
            planning.plan_validation(self.store, c, p, e, r),
            {"meta": "evaluate", "results": {"u1": statistics}, "aggregate": statistics},
        )

    def wait(self, job_id: str, timeout_s: float) -> tuple[str, str | None]:
        return "completed", None


def test_a_trial_is_planned_and_queued_by_the_director_itself_not_through_its_rest_api(store: Store) -> None:
    director = _Director(store)
    request = OptimizationRequest(
        search_space={"lr": {"_type": "loguniform", "_value": [0.01, 0.1]}}, max_trial_num=5
    )  # what the original Driver sends
    optimization = Optimization(director, C, P, E, request, grids=2)  # type: ignore[arg-type]
    assert optimization.n_samples == 5 and optimization.concurrency == 2
    measured = optimization.try_config({"lr": 0.05, "rounds": 1, "lr_scheduler": "none"})
    run_id = measured["run_id"]
    assert run_id.startswith("optim_run_") and measured["accuracy"] == 0.5
    assert director.submitted == [("training", run_id), ("validation", run_id)]
    run = store.get_run(C, P, E, run_id)
    assert run.optimization_id == optimization.optimization_id and run.hyperparameters.lr == 0.05
    # a sampled configuration is checked as any run is: a name nothing reads is refused, not stored
    with pytest.raises(InvalidRequest) as refused:
        optimization.try_config({"momentumm": 0.9, "lr_scheduler": "none"})
    assert "momentum" in refused.value.detail
    source = inspect.getsource(optimizations)
    assert "synergos_driver" not in source and "_session" not in source
