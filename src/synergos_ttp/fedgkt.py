"""The TTP's side of FedGKT: train the server model on the parties' features by distillation.

Per round: each party trains its extractor and head (softened towards the server's last
predictions for its samples) and sends features and predictions; the server distils them for
`server_epochs`; each party then evaluates its extractor with the new server layers on its own
`evaluate` data. At the end each party hands over its extractor, so that validation and
prediction can run the full model on the party's side.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TypeVar

import torch

from synergos_core.aggregation import EarlyStopping
from synergos_core.checkpoints import save_state
from synergos_core.errors import ErrorCode, FederationError
from synergos_core.federation import recv_tensors, send_message, send_state, send_tensors
from synergos_core.gkt import ServerModel, split_index, train_server
from synergos_core.model import build_model, output_kind
from synergos_core.protocol import GktEvaluate, GktExport, GktExtractor, GktFeatures, GktTrain, Loss
from synergos_core.schemas import RunHyperparameters

from .federated import Progress, RoundTiming, TrainingOutcome, _checkpoint, _write_json, record_assessment
from .grid import GridRun

T = TypeVar("T", GktFeatures, GktExtractor)


async def _exchange(
    grid: GridRun,
    pid: str,
    request: GktTrain | GktExport,
    tensors: dict[str, torch.Tensor] | None,
    expect: type[T],
    allowed: set[str],
) -> tuple[T, dict[str, torch.Tensor]]:
    ws = grid.channels[pid]
    if tensors:
        assert isinstance(request, GktTrain)  # the only request that carries tensors of its own
        await send_tensors(ws, request, tensors, grid.limits.shard_bytes)
    else:
        await send_message(ws, request)
    reply = await grid.reply(pid, request, expect)
    received = await recv_tensors(ws, reply, allowed, grid.limits.max_payload_bytes, grid.limits.round_timeout_s)
    return reply, received


async def train(grid: GridRun, out_dir: Path, progress: Progress | None = None) -> TrainingOutcome:
    hp = RunHyperparameters.of(grid.hyperparameters)
    rounds, epochs = hp.rounds, hp.epochs
    split, kind = split_index(grid.model, hp), output_kind(grid.model)
    server = ServerModel(build_model(grid.model, seed=hp.seed), split)
    trainers = [pid for pid, c in sorted(grid.counts.items()) if c.get("train")]
    if not trainers:
        raise FederationError("no participant has train data for this run", ErrorCode.FEDERATION_NO_SAMPLES)
    history: dict[str, dict[int, float]] = {"train": {}, "evaluate": {}, "server": {}}
    local_history: dict[str, dict[int, float]] = {pid: {} for pid in grid.channels}
    stopper = EarlyStopping(hp.patience, hp.delta)
    teachers: dict[str, torch.Tensor] = {}
    timings, completed, stopped = [], 0, False
    for r in range(rounds):
        started = time.perf_counter()
        requests = {pid: grid.request(GktTrain, r, epochs=epochs) for pid in trainers}
        results = await asyncio.gather(
            *(
                _exchange(
                    grid,
                    pid,
                    requests[pid],
                    {"server_out": teachers[pid]} if pid in teachers else None,
                    GktFeatures,
                    {"features", "local_out"},
                )
                for pid in trainers
            )
        )
        replies = {pid: reply for pid, (reply, _) in zip(trainers, results, strict=True)}
        for pid, (_, tensors) in zip(trainers, results, strict=True):
            if set(tensors) != {"features", "local_out"}:
                raise FederationError(f"{pid} sent no features and predictions", ErrorCode.FEDERATION_BAD_UPDATE)
        batches = [(tensors["features"], tensors["local_out"]) for _, tensors in results]
        history["server"][r] = await asyncio.to_thread(train_server, server, batches, hp, kind)
        with torch.no_grad():
            teachers = {pid: server(features).detach() for pid, (features, _) in zip(trainers, batches, strict=False)}
        del batches, results
        for pid, h in replies.items():
            local_history[pid][r] = h.train_loss
        # each party's full model (its extractor, the new server layers) on its train and evaluate data
        loss = record_assessment(history, r, await assess(grid, server.state(), r), grid.action, progress, rounds)
        completed = r + 1
        _checkpoint(out_dir, r, server.state(), json.dumps(history))
        timings.append(RoundTiming(r, time.perf_counter() - started, {p: h.compute_s for p, h in replies.items()}, 0))
        if stopper.step(loss):
            stopped = True
            break
    for pid in sorted(grid.channels):
        _, extractor = await _exchange(
            grid, pid, grid.request(GktExport, completed), None, GktExtractor, set(_extractor_names(server, split))
        )
        save_state(extractor, out_dir / f"local_model_{pid}.safetensors")
    _write_json(out_dir / "global_loss_history.json", history)
    return TrainingOutcome(server.state(), history, local_history, completed, stopped, timings)


def _extractor_names(server: ServerModel, split: int) -> list[str]:
    names = [k for k in server.model.state_dict() if int(k.split(".")[1]) < split]
    return names + ["head.linear.weight", "head.linear.bias"]  # absent when the head is the server part


async def assess(grid: GridRun, server_state: dict[str, torch.Tensor], round_index: int) -> dict[str, Loss]:
    """Every party's assessment of its full model with `server_state` as the server layers."""

    async def one(pid: str) -> Loss:
        request = grid.request(GktEvaluate, round_index, meta="evaluate", assess=True)
        await send_state(grid.channels[pid], request, server_state, grid.limits.shard_bytes)
        return await grid.reply(pid, request, Loss)

    pids = sorted(grid.channels)
    return dict(zip(pids, await asyncio.gather(*(one(pid) for pid in pids)), strict=False))


def participant_states(
    out_dir: Path, server_state: dict[str, torch.Tensor], pids: list[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """Each party's full model: its own extractor followed by the server layers."""
    from synergos_core.checkpoints import load_state

    states = {}
    for pid in pids:
        local = load_state(out_dir / f"local_model_{pid}.safetensors")
        states[pid] = {**{k: v for k, v in local.items() if not k.startswith("head.")}, **server_state}
    return states
