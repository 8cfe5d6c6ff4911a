"""A Worker's share of a resumable run. After each round's local training the party keeps its
training state (optimizer, scheduler, step counters and batch-shuffling generator:
`LocalTrainer.training_state`) under `<outputs>/<c>/<p>/<e>/<r>/checkpoints/round_<r>/`, as
safetensors plus JSON sealed by a manifest of SHA-256 digests, for the newest
`keep_checkpoints + 1` rounds (the TTP keeps `keep_checkpoints`; the party may be a round ahead
of it). A resumed run's first `Train` names the round to restore (`resume_from`): the party
carries on exactly as if the run had never stopped. Without a usable state for that round (this
node did not train the earlier rounds, or its outputs are gone) it says so in its log and starts
its optimizer and scheduler over: the run goes on, but is no longer bit-identical."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from synergos_core.checkpoints import (
    CheckpointError,
    load_packed,
    read_manifest,
    retain_checkpoints,
    round_folder,
    round_folders,
    save_packed,
    write_manifest,
)
from synergos_core.federation import run_name
from synergos_core.schemas import RunHyperparameters

from .sessions import RunSession

log = logging.getLogger(__name__)
STATE = "training_state"
DEFAULT_KEEP = 2  # the TTP's default, for a run that names none (the TTP fills in its own)


def checkpoints(outputs: Path, session: RunSession) -> Path:
    return outputs.joinpath(*session.key, "checkpoints")


def _forget_after(root: Path, round_index: int) -> None:
    """States of rounds after `round_index`: an interrupted attempt's, to be trained again."""
    for later, folder in round_folders(root):
        if later > round_index:
            shutil.rmtree(folder, ignore_errors=True)


def keep(outputs: Path, session: RunSession, round_index: int) -> None:
    """Seal this party's training state after its training of `round_index`, and keep the newest."""
    root = checkpoints(outputs, session)
    if round_index == 0:  # a run trained from the start: a previous attempt's states are void
        shutil.rmtree(root, ignore_errors=True)
    state = session.trainer.training_state()
    if state is None:
        return
    folder = round_folder(root, round_index)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        save_packed(folder, STATE, state)
    except TypeError as exc:  # a state that only pickle could keep: this run cannot resume exactly
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("run %s: training state of round %d not kept: %s", run_name(*session.key), round_index, exc)
        return
    write_manifest(folder, {"round": round_index, "run": run_name(*session.key)})
    hp = RunHyperparameters.of(session.trainer.hp)
    retain_checkpoints(root, (hp.keep_checkpoints or DEFAULT_KEEP) + 1)


def restore(outputs: Path, session: RunSession, round_index: int) -> bool:
    """Carry on from the state kept after `round_index` (a resumed run); False (and a warning)
    when there is none to use, and the party's optimizer and scheduler start over."""
    root = checkpoints(outputs, session)
    folder = round_folder(root, round_index)
    try:
        read_manifest(folder)
        session.trainer.restore_training_state(load_packed(folder, STATE))
    except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        log.warning(
            "run %s resumes after round %d without this party's training state there (%s): its optimizer, "
            "scheduler and batch shuffling start over, so the run is no longer exactly an uninterrupted one",
            run_name(*session.key),
            round_index,
            exc if isinstance(exc, CheckpointError) else type(exc).__name__,
        )
        return False
    finally:
        _forget_after(root, round_index)
    log.info("run %s: resumed after round %d with this party's training state", run_name(*session.key), round_index)
    return True
