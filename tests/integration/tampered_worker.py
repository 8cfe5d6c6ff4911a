"""A real Worker process whose replies to `train` are tampered with, for the tests of what the TTP
accepts: `python tampered_worker.py <synergos-worker flags>`.

The tampering is read, before every reply, from the file named by `SYNERGOS_TEST_TAMPER_FILE`
(so that one process serves every test): `honest`, or
    count_huge / count_negative / count_zero   n_samples 10**9 / -5 / 0 in the update (FedAvg's
                                               or FedProx's weights, FedGKT's features)
    nan_loss                                   train_loss NaN (json writes it as a bare NaN)
    nan_weights / huge_weights                 every floating-point weight NaN / 1e6
    nan_features                               FedGKT: the features sent are NaN
    replay                                     from round 1 on, the captured round-0 update
                                               (header and frames) instead of the real one
Everything else is the real Worker: its data, training, sessions and federation server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

import synergos_core.federation as core_federation
import synergos_worker.federation as worker_federation
import synergos_worker.gkt as worker_gkt
from synergos_worker.cli import main

MODE_FILE = Path(os.environ["SYNERGOS_TEST_TAMPER_FILE"])
HEADERS = {
    "count_huge": {"n_samples": 10**9},
    "count_negative": {"n_samples": -5},
    "count_zero": {"n_samples": 0},
    "nan_loss": {"train_loss": float("nan")},
}
WEIGHTS = {"nan_weights": float("nan"), "huge_weights": 1e6}


def mode() -> str:
    try:
        return MODE_FILE.read_text().strip() or "honest"
    except OSError:
        return "honest"


_send_header = core_federation.send_header


async def send_header(ws: Any, header: dict[str, Any]) -> None:
    if header.get("op") in ("update", "gkt_features"):
        header = {**header, **HEADERS.get(mode(), {})}
    await _send_header(ws, header)


class _Recorder:
    """Passes frames on to the channel and keeps a copy of them."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.frames = ws, []

    async def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        await self.ws.send(frame)


_send_state = worker_federation.send_state
_captured: dict[str, list[bytes]] = {}


async def send_state(ws: Any, message: Any, state: dict[str, torch.Tensor] | None, shard_bytes: int) -> None:
    current = mode()
    if current in WEIGHTS and state is not None:
        state = {k: torch.full_like(v, WEIGHTS[current]) if v.is_floating_point() else v for k, v in state.items()}
    if current == "replay" and message.op == "update":
        if message.round == 0 or message.run not in _captured:
            recorder = _Recorder(ws)
            await _send_state(recorder, message, state, shard_bytes)
            _captured[message.run] = recorder.frames
            return
        for frame in _captured[message.run]:  # the round-0 update, byte for byte
            await ws.send(frame)
        return
    await _send_state(ws, message, state, shard_bytes)


_send_tensors = worker_gkt.send_tensors


async def send_tensors(ws: Any, message: Any, tensors: dict[str, torch.Tensor], shard_bytes: int) -> None:
    if mode() == "nan_features" and message.op == "gkt_features":
        tensors = {**tensors, "features": torch.full_like(tensors["features"], float("nan"))}
    await _send_tensors(ws, message, tensors, shard_bytes)


core_federation.send_header = send_header
worker_federation.send_state = send_state
worker_gkt.send_tensors = send_tensors

if __name__ == "__main__":
    sys.argv[0] = "synergos-worker"
    main(sys.argv[1:])
