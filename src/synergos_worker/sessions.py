"""Federation sessions on a Worker, one per (collaboration, project, experiment, run).

A session is a lease: one that has no open channel and has seen no TTP traffic (an initialise,
a message, its channel closing) for `FederationLimits.session_lease_s` expires (`expire`), and
its data and model are freed, so a TTP that died or froze leaks nothing here. An open channel
keeps its session: the channel's keepalive closes it when the TTP stops answering.

Sessions are opened on a thread (loading data takes time) and their channels live on the
federation server's event loop: closing a channel from a thread is handed to that loop
(`bind`). A run whose session is live (its channel open) is not taken over by an initialise
with another token (409 `session.busy`, the run named); a stale one is replaced."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synergos_core.data import align_columns, apply_spacers, class_indices, load_meta, train_statistics
from synergos_core.errors import Conflict, ErrorCode, InvalidRequest, NotFound
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
    # when the TTP was last heard from (monotonic): the lease runs from here while no channel is open
    last_seen: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.guard = ReplayGuard(run_name(*self.key))

    def authorised(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def touch(self) -> None:
        """The TTP was heard from: the lease starts again."""
        self.last_seen = time.monotonic()

    def idle_s(self, now: float | None = None) -> float:
        """Seconds since the TTP was last heard from, 0 while a channel is open."""
        if self.connection is not None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.last_seen


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
        self._closing: set[asyncio.Future[None] | concurrent.futures.Future[None]] = set()
        self._lock = threading.RLock()  # sessions are opened on threads, used on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the federation server's: channels live there

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the sessions' channels run on (the federation server's)."""
        self._loop = loop

    def get(self, key: RunKey) -> RunSession:
        session = self._sessions.get(key)
        if session is None:
            raise NotFound(f"no federation session for run {'/'.join(key)}", ErrorCode.SESSION_NOT_FOUND)
        return session

    def count(self) -> int:
        return len(self._sessions)

    def find(self, key: RunKey) -> RunSession | None:
        return self._sessions.get(key)

    def _refuse_takeover(self, key: RunKey, request: InitialiseRequest) -> RunSession | None:
        """The session of `key` if `request` may reuse it (its token); 409 if another live session
        holds the run; None if there is none, or only a stale one (no open channel) to replace."""
        existing = self._sessions.get(key)
        if existing is None:
            return None
        if existing.authorised(request.token):
            existing.touch()
            return existing
        if existing.connection is not None:
            raise Conflict(
                f"run {'/'.join(key)} is already in progress on this node, under another session whose channel "
                "is open: wait for it to end (or terminate it) before starting the run again",
                ErrorCode.SESSION_BUSY,
            )
        return None

    def open(self, key: RunKey, request: InitialiseRequest) -> tuple[RunSession, bool]:
        """Create the session (loading and aligning data); the same token again is a no-op. Another
        token replaces a stale session of the run, and is refused (409) while one is live."""
        with self._lock:
            reused = self._refuse_takeover(key, request)
        if reused is not None:
            return reused, False
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
        with self._lock:  # the run may have been taken while the data loaded
            reused = self._refuse_takeover(key, request)
            if reused is not None:
                return reused, False
            existing = self._sessions.get(key)
            if existing is not None:
                self._drop(existing)
            self._sessions[key] = session
        log.info(
            "session opened for run %s (%s)", "/".join(key), ", ".join(f"{m}={n}" for m, n in session.counts.items())
        )
        return session, True

    def close(self, key: RunKey, token: str | None = None) -> RunSession:
        """End the session of `key`; with `token`, only if it is the session that token opened (a
        TTP ending its run never ends a newer session of the same run)."""
        with self._lock:
            session = self.get(key)
            if token is not None and not session.authorised(token):
                raise NotFound(
                    f"no federation session for run {'/'.join(key)} opened with that token", ErrorCode.SESSION_NOT_FOUND
                )
            self._drop(session)
            del self._sessions[key]
        log.info("session closed for run %s", "/".join(key))
        return session

    def expire(self, lease_s: float) -> list[RunKey]:
        """End the sessions without an open channel that have not heard from the TTP for `lease_s`
        seconds; returns their keys."""
        now = time.monotonic()
        with self._lock:
            stale = [key for key, session in self._sessions.items() if session.idle_s(now) > lease_s]
            for key in stale:
                self._drop(self._sessions.pop(key))
        for key in stale:
            log.warning(
                "session of run %s expired: no TTP traffic for %.0f s (its data and model are freed)",
                "/".join(key),
                lease_s,
            )
        return stale

    def _drop(self, session: RunSession) -> None:
        """Close the session's channel, on the loop it lives on, whichever thread this runs on."""
        connection, session.connection = session.connection, None
        if connection is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a thread without a loop (an initialise replacing a stale session)
            running = None
        closing: asyncio.Future[None] | concurrent.futures.Future[None]
        if running is not None:
            closing = running.create_task(connection.close(1001, "session closed"))
        elif self._loop is not None and not self._loop.is_closed():
            closing = asyncio.run_coroutine_threadsafe(connection.close(1001, "session closed"), self._loop)
        else:
            return  # no loop runs the channel any more: nothing is left to close
        self._closing.add(closing)  # held until done: a task nobody references may be collected
        closing.add_done_callback(self._closing.discard)

    def close_all(self) -> None:
        for key in list(self._sessions):
            self.close(key)
