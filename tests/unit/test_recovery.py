"""Durable job state, checkpoints and resuming, without a network: what a checkpoint holds, how a
corrupt one is skipped, what is kept, how a party's training state survives, and how a start
of work already open is answered."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_core.aggregation import EarlyStopping
from synergos_core.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_packed,
    pack_state,
    read_manifest,
    retain_checkpoints,
    round_folder,
    save_packed,
    unpack_state,
    write_manifest,
)
from synergos_core.records import Exclusion
from synergos_core.settings import TTPSettings
from synergos_core.training import LocalTrainer, Split
from synergos_core.wire import Layout
from synergos_ttp.app import create_app
from synergos_ttp.recovery import Checkpoints, Recovery

MODEL = [
    {"activation": "relu", "is_input": True, "l_type": "Linear", "structure": {"in_features": 4, "out_features": 8}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"in_features": 8, "out_features": 1},
    },
]
# batches of 8 out of 40 (shuffled), a per-batch CyclicLR that cycles SGD's momentum: every part of
# the training state matters to the next round
RECIPE = {
    "rounds": 6,
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.05,
    "optimizer": "SGD",
    "momentum": 0.9,
    "criterion": "BCELoss",
    "lr_scheduler": "CyclicLR",
    "base_lr": 0.01,
    "max_lr": 0.1,
    "step_size_up": 7,
    "algorithm": "FedProx",
    "mu": 0.1,
}
KEYS = {"collab_id": "c", "project_id": "p", "expt_id": "e", "run_id": "r"}


def _data() -> dict[str, Split]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(40, 4, generator=generator)
    return {"train": Split(X, (X[:, 0] + X[:, 1] > 0).long())}


def _trainer() -> LocalTrainer:
    return LocalTrainer(MODEL, RECIPE, "classify", _data())


# ---- states as safetensors plus JSON ----


def test_a_packed_state_comes_back_with_its_key_types_tuples_and_infinities() -> None:
    state = {
        "state": {0: {"momentum_buffer": torch.arange(3.0), "step": torch.tensor(4.0)}, 1: {"momentum_buffer": None}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "nesterov": False}],
        "best": math.inf,
        "worst": -math.inf,
    }
    tensors, structure = pack_state(state)
    back = unpack_state(tensors, json.loads(json.dumps(structure, allow_nan=False)))
    assert back["state"][0]["step"].item() == 4.0 and torch.equal(
        back["state"][0]["momentum_buffer"], torch.arange(3.0)
    )
    assert back["state"][1] == {"momentum_buffer": None}
    assert back["param_groups"][0]["betas"] == (0.9, 0.99) and back["param_groups"][0]["params"] == [0, 1]
    assert back["best"] == math.inf and back["worst"] == -math.inf


def test_a_state_only_pickle_could_keep_is_refused() -> None:
    with pytest.raises(TypeError, match="without pickle"):
        pack_state({"scale_fn": lambda x: x})


def test_a_party_restored_from_its_saved_state_trains_on_as_if_never_stopped(tmp_path: Path) -> None:
    steady, resumed = _trainer(), _trainer()
    for round_index in range(2):
        steady.train(2, round_index)
    save_packed(tmp_path, "training_state", steady.training_state())
    # a fresh session (the run resumed): the global weights come from the TTP, the rest from the file
    with torch.no_grad():
        for name, tensor in resumed.state.items():
            tensor.copy_(steady.state[name])
    resumed.restore_training_state(load_packed(tmp_path, "training_state"))
    for round_index in (2, 3):
        steady.train(2, round_index)
        resumed.train(2, round_index)
    for name in steady.state:
        assert torch.equal(steady.state[name], resumed.state[name]), name
    assert steady.lr_trace == resumed.lr_trace


def test_without_its_state_a_party_does_not_train_the_same() -> None:
    steady, fresh = _trainer(), _trainer()
    for round_index in range(2):
        steady.train(2, round_index)
    with torch.no_grad():
        for name, tensor in fresh.state.items():
            tensor.copy_(steady.state[name])
    steady.train(2, 2)
    fresh.train(2, 2)
    assert any(not torch.equal(steady.state[n], fresh.state[n]) for n in steady.state)


# ---- checkpoints: sealed, verified, bounded ----


def _seal(root: Path, round_index: int, payload: bytes = b"weights") -> Path:
    folder = round_folder(root, round_index)
    folder.mkdir(parents=True)
    (folder / "global_model.safetensors").write_bytes(payload)
    write_manifest(folder, {"round": round_index})
    return folder


def test_a_checkpoint_without_its_manifest_or_with_a_changed_file_is_not_complete(tmp_path: Path) -> None:
    sealed = _seal(tmp_path, 0)
    assert read_manifest(sealed)["files"]["global_model.safetensors"]["bytes"] == len(b"weights")
    (sealed / "global_model.safetensors").write_bytes(b"weighTs")  # same size, other bytes
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_manifest(sealed)
    unsealed = round_folder(tmp_path, 1)
    unsealed.mkdir()
    (unsealed / "global_model.safetensors").write_bytes(b"half")
    with pytest.raises(CheckpointError, match="incomplete"):
        read_manifest(unsealed)


def test_the_newest_corrupt_checkpoint_is_skipped_loudly_for_the_one_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for round_index in range(3):
        _seal(tmp_path, round_index)
    (round_folder(tmp_path, 2) / "global_model.safetensors").write_bytes(b"trunc")
    with caplog.at_level(logging.WARNING):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == 1
    assert any("round_2" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_retention_keeps_the_newest_rounds_and_the_best(tmp_path: Path) -> None:
    for round_index in range(6):
        _seal(tmp_path, round_index)
    assert retain_checkpoints(tmp_path, keep_last=2, best=1) == [0, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_1", "round_4", "round_5"]


def _write_round(checkpoints: Checkpoints, round_index: int, state: dict[str, torch.Tensor], loss: float) -> None:
    history = {"train": {r: 1.0 / (r + 1) for r in range(round_index)}, "evaluate": {}}
    history["evaluate"] = {r: loss + r for r in range(round_index)}
    stopper = EarlyStopping(patience=3, delta=0.0)
    stopper.best, stopper.stale = (loss, 1) if round_index else (math.inf, 0)
    exclusions = [Exclusion(round=0, participant_id="p1", request="train", code="federation.bad_count", reason="x")]
    checkpoints.write(
        checkpoints.snapshot(round_index, history, {"p1": {0: 0.5}}, stopper, exclusions),
        {k: v + round_index for k, v in state.items()},
    )


def test_a_run_resumes_from_its_newest_complete_checkpoint_with_all_it_needs(tmp_path: Path) -> None:
    state = {"w": torch.zeros(3), "b": torch.zeros(1)}
    reported: list[dict] = []
    writer = Checkpoints(tmp_path, Recovery(keep=2, job_id="job-a"), "c/p/e/r", lambda **info: reported.append(info))
    for round_index in range(4):
        _write_round(writer, round_index, state, loss=0.3)
    assert reported[-1] == {"rounds_checkpointed": 4}
    # kept: the newest two and the best (round 0's evaluate loss is the lowest)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round_0", "round_2", "round_3"]
    (round_folder(tmp_path / "checkpoints", 3) / "state.json").write_text("{}")  # corrupt: skipped
    resumed = Checkpoints(tmp_path, Recovery(resume=True), "c/p/e/r").resume(Layout.of(state))
    assert resumed is not None and resumed.round == 2
    assert torch.equal(resumed.state["w"], torch.full((3,), 2.0))
    assert resumed.history["evaluate"] == {0: 0.3, 1: 1.3}  # round keys are ints again
    assert resumed.local_history == {"p1": {0: 0.5}}
    assert (resumed.best, resumed.stale) == (0.3, 1)
    assert resumed.exclusions[0].participant_id == "p1"
    # the interrupted attempt's later round is gone: it is trained again
    assert not round_folder(tmp_path / "checkpoints", 3).exists()


def test_a_job_delivered_again_resumes_only_from_what_it_wrote_itself(tmp_path: Path) -> None:
    state = {"w": torch.zeros(2)}
    _write_round(Checkpoints(tmp_path, Recovery(job_id="job-a"), "r"), 0, state, 0.5)
    again = Checkpoints(tmp_path, Recovery(job_id="job-a", resume=None), "r").resume(Layout.of(state))
    assert again is not None and again.round == 0
    other = Checkpoints(tmp_path, Recovery(job_id="job-b", resume=None), "r").resume(Layout.of(state))
    assert other is None and not (tmp_path / "checkpoints").exists()  # a new job: from round 0


# ---- job state that outlives the process ----


def test_jobs_kept_in_the_store_come_back_interrupted_with_their_rounds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    store = Store(url)
    board = JobBoard(store=store)
    training = board.start("training", KEYS, rounds=6)
    progress = board.progress(training)
    progress(round=3, rounds=6, evaluate_loss=0.25)
    progress(rounds_checkpointed=3)
    done = board.start("alignment", {"collab_id": "c", "project_id": "p"})
    board.finish(done, "completed")
    store.close()

    again = Store(url)  # the TTP started again
    board = JobBoard(store=again)
    (cut,) = board.recover()
    assert cut.job_id == training.job_id and cut.state == "interrupted"
    assert "after round 3 of 6" in (cut.detail or "") and "resumes at round 4" in (cut.detail or "")
    listed = {job["job_id"]: job for job in board.list(collab_id="c")}
    assert listed[training.job_id]["state"] == "interrupted" and listed[training.job_id]["rounds_checkpointed"] == 3
    assert listed[training.job_id]["metrics"] == {"evaluate_loss": 0.25}
    assert listed[done.job_id]["state"] == "completed"
    assert board.open_job("training", KEYS) is None and board.latest("training", KEYS) is not None
    # a queued job delivered again (a cluster TTP) takes up its own entry, checkpoints and all
    redelivered = board.start("training", KEYS, rounds=6, job_id=training.job_id)
    assert redelivered.state == "running" and redelivered.rounds_checkpointed == 3
    assert board.open_job("training", KEYS) is redelivered
    assert [j["job_id"] for j in board.list()].count(training.job_id) == 1
    again.close()


def test_the_jobs_table_forgets_old_finished_jobs_but_never_open_ones(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/jobs.db")
    board = JobBoard(store=store)
    first = board.start("training", KEYS)
    for i in range(5):
        board.finish(board.start("validation", {**KEYS, "run_id": f"r{i}"}), "completed")
    store.save_job(first, keep=2)
    kept = [job.job_id for job in store.list_jobs()]
    assert first.job_id in kept and len(kept) == 3
    store.close()


# ---- a start of work that is already open answers that work ----


def test_a_second_start_of_an_open_training_answers_the_job_and_trains_nothing(tmp_path: Path) -> None:
    settings = TTPSettings(
        insecure=True, id="t", data_dir=tmp_path, outputs_dir=tmp_path / "out", mlflow_dir=tmp_path / "mlflow"
    )
    model = [{**MODEL[1], "is_input": True, "structure": {"in_features": 18, "out_features": 1}}]
    with TestClient(create_app(settings)) as client:
        for path, body in (
            ("/ttp/connect/collaborations", {"collab_id": "c"}),
            ("/ttp/connect/collaborations/c/projects", {"project_id": "p", "action": "classify"}),
            ("/ttp/connect/collaborations/c/projects/p/experiments", {"expt_id": "e", "model": model}),
            (
                "/ttp/connect/collaborations/c/projects/p/experiments/e/runs",
                {"run_id": "r", "rounds": 2, "lr_scheduler": "none"},
            ),
        ):
            assert client.post(path, json=body).status_code == 201, path
        running = client.app.state.jobs.start("training", KEYS, rounds=2)
        answer = client.post("/ttp/train/collaborations/c/projects/p/models/e/r", json={})
        assert answer.status_code == 202, answer.text
        assert answer.json()["data"] == [
            {"job_id": running.job_id, "kind": "training", "keys": KEYS, "state": "running"}
        ]
        # the scope's only run is open: the project's training answers the same job
        whole = client.post("/ttp/train/collaborations/c/projects/p/models", json={})
        assert whole.status_code == 202 and whole.json()["data"][0]["job_id"] == running.job_id
        jobs = client.get("/ttp/status/jobs", params={"collab_id": "c"}).json()["data"]
        assert [job["job_id"] for job in jobs] == [running.job_id]  # nothing else started
