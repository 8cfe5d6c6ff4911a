"""The TTP's side of FedGKT: train the server model on the parties' features by distillation.

Per round: each party trains its extractor and head (softened towards the server's last
predictions for its samples) and sends features and predictions; the server distils them for
`server_epochs`; each party then evaluates its extractor with the new server layers on its own
`evaluate` data. At the end each party hands over its extractor, so that validation and
prediction can run the full model on the party's side.

A party's features and predictions are checked before the server learns from them (its sample
count the one it declared, every value finite, one row per sample, shaped as the server layers
take them); a refused party is left out of that round's distillation, as a refused update is in
`federated`, and recorded in the run's exclusions. A party gone from a round (`grid.GridRun.guarded`)
is left out and re-admitted as in `federated`, while the run's `min_workers` allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch

from synergos_core.aggregation import EarlyStopping
from synergos_core.checkpoints import save_state
from synergos_core.errors import ErrorCode, FederationError, RefusedUpdate
from synergos_core.federation import recv_tensors, send_message, send_state, send_tensors
from synergos_core.finite import tensor_is_finite
from synergos_core.gkt import ServerModel, split_index, train_server
from synergos_core.model import build_model, output_kind
from synergos_core.protocol import GktEvaluate, GktExport, GktExtractor, GktFeatures, GktTrain, Loss
from synergos_core.schemas import RunHyperparameters

from .federated import (
    Exclusions,
    Progress,
    RoundTiming,
    TrainingOutcome,
    _write_json,
    record_assessment,
)
from .grid import GridRun
from .recovery import Checkpoints, Recovery

log = logging.getLogger(__name__)
T = TypeVar("T", GktFeatures, GktExtractor)


async def _exchange(
    grid: GridRun,
    pid: str,
    request: GktTrain | GktExport,
    tensors: dict[str, torch.Tensor] | None,
    expect: type[T],
    allowed: set[str],
) -> tuple[T, dict[str, torch.Tensor]]:
    ws = grid.channel(pid)
    if tensors:
        assert isinstance(request, GktTrain)  # the only request that carries tensors of its own
        await asyncio.wait_for(send_tensors(ws, request, tensors, grid.limits.shard_bytes), grid.remaining())
    else:
        await asyncio.wait_for(send_message(ws, request), grid.remaining())
    reply = await grid.reply(pid, request, expect)
    received = await recv_tensors(ws, reply, allowed, grid.limits.max_payload_bytes, grid.remaining())
    for name, tensor in received.items():
        if not tensor_is_finite(tensor):
            raise RefusedUpdate(f"{pid} sent non-finite {name}", ErrorCode.FEDERATION_NON_FINITE, participant=pid)
    return reply, received


async def _features(
    grid: GridRun, pid: str, request: GktTrain, teacher: torch.Tensor | None, server: ServerModel
) -> tuple[GktFeatures, dict[str, torch.Tensor]]:
    """`pid`'s features and predictions of this round, trained towards `teacher` if given; checked."""
    tensors = {"server_out": teacher} if teacher is not None else None
    reply, received = await _exchange(grid, pid, request, tensors, GktFeatures, {"features", "local_out"})
    _check_features(pid, reply, received, server)
    return reply, received


def _check_features(pid: str, reply: GktFeatures, tensors: dict[str, torch.Tensor], server: ServerModel) -> None:
    """A party's features and predictions: one row per declared sample, as the server layers take
    them and as they answer (finite values were checked as they arrived)."""
    if set(tensors) != {"features", "local_out"}:
        raise FederationError(f"{pid} sent no features and predictions", ErrorCode.FEDERATION_BAD_UPDATE)
    features, local_out = tensors["features"], tensors["local_out"]
    rows = {len(features) if features.dim() else -1, len(local_out) if local_out.dim() else -1}
    if rows != {reply.n_samples}:
        raise RefusedUpdate(
            f"{pid} sent features and predictions for {sorted(rows)} samples, not its {reply.n_samples}",
            ErrorCode.FEDERATION_BAD_UPDATE,
            participant=pid,
        )
    dtype = next((p.dtype for p in server.model.parameters()), torch.float32)
    try:
        if features.dtype != dtype or local_out.dtype != dtype:
            raise TypeError(f"{features.dtype}/{local_out.dtype}, not {dtype}")
        training = server.training
        server.eval()  # one row through BatchNorm or Dropout, without touching their state
        try:
            with torch.no_grad():
                answered = server(features[:1])
        finally:
            server.train(training)
        if answered.shape[1:] != local_out.shape[1:]:
            raise ValueError(f"predictions shaped {tuple(local_out.shape[1:])}, not {tuple(answered.shape[1:])}")
    except (RuntimeError, TypeError, ValueError) as exc:
        raise RefusedUpdate(
            f"{pid}'s features do not fit the server layers ({str(exc)[:200]})",
            ErrorCode.FEDERATION_BAD_UPDATE,
            participant=pid,
        ) from None


async def train(
    grid: GridRun, out_dir: Path, progress: Progress | None = None, recovery: Recovery | None = None
) -> TrainingOutcome:
    """FedGKT checkpoints each round as FedAvg does, but does not resume: a party's extractor stays
    with it until the run ends, so an interrupted FedGKT run trains again from round 1."""
    hp = RunHyperparameters.of(grid.hyperparameters)
    recovery = recovery or Recovery()
    if recovery.resume:
        log.warning("run %s: a FedGKT run does not resume; it trains again from round 1", grid.run)
    checkpoints = Checkpoints(out_dir, replace(recovery, resume=False), grid.run, progress)
    await asyncio.to_thread(checkpoints.clear)  # from round 0: the run's old checkpoints are void
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
    grid.require_quorum(trainers)
    exclusions = Exclusions(grid.run, progress)
    for r in range(rounds):
        started = time.perf_counter()
        grid.begin(epochs)  # re-admits the parties that are back; the deadline of this round's replies
        requests = {pid: grid.request(GktTrain, r, epochs=epochs) for pid in trainers}
        exchanges = [_features(grid, pid, requests[pid], teachers.get(pid), server) for pid in trainers]
        during = f"{GktTrain.model_fields['op'].default} of round {r}"
        results = dict(
            zip(
                trainers,
                await asyncio.gather(
                    *(grid.refusable(pid, x, during) for pid, x in zip(trainers, exchanges, strict=True))
                ),
                strict=True,
            )
        )
        refused = {pid: got for pid, got in results.items() if isinstance(got, RefusedUpdate)}
        exclusions.add(r, GktTrain.model_fields["op"].default, refused)
        accepted = {pid: got for pid, got in results.items() if not isinstance(got, RefusedUpdate)}
        grid.quorum(r, accepted, refused)
        grid.collected()
        if not accepted:
            raise exclusions.first(refused)
        replies = {pid: reply for pid, (reply, _) in accepted.items()}
        batches = {pid: (tensors["features"], tensors["local_out"]) for pid, (_, tensors) in accepted.items()}
        history["server"][r] = await asyncio.to_thread(train_server, server, list(batches.values()), hp, kind)
        with torch.no_grad():
            teachers = {pid: server(features).detach() for pid, (features, _) in batches.items()}
        del batches, results, accepted
        for pid, h in replies.items():
            local_history[pid][r] = h.train_loss
        # each party's full model (its extractor, the new server layers) on its train and evaluate data
        assessed = await assess(grid, server.state(), r, exclusions)
        loss = record_assessment(history, r, assessed, grid.action, progress, rounds)
        completed = r + 1
        await asyncio.to_thread(
            checkpoints.write,
            checkpoints.snapshot(r, history, local_history, stopper, exclusions.items),
            server.state(),
        )
        timings.append(RoundTiming(r, time.perf_counter() - started, {p: h.compute_s for p, h in replies.items()}, 0))
        if stopper.step(loss):
            stopped = True
            break
    grid.begin()
    for pid in sorted(grid.participants):
        request = grid.request(GktExport, completed)
        exported = await grid.refusable(
            pid,
            _exchange(grid, pid, request, None, GktExtractor, set(_extractor_names(server, split))),
            f"{request.op} after round {completed - 1}",
        )
        if isinstance(exported, RefusedUpdate):  # no model of its own for this party: it cannot validate
            exclusions.add(completed, request.op, {pid: exported})
            continue
        save_state(exported[1], out_dir / f"local_model_{pid}.safetensors")
    _write_json(out_dir / "global_loss_history.json", history)
    return TrainingOutcome(
        server.state(), history, local_history, completed, stopped, timings, exclusions=exclusions.items
    )


def _extractor_names(server: ServerModel, split: int) -> list[str]:
    names = [k for k in server.model.state_dict() if int(k.split(".")[1]) < split]
    return names + ["head.linear.weight", "head.linear.bias"]  # absent when the head is the server part


async def assess(
    grid: GridRun, server_state: dict[str, torch.Tensor], round_index: int, exclusions: Exclusions
) -> dict[str, Loss]:
    """Every party's assessment of its full model with `server_state` as the server layers; a
    refused one, or one gone while the run's quorum holds, is left out (and recorded in `exclusions`)."""
    grid.begin()
    sent = {pid: grid.request(GktEvaluate, round_index, meta="evaluate", assess=True) for pid in grid.participants}
    for pid, request in sent.items():
        send = partial(send_state, message=request, state=server_state, shard_bytes=grid.limits.shard_bytes)
        await grid.deliver(pid, f"{request.op} of round {round_index}", send)
    accepted, refused = await grid.screened(sent, Loss)
    exclusions.add(round_index, GktEvaluate.model_fields["op"].default, refused)
    grid.quorum(round_index, accepted, refused)
    return accepted


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
