"""A training's checkpoints on the TTP, and resuming from them.

After each round, `checkpoints/round_<r>/` receives the global model (`global_model.safetensors`),
the loss histories (`global_loss_history.json`) and what the loop needs to carry on exactly
(`state.json`: the round, the parties' local histories, early stopping's best loss and patience
count, the replies left out so far), then a manifest of their SHA-256 digests, written last and
atomically: a folder without a manifest, or whose files do not match it, is skipped (with a
warning) for the one before it. The newest `keep` rounds are kept, and the best one (the lowest
evaluate loss known), the others deleted as each new round is sealed.

A run resumes (`Checkpoints.resume`) from the newest complete checkpoint: a basic TTP for a run
whose training was interrupted (`Recovery.resume=True`), a cluster TTP for a job delivered again
after its TTP stopped (`resume=None`: only a checkpoint that job itself wrote). The first round
after it asks every party to restore the training state it kept after that round (`Train.
resume_from`, see `synergos_worker.resume`), so the run ends as an uninterrupted one would. A
training that starts from round 0 clears the run's old checkpoints first.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synergos_core.aggregation import EarlyStopping
from synergos_core.checkpoints import (
    latest_checkpoint,
    load_state,
    retain_checkpoints,
    round_folder,
    round_folders,
    save_state,
    write_atomic,
    write_manifest,
)
from synergos_core.errors import InvalidRequest
from synergos_core.records import Exclusion
from synergos_core.wire import Layout

log = logging.getLogger(__name__)
MODEL_FILE = "global_model.safetensors"
HISTORY_FILE = "global_loss_history.json"
STATE_FILE = "state.json"
History = dict[str, dict[int, float]]


@dataclass(frozen=True)
class Recovery:
    """How one training writes its checkpoints and whether it resumes from them."""

    keep: int = 2  # the newest rounds' checkpoints kept, besides the best
    job_id: str | None = None  # written into every manifest
    # True: from the newest complete checkpoint; None: only from one `job_id` wrote (a job delivered
    # again); False: from round 0, the run's old checkpoints cleared first
    resume: bool | None = False


@dataclass
class Resumed:
    """What a checkpoint gives back: training continues at round `round + 1`."""

    round: int
    state: dict[str, torch.Tensor]
    history: History
    local_history: History
    best: float
    stale: int
    exclusions: list[Exclusion]


@dataclass(frozen=True)
class Snapshot:
    """A round's progress, frozen when the round ends (the loop goes on changing it while the
    checkpoint is written in the background)."""

    round: int
    history_json: str
    state_json: str
    best: int | None  # the round with the lowest evaluate loss so far


def best_round(history: Mapping[str, Mapping[int, float]]) -> int | None:
    losses = history.get("evaluate") or {}
    return min(losses, key=lambda r: (losses[r], r)) if losses else None


def _rounds(table: Mapping[str, Any]) -> dict[int, float]:
    return {int(r): float(v) for r, v in table.items()}


class Checkpoints:
    """The checkpoints of one training, in `<run outputs>/checkpoints`."""

    def __init__(
        self, out_dir: Path, recovery: Recovery, run: str, progress: Callable[..., None] | None = None
    ) -> None:
        self.root = out_dir / "checkpoints"
        self.recovery = recovery
        self.run = run
        self.progress = progress

    def resume(self, layout: Layout) -> Resumed | None:
        """The newest complete checkpoint to carry on from, or None (a training from round 0, whose
        run's old checkpoints are cleared)."""
        if self.recovery.resume is not False:
            found = self._latest(layout)
            if found is not None:
                return found
            if self.recovery.resume:
                log.warning("run %s: no complete checkpoint to resume from; training starts at round 1", self.run)
        self.clear()
        return None

    def clear(self) -> None:
        """Forget the run's checkpoints (a training from round 0)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _latest(self, layout: Layout) -> Resumed | None:
        job_id = self.recovery.job_id
        accept = None if self.recovery.resume else (lambda manifest: manifest.get("job_id") == job_id)
        found = latest_checkpoint(self.root, accept)
        if found is None:
            return None
        round_index, folder, _manifest = found
        try:
            state = load_state(folder / MODEL_FILE, layout)
            saved = json.loads((folder / STATE_FILE).read_text())
            resumed = Resumed(
                round=round_index,
                state=state,
                history={name: _rounds(table) for name, table in saved["history"].items()},
                local_history={pid: _rounds(table) for pid, table in saved["local_history"].items()},
                best=math.inf if saved["stopper"]["best"] is None else float(saved["stopper"]["best"]),
                stale=int(saved["stopper"]["stale"]),
                exclusions=[Exclusion.model_validate(e) for e in saved["exclusions"]],
            )
        except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
            reason = exc.detail if isinstance(exc, InvalidRequest) else type(exc).__name__
            log.warning(
                "run %s: checkpoint %s cannot be resumed from (%s); training starts at round 1",
                self.run,
                folder,
                reason,
            )
            return None
        for later, stale in round_folders(self.root):  # the interrupted attempt's rounds: trained again
            if later > round_index:
                shutil.rmtree(stale, ignore_errors=True)
        log.warning("run %s resumes from its checkpoint of round %d (%s)", self.run, round_index + 1, folder)
        if self.progress is not None:
            self.progress(rounds_checkpointed=round_index + 1, resumed_after=round_index + 1)
        return resumed

    @staticmethod
    def snapshot(
        round_index: int,
        history: History,
        local_history: History,
        stopper: EarlyStopping,
        exclusions: list[Exclusion],
    ) -> Snapshot:
        state = {
            "round": round_index,
            "history": history,
            "local_history": local_history,
            "stopper": {"best": stopper.best if math.isfinite(stopper.best) else None, "stale": stopper.stale},
            "exclusions": [e.model_dump(mode="json") for e in exclusions],
        }
        return Snapshot(
            round_index, json.dumps(history, indent=2), json.dumps(state, allow_nan=False), best_round(history)
        )

    def write(self, snapshot: Snapshot, state: dict[str, torch.Tensor]) -> None:
        """Write and seal round `snapshot.round`'s checkpoint, then keep the newest and the best."""
        folder = round_folder(self.root, snapshot.round)
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted attempt's, if any
        save_state(state, folder / MODEL_FILE)
        write_atomic(folder / HISTORY_FILE, snapshot.history_json.encode())
        write_atomic(folder / STATE_FILE, snapshot.state_json.encode())
        write_manifest(folder, {"round": snapshot.round, "run": self.run, "job_id": self.recovery.job_id})
        retain_checkpoints(self.root, self.recovery.keep, snapshot.best)
        if self.progress is not None:
            self.progress(rounds_checkpointed=snapshot.round + 1)
