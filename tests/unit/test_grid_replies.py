"""How the TTP judges a party's reply (`GridRun.reply`, `screened`), on a stand-in channel: counts
against what the party declared, non-finite numbers, nonces used before, and the frames of a
refused reply dropped so that the channel stays in step."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch

from synergos_core.errors import FederationError, RefusedUpdate
from synergos_core.protocol import Train, Update, as_header, new_nonce, reply_to
from synergos_core.settings import FederationLimits
from synergos_core.wire import encode_control, encode_state
from synergos_ttp.grid import GridRun

KEYS = ("c", "p", "e", "r")
TRAINING = {"n_samples": 40, "train_loss": 0.25, "epoch_losses": [0.25], "compute_s": 0.01, "lrs": [0.1]}
WEIGHTS = {"w": torch.ones(1000)}
DECLARED = {"train": 40, "evaluate": 10}


class Channel:
    """Frames a party sent, read in order."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def put(self, header: dict[str, Any], shards: int = 0) -> None:
        frames = list(encode_state(WEIGHTS, 1024))[:shards]
        self.frames += [encode_control({**header, "shards": len(frames)}), *frames]

    async def recv(self) -> bytes:
        return self.frames.pop(0)


def _grid(*pids: str) -> GridRun:
    grid = GridRun(KEYS, [], "classify", [], {}, FederationLimits(round_timeout_s=5), http=None)  # type: ignore[arg-type]
    grid.channels = {pid: Channel() for pid in pids}  # type: ignore[misc]
    grid.counts = {pid: dict(DECLARED) for pid in pids}
    return grid


def _update(request: Train, **changes: Any) -> dict[str, Any]:
    return {**as_header(reply_to(request, Update, **TRAINING)), **changes}


def _screen(grid: GridRun, sent: dict[str, Train]) -> tuple[dict, dict]:
    return asyncio.run(grid.screened(sent, Update))


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"n_samples": 10**9}, "federation.bad_count"),
        ({"n_samples": -5}, "federation.bad_count"),
        ({"n_samples": 0}, "federation.bad_count"),
        ({"n_samples": 39}, "federation.bad_count"),
        ({"train_loss": math.nan}, "federation.non_finite"),
        ({"epoch_losses": [math.inf]}, "federation.non_finite"),
        (
            {"assessment": {"train_loss": 0.3, "train_samples": 40, "eval_loss": 0.2, "eval_samples": 11}},
            "federation.bad_count",
        ),
    ],
)
def test_a_refused_update_is_set_apart_with_its_reason_and_its_frames_dropped(changes, code):
    grid = _grid("honest", "liar")
    sent = {pid: grid.request(Train, 0, epochs=1) for pid in grid.channels}
    grid.channels["honest"].put(_update(sent["honest"]), shards=2)  # type: ignore[attr-defined]
    grid.channels["liar"].put(_update(sent["liar"], **changes), shards=3)  # type: ignore[attr-defined]
    grid.channels["liar"].put({"op": "next"})  # type: ignore[attr-defined]  # what it sends after
    accepted, refused = _screen(grid, sent)
    assert list(accepted) == ["honest"] and accepted["honest"].n_samples == 40
    assert list(refused) == ["liar"] and refused["liar"].code == code and "liar" in refused["liar"].detail
    # the liar's three shards were read and dropped: its next frame is next in line
    assert len(grid.channels["liar"].frames) == 1  # type: ignore[attr-defined]
    assert len(grid.channels["honest"].frames) == 2  # type: ignore[attr-defined]  # left for the aggregation


def test_a_nonce_used_before_is_refused_as_a_replay():
    grid = _grid("p1")
    first = grid.request(Train, 0, epochs=1)
    reply = _update(first)
    grid.channels["p1"].put(reply)  # type: ignore[attr-defined]
    asyncio.run(grid.reply("p1", first, Update))
    second = grid.request(Train, 0, epochs=1)
    grid.channels["p1"].put({**reply, "reply_to": second.nonce})  # type: ignore[attr-defined]  # nonce reused
    with pytest.raises(RefusedUpdate) as info:
        asyncio.run(grid.reply("p1", second, Update))
    assert info.value.code == "federation.replay" and info.value.participant == "p1"


def test_a_reply_to_another_request_fails_the_run():
    grid = _grid("p1")
    sent = {"p1": grid.request(Train, 0, epochs=1)}
    grid.channels["p1"].put(_update(sent["p1"], reply_to=new_nonce()))  # type: ignore[attr-defined]
    with pytest.raises(FederationError) as info:
        _screen(grid, sent)
    assert info.value.code == "federation.replay" and not isinstance(info.value, RefusedUpdate)


def test_strict_replies_fail_on_a_refusal():
    grid = _grid("p1")
    sent = {"p1": grid.request(Train, 0, epochs=1)}
    grid.channels["p1"].put(_update(sent["p1"], n_samples=7))  # type: ignore[attr-defined]
    with pytest.raises(RefusedUpdate) as info:
        asyncio.run(grid.replies(sent, Update))
    assert info.value.code == "federation.bad_count" and "declared 40" in info.value.detail
