"""Server-side aggregation: the sample-weighted mean of the parties' weights (FedAvg, FedProx).

Updates are folded in shard by shard, always in participant order, so the result does not
depend on which party answered first and the same seed gives the same model bit for bit.
"""

from __future__ import annotations

import torch

from .errors import ErrorCode, FederationError


def fold_slices(
    target: dict[str, torch.Tensor], per_party: list[tuple[str, float, list[tuple[str, int, torch.Tensor]]]]
) -> None:
    """Write sum_k w_k * slice_k into `target` for one shard index.

    `per_party` is [(participant_id, weight, decoded slices)] in participant order; every party's
    shard holds the same slices because both sides plan shards from the same layout.
    """
    first_pid, _, first = per_party[0]
    for pid, _, slices in per_party[1:]:
        if [(n, o, t.numel()) for n, o, t in slices] != [(n, o, t.numel()) for n, o, t in first]:
            raise FederationError(
                f"{pid}'s update is laid out differently from {first_pid}'s", ErrorCode.FEDERATION_BAD_UPDATE
            )
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
                    if not torch.isfinite(slices[index][2]).all():
                        raise FederationError(
                            f"{pid} sent non-finite weights for {name}", ErrorCode.FEDERATION_BAD_UPDATE
                        )


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
