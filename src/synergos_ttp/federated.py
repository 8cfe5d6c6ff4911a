"""The federated training loop (FedAvg / FedProx) on one grid, and inference for validation.

Each round: the global weights go out once (every shard encoded once for all parties), each
party trains locally and streams its weights back, and the TTP combines them into the global
model, in place (once sent, the old weights are not needed again), by the run's `aggregation`
(`synergos_core.aggregation`): the mean is folded shard by shard as the updates arrive, the
robust rules read the updates back from the parties' local model files once all have arrived.
A party also reports the loss of the weights it received on its own `evaluate` data, which is
the previous round's global evaluate loss; the final round's loss comes from one closing
`evaluate` request. Early stopping on that loss ends training at the best-known round. Memory
stays at one model plus a few shards per party in flight; model files are written on a
background thread.

Updates are checked before they count: a party's reply whose sample count is not the one it
declared when its session opened, or that holds a NaN or an infinity (a loss, a metric, a
weight), or replays a nonce, is refused with that reason (`federation.bad_count`,
`federation.non_finite`, `federation.replay`) and left out of that round only: its frames are
read and dropped, the other parties' updates are combined without it (the mean re-weighted
among them), the exclusion is logged and recorded (`TrainingOutcome.exclusions`, the Model
record and the job's `exclusions`), and the party takes part again in the next round. A round
left without any update fails the run with the refusal's reason.

A party gone from a round (its channel closed, its keepalive failed, or no reply by the round's
deadline: `grid.GridRun.guarded`) is recorded the same way, with `worker.disconnected` or
`federation.timeout`. The round is aggregated without it if the run's `min_workers` allows
(`grid.GridRun.quorum`; without `min_workers` a dropout fails the run, naming the party); it is
re-admitted, with the current global weights, at the first round that begins once it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from synergos_core.aggregation import (
    EarlyStopping,
    check_finite,
    combine,
    fold_slices,
    krum_tolerance,
    sample_weights,
)
from synergos_core.checkpoints import StateFileWriter
from synergos_core.errors import ErrorCode, FederationError, InvalidRequest, RefusedUpdate
from synergos_core.federation import iter_shards, recv_frame, send_state
from synergos_core.finite import json_safe
from synergos_core.metrics import ROUND_METRICS, pooled_metric
from synergos_core.model import build_model
from synergos_core.protocol import Evaluate, Infer, Loss, Metrics, Train, Update
from synergos_core.records import Exclusion
from synergos_core.schemas import RunHyperparameters
from synergos_core.wire import Layout

from .grid import GridRun
from .recovery import Checkpoints, Recovery

log = logging.getLogger(__name__)
Progress = Callable[..., None]


@dataclass
class RoundTiming:
    round: int
    wall_s: float
    worker_compute_s: dict[str, float]
    bytes_moved: int


@dataclass
class TrainingOutcome:
    state: dict[str, torch.Tensor]
    history: dict[str, dict[int, float]]
    local_history: dict[str, dict[int, float]]
    rounds_completed: int
    stopped_early: bool
    timings: list[RoundTiming] = field(default_factory=list)
    # the closing assessment of the final model, included in the last round's timing
    final_evaluate_s: float = 0.0
    # the parties' replies left out, by round (`Exclusions.items`)
    exclusions: list[Exclusion] = field(default_factory=list)


@dataclass
class Exclusions:
    """The replies a run left out, in the order they were refused, as the Model record and the job
    board show them; each refusal is logged."""

    run: str
    progress: Progress | None = None
    items: list[Exclusion] = field(default_factory=list)

    def add(self, round_index: int, request: str, refused: Mapping[str, RefusedUpdate]) -> None:
        for pid, exc in refused.items():
            log.warning(
                "run %s, round %d: %s's %s reply left out (%s): %s",
                self.run,
                round_index,
                pid,
                request,
                exc.code,
                exc.detail,
            )
            self.items.append(
                Exclusion(round=round_index, participant_id=pid, request=request, code=exc.code, reason=exc.detail)
            )
        if refused and self.progress is not None:
            self.progress(exclusions=list(self.items))

    def first(self, refused: Mapping[str, RefusedUpdate]) -> RefusedUpdate:
        """The refusal to fail a round with when no reply is left (the first party's)."""
        return refused[sorted(refused)[0]]


def _weighted(values: dict[str, tuple[float | None, int]]) -> float | None:
    pairs = [(v, n) for v, n in values.values() if v is not None and n > 0]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


class _FileQueue:
    """The run's file writes (local models, checkpoints), done in submission order on one thread.

    They overlap the network and the parties' compute instead of holding up the event loop; the
    training loop waits for them where it must (see `wait`), and always before it returns or fails.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="synergos-files")
        self._pending: list[asyncio.Future] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending.append(asyncio.get_running_loop().run_in_executor(self._executor, fn, *args))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the files' thread once everything submitted so far is written; its result."""
        await self.wait()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def wait(self) -> None:
        """Until everything submitted so far is written; the first failure is raised here."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.wait(pending)
            for fut in pending:
                fut.result()

    async def close(self) -> None:
        try:
            await self.wait()
        finally:
            self._executor.shutdown(wait=False)


async def train(
    grid: GridRun, out_dir: Path, progress: Progress | None = None, recovery: Recovery | None = None
) -> TrainingOutcome:
    files = _FileQueue()
    checkpoints = Checkpoints(out_dir, recovery or Recovery(), grid.run, progress)
    try:
        outcome = await _train(grid, out_dir, files, progress, checkpoints)
    except BaseException:
        try:
            await files.close()
        except Exception as exc:  # noqa: BLE001 - the training error is the one to report
            log.warning("run %s: writing model files failed too: %s", grid.run, exc)
        raise
    await files.close()
    return outcome


async def _train(
    grid: GridRun, out_dir: Path, files: _FileQueue, progress: Progress | None, checkpoints: Checkpoints
) -> TrainingOutcome:
    hp = RunHyperparameters.of(grid.hyperparameters)
    rounds, epochs = hp.rounds, hp.epochs
    global_model = build_model(grid.model, seed=hp.seed)
    state = global_model.state_dict()
    layout = Layout.of(state)
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    history: dict[str, dict[int, float]] = {"train": {}, "evaluate": {}}
    local_history: dict[str, dict[int, float]] = {pid: {} for pid in grid.channels}
    stopper = EarlyStopping(hp.patience, hp.delta)
    timings: list[RoundTiming] = []
    stopped, completed = False, 0
    trainers = [pid for pid, c in sorted(grid.counts.items()) if c.get("train")]
    if not trainers:
        raise FederationError("no participant has train data for this run", ErrorCode.FEDERATION_NO_SAMPLES)
    if hp.aggregation == "krum" and krum_tolerance(len(trainers), hp.byzantine) is None:
        f = 0 if hp.byzantine is None else hp.byzantine
        raise InvalidRequest(
            f"aggregation 'krum' with byzantine={hp.byzantine} needs more than 2f + 2 parties with train data "
            f"(at least {2 * f + 3}); this run has {len(trainers)}",
            ErrorCode.RUN_INVALID_COMBINATION,
        )
    grid.require_quorum(trainers)
    exclusions = Exclusions(grid.run, progress)
    start = 0
    resumed = await asyncio.to_thread(checkpoints.resume, layout)
    if resumed is not None:  # carry on after the checkpoint's round, as if the run had never stopped
        with torch.no_grad():
            for name, tensor in state.items():
                tensor.copy_(resumed.state[name])
        history, completed = resumed.history, resumed.round + 1
        local_history.update({pid: h for pid, h in resumed.local_history.items() if pid in local_history})
        stopper.best, stopper.stale = resumed.best, resumed.stale
        exclusions.items.extend(resumed.exclusions)
        start = completed
    for r in range(start, rounds):
        started = time.perf_counter()
        grid.begin(epochs)  # re-admits the parties that are back; the deadline of this round's replies
        # a resumed run's first round: each party first restores the training state it kept after the last
        resume_from = start - 1 if r == start and start else None
        sent = await grid.broadcast(
            Train, r, state, participants=trainers, epochs=epochs, evaluate=r > 0, resume_from=resume_from
        )
        replies, refused = await grid.screened(sent, Update)
        exclusions.add(r, Train.model_fields["op"].default, refused)
        grid.quorum(r, replies, refused)
        if r > 0:
            # the parties assessed the weights they received: round r - 1's global model
            loss = record_assessment(history, r - 1, replies, grid.action, progress, rounds)
            if stopper.step(loss):
                stopped = True
                await _drain(grid, replies, layout)
                log.info("run %s: early stop after round %d (evaluate loss %.5f)", grid.run, r, loss)
                break
        if not replies:
            raise exclusions.first(refused)
        weights = sample_weights({p: h.n_samples for p, h in replies.items()})
        # combined in place: once broadcast, the old global weights are only needed if training stops
        # early, which is decided above, before any update is combined
        refused = await _aggregate(grid, replies, weights, layout, state, out_dir, files, hp)
        exclusions.add(r, Train.model_fields["op"].default, refused)
        replies = {pid: h for pid, h in replies.items() if pid not in refused}
        grid.quorum(r, replies, refused)
        grid.collected()
        for pid, h in replies.items():
            local_history[pid][r] = h.train_loss
        completed = r + 1
        # written in the background while the next round broadcasts and the parties train: until the
        # next _aggregate, which waits for it, nothing writes into `state`
        files.submit(
            checkpoints.write, checkpoints.snapshot(r, history, local_history, stopper, exclusions.items), state
        )
        timings.append(
            RoundTiming(
                r,
                time.perf_counter() - started,
                {p: h.compute_s for p, h in replies.items()},
                2 * state_bytes * len(trainers),
            )
        )
    final_s = 0.0
    if not stopped:
        started = time.perf_counter()
        assessed = await assess(grid, state, completed, exclusions)
        final_s = time.perf_counter() - started
        record_assessment(history, completed - 1, assessed, grid.action, progress, rounds)
        if timings:
            timings[-1].wall_s += final_s
            timings[-1].bytes_moved += state_bytes * len(grid.channels)
        _write_json(out_dir / "global_loss_history.json", history)
    return TrainingOutcome(state, history, local_history, completed, stopped, timings, final_s, exclusions.items)


def record_assessment(
    history: dict[str, dict[int, float]],
    round_index: int,
    replies: Mapping[str, Update | Loss],
    action: str,
    progress: Progress | None = None,
    rounds: int | None = None,
) -> float | None:
    """Pool the parties' assessments of round `round_index`'s global model into the history:
    `train` and `evaluate` losses (sample-weighted) and the evaluate metric (`evaluate_accuracy`
    or `evaluate_r2`, exact over the pooled data); report progress; return the evaluate loss."""
    assessed = {p: h.assessment for p, h in replies.items() if h.assessment is not None}
    train_loss = _weighted({p: (a.train_loss, a.train_samples) for p, a in assessed.items()})
    eval_loss = _weighted({p: (a.eval_loss, a.eval_samples) for p, a in assessed.items()})
    metric = pooled_metric([a.metric.model_dump() for a in assessed.values() if a.metric is not None], action)
    name = f"evaluate_{ROUND_METRICS[action]}"
    # finite reports can still pool to an infinity (huge losses): such a figure is not recorded
    train_loss, eval_loss, metric = json_safe(train_loss), json_safe(eval_loss), json_safe(metric)
    for key, value in (("train", train_loss), ("evaluate", eval_loss), (name, metric)):
        if value is not None:
            history.setdefault(key, {})[round_index] = value
    if progress:
        progress(round=round_index + 1, rounds=rounds, train_loss=train_loss, evaluate_loss=eval_loss, **{name: metric})
    return eval_loss


async def assess(
    grid: GridRun, state: dict[str, torch.Tensor], round_index: int, exclusions: Exclusions | None = None
) -> dict[str, Loss]:
    """Every party's assessment of `state` on its own train and evaluate data; with `exclusions`,
    a refused one, or one that dropped out while the run's quorum holds, is left out (and recorded
    there) instead of failing the run."""
    grid.begin()
    sent = await grid.broadcast(Evaluate, round_index, state, meta="evaluate", assess=True)
    if exclusions is None:
        return await grid.replies(sent, Loss)
    accepted, refused = await grid.screened(sent, Loss)
    exclusions.add(round_index, Evaluate.model_fields["op"].default, refused)
    grid.quorum(round_index, accepted, refused)
    return accepted


async def infer(
    grid: GridRun, state: dict[str, torch.Tensor], meta: str, participants: list[str] | None = None
) -> dict[str, dict]:
    """Ask each node to predict on its own `meta` data and return only its statistics."""
    grid.begin()
    sent = await grid.broadcast(Infer, 0, state, participants=participants, meta=meta)
    return _statistics(await grid.replies(sent, Metrics))


async def infer_each(grid: GridRun, states: dict[str, dict[str, torch.Tensor]], meta: str) -> dict[str, dict]:
    """Like `infer`, with each party's own weights (FedGKT: its extractor and the server layers)."""
    grid.begin()
    sent = {}
    for pid, state in states.items():
        sent[pid] = request = grid.request(Infer, 0, meta=meta)
        await grid.deliver(
            pid, "infer", partial(send_state, message=request, state=state, shard_bytes=grid.limits.shard_bytes)
        )
    return _statistics(await grid.replies(sent, Metrics))


def _statistics(replies: dict[str, Metrics]) -> dict[str, dict]:
    # what the validation records store (`operations.infer_run`): the checked reply's payload as plain data
    return {
        pid: m.model_dump(include={"meta", "statistics", "n_samples", "res_path", "parts"})
        for pid, m in replies.items()
    }


async def _aggregate(
    grid: GridRun,
    replies: dict[str, Update],
    weights: dict[str, float],
    layout: Layout,
    target: dict[str, torch.Tensor],
    out_dir: Path,
    files: _FileQueue,
    hp: RunHyperparameters,
) -> dict[str, RefusedUpdate]:
    """Receive the parties' weights shard by shard into their local model files and combine them
    into `target` by the run's rule; returns the parties whose weights were refused (non-finite),
    left out of `target`. The mean is folded as the shards arrive; the other rules, and the mean
    again if a party was refused after some of its shards were folded, read the kept parties'
    files back once every shard is in (`aggregation.combine`)."""
    pids = sorted(replies)
    counts = {replies[p].shards for p in pids}
    if len(counts) != 1:
        raise FederationError("participants sent differently sharded updates", ErrorCode.FEDERATION_BAD_UPDATE)
    await files.wait()  # the previous round's files are written (and its failures raised) before this round's
    # each party's shards, due by the round's deadline; a party gone midway is dropped (its reply refused)
    streams = {p: iter_shards(grid.channel(p), replies[p].shards, layout, grid.remaining()) for p in pids}
    during = {p: f"the update of round {replies[p].round}" for p in pids}
    writers = {p: StateFileWriter(out_dir / f"local_model_{p}.safetensors", layout) for p in pids}
    refused: dict[str, RefusedUpdate] = {}
    streaming = hp.aggregation == "mean"
    try:
        for _ in range(counts.pop()):
            shards: dict[str, list[tuple[str, int, torch.Tensor]]] = {}
            got = await asyncio.gather(
                *(grid.refusable(p, _next_shard(grid, streams[p], p in refused, p), during[p]) for p in pids)
            )
            for p, shard in zip(pids, got, strict=True):
                if isinstance(shard, RefusedUpdate):  # gone midway: left out like a refused update
                    refused.setdefault(p, shard)
                    shard = []
                shards[p] = shard
            live = [(p, weights[p], shards[p]) for p in pids if p not in refused]
            try:
                if streaming and not refused:
                    fold_slices(target, live)
                else:
                    for p, _, slices in live:
                        check_finite(p, slices)
            except RefusedUpdate as exc:
                refused[exc.participant] = exc
            # this shard is written while the next one arrives; no more than that is held
            await files.wait()
            files.submit(_write_locals, writers, [(p, shards[p]) for p in pids if p not in refused])
        await files.wait()
        for p in refused:
            writers.pop(p).abort()
        kept = [p for p in pids if p not in refused]
        if not kept:
            raise next(iter(refused.values()))
        if refused or not streaming:
            reweighted = sample_weights({p: replies[p].n_samples for p in kept})
            chunk = max(1 << 16, grid.limits.shard_bytes // len(kept))
            chosen = await files.run(combine, target, layout, {p: writers[p] for p in kept}, reweighted, hp, chunk)
            if chosen is not None:
                log.info("run %s: krum chose %s's update", grid.run, chosen)
    except BaseException:
        try:
            await files.wait()
        except Exception:  # noqa: BLE001 - the streaming error that brought us here is the one to report
            pass
        for w in writers.values():
            w.abort()
        raise
    files.submit(_commit_locals, writers)
    return refused


async def _next_shard(grid: GridRun, stream: Any, dropped: bool, pid: str) -> list[tuple[str, int, torch.Tensor]]:
    """`pid`'s next shard, decoded; once its update is refused, its frames are read and dropped (none
    once its channel is gone)."""
    if dropped:
        if pid in grid.channels:
            await recv_frame(grid.channels[pid], grid.remaining())
        return []
    return await anext(stream)


def _write_locals(
    writers: dict[str, StateFileWriter], shards: list[tuple[str, list[tuple[str, int, torch.Tensor]]]]
) -> None:
    for p, slices in shards:
        for name, offset, tensor in slices:
            writers[p].write(name, offset, tensor)


def _commit_locals(writers: dict[str, StateFileWriter]) -> None:
    for w in writers.values():
        w.commit()


async def _drain(grid: GridRun, replies: dict[str, Update], layout: Layout) -> None:
    """Read and drop the updates of a round that is not aggregated (a party gone midway is dropped)."""

    async def drain(p: str, h: Update) -> None:
        async for _ in iter_shards(grid.channel(p), h.shards, layout, grid.remaining()):
            pass

    for p, h in replies.items():
        await grid.refusable(p, drain(p, h), f"the update of round {h.round}")


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
