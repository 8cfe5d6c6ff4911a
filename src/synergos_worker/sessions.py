"""Federation sessions on a Worker, one per (collaboration, project, experiment, run)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synergos_core.data import align_columns, apply_spacers, class_indices, load_meta, train_statistics
from synergos_core.errors import ErrorCode, InvalidRequest, NotFound
from synergos_core.federation import ReplayGuard, run_name
from synergos_core.gkt import GKTTrainer
from synergos_core.preprocessing import Preprocessing
from synergos_core.schemas import METAS, InitialiseRequest
from synergos_core.training import LocalTrainer, Split

log = logging.getLogger(__name__)
RunKey = tuple[str, str, str, str]


@dataclass
class RunSession:
    key: RunKey
    token: str
    participant_id: str
    action: str
    trainer: LocalTrainer
    counts: dict[str, int]
    results: dict[str, Any] = field(default_factory=dict)
    connection: Any = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # the nonces and round seen on any connection of this session: a message captured on one
    # connection is refused on the next as on the same one
    guard: ReplayGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = ReplayGuard(run_name(*self.key))

    def authorised(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())


def run_preprocessing(data_root: Path, request: InitialiseRequest) -> Preprocessing | None:
    """The statistics every split of this run is preprocessed with: the project's, as the TTP sent
    them, else (a run aligned without statistics) this party's own train split's."""
    if request.preprocessing is not None:
        return request.preprocessing
    own = train_statistics(data_root, request.tags.train, request.action)
    return Preprocessing(source="local", statistics=own) if own is not None else None


def load_split(
    data_root: Path, meta: str, request: InitialiseRequest, preprocessing: Preprocessing | None = None
) -> Split | None:
    """Load one meta's data, preprocessed with the run's statistics and aligned to the superset."""
    tags = getattr(request.tags, meta)
    prepared = load_meta(data_root, tags, request.action, preprocessing)
    if prepared is None:
        return None
    X, y = prepared.X, prepared.y
    spacers = request.alignments.get(meta)
    if request.superset is not None and X.ndim == 2 and request.superset.X:
        # by name: imputing with the project's most frequent category can add an indicator column
        # this split did not have when its headers were polled
        X = align_columns(X, prepared.x_headers, request.superset.X)
        y = align_columns(y, prepared.y_headers, request.superset.y) if request.action == "classify" else y
    elif spacers is not None:
        X = apply_spacers(X, spacers.X)
        y = apply_spacers(y, spacers.y)
    if X.ndim == 2 and not np.isfinite(X).all():
        raise InvalidRequest(f"{meta} data holds non-finite values after preprocessing", ErrorCode.DATASET_INVALID)
    if request.action == "classify":
        target = torch.from_numpy(class_indices(y).astype(np.int64))
    else:
        target = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).reshape(len(y), -1)
    return Split(
        torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)),
        target,
        target_shift=prepared.target_shift,
        target_scale=prepared.target_scale,
    )


class SessionRegistry:
    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self._sessions: dict[RunKey, RunSession] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def get(self, key: RunKey) -> RunSession:
        session = self._sessions.get(key)
        if session is None:
            raise NotFound(f"no federation session for run {'/'.join(key)}", ErrorCode.SESSION_NOT_FOUND)
        return session

    def count(self) -> int:
        return len(self._sessions)

    def find(self, key: RunKey) -> RunSession | None:
        return self._sessions.get(key)

    def open(self, key: RunKey, request: InitialiseRequest) -> tuple[RunSession, bool]:
        """Create the session (loading and aligning data); the same token again is a no-op."""
        existing = self._sessions.get(key)
        if existing is not None and existing.authorised(request.token):
            return existing, False
        preprocessing = run_preprocessing(self.data_root, request)
        data = {
            meta: split
            for meta in METAS
            if (split := load_split(self.data_root, meta, request, preprocessing)) is not None
        }
        if "train" not in data and "evaluate" not in data and "predict" not in data:
            raise InvalidRequest("no data selected by this participant's tags", ErrorCode.DATASET_EMPTY)
        trainer_class = GKTTrainer if request.hyperparameters.get("algorithm") == "FedGKT" else LocalTrainer
        trainer = trainer_class(
            [layer.model_dump() for layer in request.model], request.hyperparameters, request.action, data
        )
        session = RunSession(
            key=key,
            token=request.token,
            participant_id=request.participant_id,
            action=request.action,
            trainer=trainer,
            counts={meta: len(split) for meta, split in data.items()},
        )
        if existing is not None:
            self._drop(existing)
        self._sessions[key] = session
        log.info(
            "session opened for run %s (%s)", "/".join(key), ", ".join(f"{m}={n}" for m, n in session.counts.items())
        )
        return session, True

    def close(self, key: RunKey) -> RunSession:
        session = self.get(key)
        self._drop(session)
        del self._sessions[key]
        log.info("session closed for run %s", "/".join(key))
        return session

    def _drop(self, session: RunSession) -> None:
        if session.connection is not None:
            closing = asyncio.ensure_future(session.connection.close(1001, "session closed"))
            self._closing.add(closing)  # held until done: a task nobody references may be collected
            closing.add_done_callback(self._closing.discard)
            session.connection = None

    def close_all(self) -> None:
        for key in list(self._sessions):
            self.close(key)
