"""Server-side aggregation: how the parties' weights become the global model each round, by the
run's `aggregation` (`RunHyperparameters`):

    mean          the sample-weighted mean (FedAvg, FedProx), each party weighted by its samples
    median        the coordinate-wise median, each party counting once (for an even number of
                  parties, the mean of the two middle values, as `numpy.median`)
    trimmed_mean  coordinate-wise: the int(trim_ratio * n) largest and as many smallest values of
                  each coordinate are dropped and the rest averaged, each party counting once
                  (as `scipy.stats.trim_mean`)
    krum          Krum (Blanchard et al., 2017): the one update whose n - f - 2 nearest updates
                  (squared euclidean distance over every floating-point value) are closest to it,
                  where f = `byzantine` and n > 2f + 2; multi-Krum (averaging the m best) is off

Values that are not floating-point (counters such as BatchNorm's `num_batches_tracked`) are
never combined: they come from the first party (Krum: the chosen one).

Memory stays bounded: the mean is folded shard by shard as the updates stream in
(`fold_slices`); the other rules, and the mean again when a party's update is refused half-way,
read the parties' updates back from where they were streamed (their local model files), a slice
of at most `chunk_bytes` per party at a time (`combine`). Parties are always taken in participant
order, so the result does not depend on which party answered first and the same seed gives the
same model bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import torch

from .errors import ErrorCode, FederationError, RefusedUpdate
from .finite import tensor_is_finite
from .schemas import RunHyperparameters
from .wire import Layout, Slice, write_slices

log = logging.getLogger(__name__)

Slices = list[tuple[str, int, torch.Tensor]]  # (tensor name, element offset, flat values): one shard
PartySlices = tuple[str, float, Slices]  # (participant id, weight, its slices of one shard)


class Source(Protocol):
    """Where a party's streamed update can be read back, a flat slice at a time."""

    def read(self, name: str, offset: int, count: int) -> torch.Tensor: ...


class StateSource:
    """A state dict in memory as a `Source`."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state

    def read(self, name: str, offset: int, count: int) -> torch.Tensor:
        return self.state[name].detach().reshape(-1)[offset : offset + count]


def _check_same_layout(per_party: Sequence[PartySlices]) -> None:
    """Every party's shard holds the same slices (both sides plan shards from the same layout)."""
    first_pid, _, first = per_party[0]
    for pid, _, slices in per_party[1:]:
        if [(n, o, t.numel()) for n, o, t in slices] != [(n, o, t.numel()) for n, o, t in first]:
            raise FederationError(
                f"{pid}'s update is laid out differently from {first_pid}'s", ErrorCode.FEDERATION_BAD_UPDATE
            )


def check_finite(pid: str, slices: Slices) -> None:
    """Refuse `pid`'s update if any of its values is NaN or infinite (`federation.non_finite`)."""
    for name, _, tensor in slices:
        if not tensor_is_finite(tensor):
            raise RefusedUpdate(
                f"{pid} sent non-finite weights for {name}", ErrorCode.FEDERATION_NON_FINITE, participant=pid
            )


def fold_slices(target: dict[str, torch.Tensor], per_party: Sequence[PartySlices]) -> None:
    """Write sum_k w_k * slice_k into `target` for one shard index.

    `per_party` is [(participant_id, weight, decoded slices)] in participant order. A party whose
    slice holds a NaN or an infinity is refused (`RefusedUpdate` naming it): what was folded
    into `target` is then not the mean of anything, and must be folded again without that party.
    """
    _check_same_layout(per_party)
    first = per_party[0][2]
    with torch.no_grad():
        for index, (name, offset, _) in enumerate(first):
            out = target[name].view(-1)[offset : offset + first[index][2].numel()]
            if not out.is_floating_point():
                out.copy_(first[index][2])  # counters (e.g. BatchNorm's) are not averaged
                continue
            for k, (_pid, weight, slices) in enumerate(per_party):
                piece = slices[index][2]
                if k == 0:
                    torch.mul(piece, weight, out=out)
                else:
                    out.add_(piece, alpha=weight)
            # A non-finite value in any piece makes the folded slice, hence its sum, non-finite: one
            # reduction over the result replaces a full isfinite pass (and a bool buffer) per party.
            # Only then are the pieces inspected, in party order, to name the sender.
            if not torch.isfinite(out.sum()):
                for pid, _, slices in per_party:
                    check_finite(pid, [slices[index]])
                if not torch.isfinite(out).all():  # finite pieces whose mean is not: beyond float range
                    raise FederationError(
                        f"the weighted mean of {name} overflows its dtype", ErrorCode.FEDERATION_NON_FINITE
                    )


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """The median of each column of `stack` ([parties, values]); an even count averages the middle two."""
    n = stack.shape[0]
    ordered = stack.sort(dim=0).values
    middle = n // 2
    if n % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def trimmed_mean(stack: torch.Tensor, ratio: float) -> torch.Tensor:
    """The mean of each column of `stack` without its int(ratio * n) largest and smallest values."""
    n = stack.shape[0]
    cut = int(ratio * n)
    ordered = stack.sort(dim=0).values if cut else stack
    return ordered[cut : n - cut].mean(dim=0)


def krum_tolerance(n: int, byzantine: int | None) -> int | None:
    """How many Byzantine parties Krum tolerates among `n`: `byzantine`, by default the largest f
    with n > 2f + 2; None when `n` parties are too few for it (Krum needs n > 2f + 2)."""
    f = byzantine if byzantine is not None else (n - 3) // 2
    return f if 0 <= f and n > 2 * f + 2 else None


def krum_scores(distances: torch.Tensor, f: int) -> torch.Tensor:
    """Each party's Krum score: the sum of its squared distances to its n - f - 2 nearest others."""
    n = distances.shape[0]
    others = distances.clone()
    others.fill_diagonal_(float("inf"))
    return others.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum_choice(distances: torch.Tensor, f: int) -> int:
    """The index of the party Krum chooses (the lowest score; on a tie, the first party)."""
    return int(torch.argmin(krum_scores(distances, f)))


def accumulate_distances(distances: torch.Tensor, stack: torch.Tensor) -> None:
    """Add the squared euclidean distances between the rows of `stack` to `distances` (n x n)."""
    for i in range(stack.shape[0]):
        distances[i] += (stack - stack[i]).pow_(2).sum(dim=1)


def _robust_slices(
    target: dict[str, torch.Tensor],
    per_party: Sequence[PartySlices],
    statistic: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Write `statistic` of the parties' values, coordinate by coordinate, into `target` (one shard)."""
    _check_same_layout(per_party)
    first = per_party[0][2]
    with torch.no_grad():
        for index, (name, offset, piece) in enumerate(first):
            out = target[name].view(-1)[offset : offset + piece.numel()]
            if not out.is_floating_point():
                out.copy_(piece)
                continue
            stack = torch.stack([slices[index][2] for _, _, slices in per_party]).to(torch.float64)
            out.copy_(statistic(stack))


def combine(
    target: dict[str, torch.Tensor],
    layout: Layout,
    sources: Mapping[str, Source],
    weights: Mapping[str, float],
    hp: RunHyperparameters,
    chunk_bytes: int,
) -> str | None:
    """Write the aggregate of the parties' updates into `target` by the run's rule, reading each
    party's update (`sources`, in participant order) a slice of at most `chunk_bytes` at a time.

    `weights` are the mean's (the others count every party once). Returns the party Krum chose
    (None for the other rules). The updates must have been checked finite as they arrived
    (`check_finite`, or `fold_slices` for the mean)."""
    pids = list(sources)
    if not pids:
        raise FederationError("no update to aggregate", ErrorCode.FEDERATION_TOO_FEW_UPDATES)
    plan = layout.plan(chunk_bytes)

    def slices(pid: str, pieces: list[Slice]) -> Slices:
        return [(s.name, s.offset, sources[pid].read(s.name, s.offset, s.count)) for s in pieces]

    if hp.aggregation == "krum":
        f = krum_tolerance(len(pids), hp.byzantine)
        if f is None:
            raise FederationError(
                f"krum with byzantine={hp.byzantine} needs more than 2f + 2 updates; this round has {len(pids)}",
                ErrorCode.FEDERATION_TOO_FEW_UPDATES,
            )
        floating = {name for name, dtype, _ in layout.entries if dtype.is_floating_point}
        distances = torch.zeros(len(pids), len(pids), dtype=torch.float64)
        for pieces in plan:
            for piece in pieces:
                if piece.name in floating:
                    values = [sources[p].read(piece.name, piece.offset, piece.count) for p in pids]
                    accumulate_distances(distances, torch.stack(values).to(torch.float64))
        chosen = pids[krum_choice(distances, f)]
        for pieces in plan:
            write_slices(target, slices(chosen, pieces))
        return chosen
    for pieces in plan:
        per_party = [(pid, weights.get(pid, 0.0), slices(pid, pieces)) for pid in pids]
        if hp.aggregation == "mean":
            fold_slices(target, per_party)
        elif hp.aggregation == "median":
            _robust_slices(target, per_party, coordinate_median)
        else:
            _robust_slices(target, per_party, partial(trimmed_mean, ratio=hp.trim_ratio))
    return None


def sample_weights(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    if total <= 0:
        raise FederationError("no participant reported training samples", ErrorCode.FEDERATION_NO_SAMPLES)
    return {pid: n / total for pid, n in counts.items()}


class EarlyStopping:
    """Stop when the monitored loss has not improved by more than `delta` for `patience` checks."""

    def __init__(self, patience: int, delta: float) -> None:
        self.patience = patience
        self.delta = delta
        self.best = float("inf")
        self.stale = 0

    def step(self, loss: float | None) -> bool:
        if loss is None or not self.patience:
            return False
        if loss < self.best - self.delta:
            self.best, self.stale = loss, 0
            return False
        self.stale += 1
        return self.stale >= self.patience
