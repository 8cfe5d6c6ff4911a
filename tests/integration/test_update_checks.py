"""What the TTP lets count, against real processes: the session's TTP and two honest Workers, and a
third party that is a real Worker process whose replies are tampered with (`tampered_worker.py`).

A reply that lies about its sample count or carries a NaN is left out of its round, named and
recorded, and the honest parties' run completes; a replayed update fails the run with
`federation.replay`; the robust rules keep one huge party from dragging the model; a request
captured on one federation connection is refused on the next; a model file that is not
safetensors is a 422; and every REST read keeps answering 200 through all of it."""

from __future__ import annotations

import asyncio
import json
import pickle
import secrets
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from websockets.exceptions import ConnectionClosed

from synergos import SynergosError
from synergos_core.model import build_model
from synergos_core.protocol import Error, Loss, new_nonce, parse_reply
from synergos_core.wire import encode_control, encode_state
from synergos_local import datasets, topology

from .conftest import BLOCK, IDENTITIES, REST, TTP_HOST, WORKER_HOSTS, WS, http, register_parties
from .test_security import RUN, _connect, session_token  # noqa: F401 - the fixture of a Worker session

TTP = f"https://{TTP_HOST}:{REST}"
THIRD_HOST = f"{BLOCK}.4"
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]
GKT_MODEL = [
    {"l_type": "Linear", "is_input": True, "structure": {"in_features": 30, "out_features": 8}},
    {"l_type": "ReLU", "structure": {}},
    {"l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}},
    {"l_type": "Sigmoid", "structure": {}},
]
RECIPE = {"rounds": 2, "epochs": 2, "lr": 0.05, "criterion": "BCELoss", "lr_scheduler": "none", "algorithm": "FedAvg"}


class ThirdParty:
    """The tampered Worker: its data, where it listens, and what it does to its next replies."""

    def __init__(self, workspace: Path, root: Path, service: topology.Service) -> None:
        self.workspace, self.root, self.service = workspace, root, service
        self.mode_file = workspace / "tamper_mode"

    def tamper(self, mode: str) -> None:
        self.mode_file.write_text(mode)

    @contextmanager
    def tampering(self, mode: str) -> Iterator[None]:
        """Replies tampered with by `mode` within the block, honest again after it."""
        self.tamper(mode)
        try:
            yield
        finally:
            self.tamper("honest")


@pytest.fixture(scope="module")
def third(grid, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("third_party")
    root = datasets.prepare_sklearn(workspace, "breast_cancer", parties=3)["worker_3"]
    service = topology.worker("worker_3", THIRD_HOST, REST, WS, root, workspace / "outputs", workspace / "logs")
    assert service.args[1:3] == ["-m", "synergos_worker"]
    service.args = [sys.executable, str(Path(__file__).with_name("tampered_worker.py")), *service.args[3:]]
    service.env["SYNERGOS_TEST_TAMPER_FILE"] = str(workspace / "tamper_mode")
    with topology.Topology(IDENTITIES) as topo:
        topo.add(service)
        topo.wait()
        party = ThirdParty(workspace, root, service)
        party.tamper("honest")
        yield party
        assert service.process is not None and service.process.poll() is None, service.tail()


def _register_three(grid, third: ThirdParty, collab: str, model: list[dict] = MODEL) -> None:
    driver = grid.driver()
    register_parties(driver, collab, "p", "breast_cancer")
    pid = f"{collab}_participant_3"
    driver.participants.create(participant_id=pid)
    task = driver.registrations
    task.add_node(host=THIRD_HOST, port=WS, f_port=REST)
    task.create(collab_id=collab, project_id="p", participant_id=pid, role="guest")
    driver.tags.create(
        collab_id=collab,
        project_id="p",
        participant_id=pid,
        train=[["breast_cancer", "train"]],
        evaluate=[["breast_cancer", "evaluate"]],
        predict=[["breast_cancer", "predict"]],
    )
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=model)
    driver.alignments.create(collab_id=collab, project_id="p", auto_fix=False)


def _train(grid, collab: str, run_id: str, **hyperparameters) -> dict:
    driver = grid.driver()
    driver.runs.create(collab_id=collab, project_id="p", expt_id="e", run_id=run_id, **{**RECIPE, **hyperparameters})
    (model,) = driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id=run_id)["data"]
    return model


def _state(grid, collab: str, run_id: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(grid.ttp_outputs / collab / "p" / "e" / run_id / f"{name}.safetensors"))


def _train_rows(grid) -> list[int]:
    """The honest parties' train samples (their weights in the mean)."""
    roots = [grid.workspace / name / "data" / "breast_cancer" / "train" for name in WORKER_HOSTS]
    return [sum(len(pd.read_csv(f)) for f in root.glob("*.csv")) for root in roots]


def _reads_answer(grid, collab: str, run_id: str) -> dict:
    """Every read a user makes after a run answers 200 (and is JSON); returns the run's jobs."""
    client = http()
    base = f"{TTP}/ttp/connect/collaborations/{collab}/projects/p"
    for url in (
        f"{TTP}/ttp/status/jobs",
        f"{TTP}/ttp/status/jobs?collab_id={collab}",
        base,
        f"{base}/experiments/e",
        f"{base}/experiments/e/runs/{run_id}",
        f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models/e/{run_id}",
        f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models",
    ):
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.text)
        json.loads(resp.text)  # strict JSON: no bare NaN
    jobs = client.get(f"{TTP}/ttp/status/jobs", params={"collab_id": collab}).json()["data"]
    return {job["job_id"]: job for job in jobs if job["keys"].get("run_id") == run_id}


@pytest.mark.integration
@pytest.mark.parametrize(
    "mode, code",
    [
        ("count_huge", "federation.bad_count"),
        ("count_negative", "federation.bad_count"),
        ("count_zero", "federation.bad_count"),
        ("nan_loss", "federation.non_finite"),
        ("nan_weights", "federation.non_finite"),
    ],
)
def test_a_lying_or_non_finite_update_is_left_out_and_the_honest_parties_complete(grid, third, mode, code):
    collab = f"liar{mode.replace('_', '')}"
    _register_three(grid, third, collab)
    with third.tampering(mode):
        model = _train(grid, collab, "r")
    liar = f"{collab}_participant_3"
    # the liar's update was left out of both rounds, with the reason; nobody else's was
    assert [(e["round"], e["participant_id"], e["code"]) for e in model["exclusions"]] == [
        (0, liar, code),
        (1, liar, code),
    ], model["exclusions"]
    assert all(e["request"] == "train" and liar in e["reason"] for e in model["exclusions"])
    assert model["rounds_completed"] == 2
    history = model["global"]["loss_history"]
    assert set(history["train"]) == {"0", "1"} and all(np.isfinite(v) for v in history["train"].values())
    # the global model is the sample-weighted mean of the honest parties' last updates alone
    honest = [_state(grid, collab, "r", f"local_model_{collab}_participant_{i}") for i in (1, 2)]
    rows = _train_rows(grid)
    weights = [n / sum(rows) for n in rows]
    final = _state(grid, collab, "r", "global_model")
    for name, value in final.items():
        expected = sum(w * s[name].double() for w, s in zip(weights, honest, strict=True))
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    # the job shows the exclusions too, and every read answers
    (job,) = _reads_answer(grid, collab, "r").values()
    assert job["state"] == "completed"
    assert [(e["round"], e["participant_id"], e["code"]) for e in job["exclusions"]] == [
        (0, liar, code),
        (1, liar, code),
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    "mode, code", [("nan_features", "federation.non_finite"), ("count_huge", "federation.bad_count")]
)
def test_fedgkt_leaves_out_a_party_whose_features_are_refused(grid, third, mode, code):
    collab = f"gkt{mode.replace('_', '')}"
    _register_three(grid, third, collab, GKT_MODEL)
    with third.tampering(mode):
        model = _train(grid, collab, "r", algorithm="FedGKT")
    liar = f"{collab}_participant_3"
    assert [(e["round"], e["participant_id"], e["request"], e["code"]) for e in model["exclusions"]] == [
        (0, liar, "gkt_train", code),
        (1, liar, "gkt_train", code),
    ], model["exclusions"]
    assert model["rounds_completed"] == 2
    assert all(np.isfinite(v) for v in model["global"]["loss_history"]["server"].values())
    (job,) = _reads_answer(grid, collab, "r").values()
    assert job["state"] == "completed" and len(job["exclusions"]) == 2


@pytest.mark.integration
def test_an_honest_run_of_three_excludes_nobody(grid, third):
    collab = "honestthree"
    _register_three(grid, third, collab)
    model = _train(grid, collab, "r")
    assert model["exclusions"] == [] and model["rounds_completed"] == 2


@pytest.mark.integration
def test_a_replayed_update_fails_the_run_with_federation_replay_and_reads_still_answer(grid, third):
    collab = "replayer"
    _register_three(grid, third, collab)
    with third.tampering("replay"), pytest.raises(SynergosError) as info:
        _train(grid, collab, "r")
    assert info.value.code == "federation.replay" and "participant_3" in info.value.detail
    (job,) = _reads_answer(grid, collab, "r").values()
    assert job["state"] == "failed" and "replayed" in job["detail"]


@pytest.mark.integration
def test_one_huge_party_drags_the_mean_far_but_not_the_median_nor_krum(grid, third):
    collab = "huge"
    _register_three(grid, third, collab)
    with third.tampering("huge_weights"):
        models = {rule: _train(grid, collab, rule, aggregation=rule) for rule in ("mean", "median", "krum")}
    assert all(m["exclusions"] == [] for m in models.values())  # huge is finite: nothing is refused
    for rule in models:
        honest = [_state(grid, collab, rule, f"local_model_{collab}_participant_{i}") for i in (1, 2)]
        final = _state(grid, collab, rule, "global_model")
        for name, value in final.items():
            low = torch.minimum(honest[0][name], honest[1][name])
            high = torch.maximum(honest[0][name], honest[1][name])
            spread = float((high - low).max())
            if rule == "mean":  # dragged a hundred thousand times further than the honest parties differ
                assert float((value - (low + high) / 2).abs().min()) > 1e5 * spread, name
            else:  # within the honest parties' spread
                assert bool(((value >= low - 1e-6) & (value <= high + 1e-6)).all()), (rule, name)
        if rule == "krum":  # Krum picks one honest party's update as it is
            assert any(torch.equal(final[n], h[n]) for h in honest for n in final)


@pytest.mark.integration
def test_krum_with_too_few_parties_is_a_clear_422(grid):
    driver = grid.driver()
    register_parties(driver, "krumtwo", "p", "breast_cancer")
    driver.experiments.create(collab_id="krumtwo", project_id="p", expt_id="e", model=MODEL)
    driver.alignments.create(collab_id="krumtwo", project_id="p", auto_fix=False)
    driver.runs.create(collab_id="krumtwo", project_id="p", expt_id="e", run_id="r", **RECIPE, aggregation="krum")
    with pytest.raises(SynergosError) as info:
        driver.models.create(collab_id="krumtwo", project_id="p", expt_id="e", run_id="r")
    assert info.value.status == 422 and info.value.code == "run.invalid_combination"
    assert "at least 3" in info.value.detail and "has 2" in info.value.detail


@pytest.mark.integration
@pytest.mark.parametrize(
    "body",
    [
        {"algorithm": "FedGKT", "aggregation": "median"},
        {"aggregation": "trimmed_mean", "trim_ratio": 0.5},
        {"aggregation": "mode"},
        {"aggregation": "krum", "byzantine": -1},
    ],
)
def test_an_impossible_aggregation_is_422_at_run_creation_and_stores_nothing(grid, body):
    driver = grid.driver()
    collab = "aggregation" + secrets.token_hex(3)
    register_parties(driver, collab, "p", "breast_cancer")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MODEL)
    base = f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments/e/runs"
    resp = http().post(base, json={"run_id": "r", **RECIPE, **body})
    assert resp.status_code == 422, resp.text
    assert http().get(f"{base}/r").status_code == 404


@pytest.mark.integration
def test_non_finite_numbers_are_refused_on_the_way_in_and_null_on_the_way_out(grid):
    driver = grid.driver()
    collab = "nonfinite"
    register_parties(driver, collab, "p", "breast_cancer")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MODEL)
    base = f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments/e/runs"
    # JSON bodies may spell NaN and Infinity (Python's json reads them): a run refuses them
    for raw in (b'{"run_id": "bad", "lr_scheduler": "none", "momentum": NaN}', b'{"run_id": "bad", "mu": Infinity}'):
        resp = http().post(base, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
    assert http().get(f"{base}/bad").status_code == 404
    # a NaN loss already in the store (as an older version could write it) reads as null
    driver.alignments.create(collab_id=collab, project_id="p", auto_fix=False)
    _train(grid, collab, "r")
    database = grid.workspace / "ttp" / "data" / "synergos.db"
    with sqlite3.connect(database, timeout=30) as db:
        (details,) = db.execute("SELECT details FROM models WHERE collab_id = ? AND run_id = 'r'", (collab,)).fetchone()
        stored = json.loads(details)
        stored["global"]["loss_history"]["train"]["0"] = float("nan")
        stored["global"]["loss_history"]["evaluate"]["1"] = float("inf")
        db.execute("UPDATE models SET details = ? WHERE collab_id = ? AND run_id = 'r'", (json.dumps(stored), collab))
    _reads_answer(grid, collab, "r")
    url = f"{TTP}/ttp/train/collaborations/{collab}/projects/p/models/e/r"
    (model,) = http().get(url).json()["data"]
    history = model["global"]["loss_history"]
    assert history["train"]["0"] is None and history["evaluate"]["1"] is None
    assert isinstance(history["train"]["1"], float)


class _Payload:
    """A pickle that, were it ever unpickled, would leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["pickle", "random", "truncated"])
def test_a_stored_model_that_is_not_safetensors_is_a_422_and_never_unpickled(grid, kind, tmp_path):
    driver = grid.driver()
    collab = f"unsafe{kind}"
    register_parties(driver, collab, "p", "breast_cancer")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MODEL)
    driver.alignments.create(collab_id=collab, project_id="p", auto_fix=False)
    _train(grid, collab, "r")
    path = grid.ttp_outputs / collab / "p" / "e" / "r" / "global_model.safetensors"
    original = path.read_bytes()
    marker = tmp_path / "unpickled"
    path.write_bytes(
        {
            "pickle": pickle.dumps({"layers.0.weight": _Payload(marker)}),
            "random": np.random.default_rng(0).bytes(4096),
            "truncated": original[: len(original) // 2],
        }[kind]
    )
    with pytest.raises(SynergosError) as info:
        driver.validations.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
    assert info.value.status == 422 and info.value.code == "model.unsafe_format", info.value
    assert not marker.exists()
    path.write_bytes(original)  # the real model validates again
    validations = driver.validations.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"]
    assert {v["key"]["participant_id"] for v in validations} >= {"aggregate"}


# ---- a request captured on one federation connection, replayed on another ----


def _evaluate(round_index: int) -> list[bytes]:
    state = build_model(MODEL, seed=1).state_dict()
    frames = list(encode_state(state, 1 << 20))
    header = {"op": "evaluate", "run": "/".join(RUN), "round": round_index, "nonce": new_nonce(), "meta": "evaluate"}
    return [encode_control({**header, "shards": len(frames)}), *frames]


async def _ask(ws, request: list[bytes]):
    for frame in request:
        await ws.send(frame)
    return parse_reply(json.loads((await ws.recv())[1:]))


@pytest.mark.integration
def test_a_request_captured_on_one_connection_is_refused_on_the_next(session_token):  # noqa: F811 - the fixture
    captured = _evaluate(0)

    async def exchange():
        async with _connect(session_token) as first:
            answered = await _ask(first, captured)
        async with _connect(session_token) as second:  # a new connection of the same session
            fresh = await _ask(second, _evaluate(0))  # a new request of the same round is served
            replayed = await _ask(second, captured)
            with pytest.raises(ConnectionClosed) as closed:
                await second.recv()
        async with _connect(session_token) as third:  # and on yet another connection, after the next round
            later = await _ask(third, _evaluate(1))
            stale = await _ask(third, _evaluate(0))
        return answered, fresh, replayed, closed.value.rcvd, later, stale

    answered, fresh, replayed, close, later, stale = asyncio.run(exchange())
    assert isinstance(answered, Loss) and isinstance(fresh, Loss) and isinstance(later, Loss)
    assert isinstance(replayed, Error) and replayed.code == "federation.replay" and "replayed" in replayed.detail
    assert close is not None and close.code == 1008
    assert isinstance(stale, Error) and stale.code == "federation.replay" and "stale" in stale.detail
