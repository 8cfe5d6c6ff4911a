"""What keeps a bad party's numbers and replays out, in one module each: the replay guard a whole
session shares, model files that are parsed (never unpickled), and non-finite numbers that are
neither stored nor answered."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from starlette.requests import Request

from synergos_contract.envelope import envelope_body
from synergos_contract.store import Store
from synergos_contract.tables import Model as ModelRow
from synergos_core.checkpoints import load_state, save_state
from synergos_core.errors import FederationError, InvalidRequest
from synergos_core.federation import ReplayGuard
from synergos_core.protocol import Close, new_nonce
from synergos_core.wire import Layout

RUN = "c/p/e/r"


def _close(round_index: int, nonce: str | None = None) -> Close:
    return Close(run=RUN, round=round_index, nonce=nonce or new_nonce())


def test_a_guard_refuses_a_nonce_again_within_its_round_and_any_older_round():
    guard = ReplayGuard(RUN)
    first = _close(3)
    guard.check(first)
    guard.check(_close(3))
    with pytest.raises(FederationError, match="replayed nonce"):
        guard.check(first)
    guard.check(_close(4))
    with pytest.raises(FederationError, match="stale round"):
        guard.check(first)  # once the next round began, the old message is stale whatever its nonce
    assert len(guard) == 1  # only the current round's nonces are held


def test_a_guard_at_capacity_refuses_rather_than_forgets():
    guard = ReplayGuard(RUN, capacity=3)
    sent = [_close(0) for _ in range(3)]
    for message in sent:
        guard.check(message)
    with pytest.raises(FederationError, match="more than 3 messages in round 0"):
        guard.check(_close(0))
    with pytest.raises(FederationError, match="replayed nonce"):
        guard.check(sent[0])  # nothing was forgotten
    guard.check(_close(1))  # a new round starts afresh


def test_the_default_capacity_is_a_million_nonces():
    assert ReplayGuard(RUN)._capacity == 1_000_000


class _Payload:
    """A pickle that, if it were ever unpickled, would leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _model_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {"layers.0.weight": torch.randn(3, 4), "layers.0.bias": torch.randn(3)}
    path = tmp_path / "global_model.safetensors"
    save_state(state, path)
    return path, state


@pytest.mark.parametrize("kind", ["pickle", "random", "truncated", "empty", "header_only"])
def test_a_file_that_is_not_safetensors_is_a_422_and_never_unpickled(tmp_path, kind):
    path, _ = _model_file(tmp_path)
    marker = tmp_path / "unpickled"
    raw = path.read_bytes()
    content = {
        "pickle": pickle.dumps({"layers.0.weight": _Payload(marker)}),
        "random": os.urandom(4096),
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "header_only": raw[: 8 + int.from_bytes(raw[:8], "little")],
    }[kind]
    path.write_bytes(content)
    with pytest.raises(InvalidRequest) as info:
        load_state(path)
    assert info.value.status == 422 and info.value.code == "model.unsafe_format"
    assert not marker.exists()


def test_a_safetensors_file_of_another_model_is_a_422_naming_a_tensor(tmp_path):
    path, state = _model_file(tmp_path)
    assert torch.equal(load_state(path, Layout.of(state))["layers.0.bias"], state["layers.0.bias"])
    save_file({"other.weight": torch.zeros(2)}, str(path))
    with pytest.raises(InvalidRequest) as info:
        load_state(path, Layout.of(state))
    assert info.value.code == "model.invalid" and "layers.0" in info.value.detail


def _store_with_run() -> Store:
    store = Store("sqlite://")
    store.create_collaboration("c", {})
    store.create_project("c", "p", {"action": "classify"})
    store.create_experiment("c", "p", "e", {"model": [{"l_type": "Linear", "structure": {}}]})
    store.create_run("c", "p", "e", "r", {})
    return store


def test_the_store_keeps_no_non_finite_number():
    store = _store_with_run()
    details = {"global": {"origin": "ttp", "loss_history": {"train": {"0": 0.5, "1": math.nan, "2": math.inf}}}}
    model = store.put_model("c", "p", "e", "r", details)
    assert model.global_model is not None
    assert model.global_model.loss_history == {"train": {"0": 0.5, "1": None, "2": None}}
    with store._read() as s:  # what the row holds, as JSON
        assert "NaN" not in json.dumps(s.get(ModelRow, model.key).details)


def test_a_non_finite_number_stored_before_reads_as_null():
    store = _store_with_run()
    store.put_model("c", "p", "e", "r", {"global": {"origin": "ttp", "loss_history": {"train": {"0": 0.5}}}})
    with store._write() as s:  # as an older version stored it
        row = s.get(ModelRow, {"collab_id": "c", "project_id": "p", "expt_id": "e", "run_id": "r"})
        row.details = {"global": {"origin": "ttp", "loss_history": {"train": {"0": math.nan}}}}
    (model,) = store.list_models("c", "p", "e", "r")
    assert model.global_model is not None and model.global_model.loss_history == {"train": {"0": None}}


def test_an_answer_holding_a_nan_is_json_with_null():
    request = Request({"type": "http", "method": "GET", "path": "/ttp/status/jobs", "path_params": {}, "headers": []})
    body = envelope_body(request, [{"metrics": {"train_loss": math.nan, "evaluate_loss": 0.25}}])
    assert json.loads(json.dumps(body, allow_nan=False))["data"] == [
        {"metrics": {"train_loss": None, "evaluate_loss": 0.25}}
    ]
