"""The Director's job journal: every job it accepts, written to its metadata store before anything
is published, so that a job waiting for another (training for its alignment, validation for its
training) waits in the database, not only in memory.

    waiting    accepted; published once what it waits for completes
    published  on the MQ (confirmed by the broker); a TTP runs it and reports on `completed`
    completed | failed   archived (or failed because what it waited for failed)

A restarted Director reads the journal back (`QueueOrchestrator` at start-up): the job board shows
every journaled job again, open jobs are tracked again, and waiting jobs whose dependencies have
completed meanwhile are published. A job is rebuilt from the store when it is published
(`rebuild`: the same planning functions that planned it), as it always is, so it carries the model
as its alignment resized it. The table (`director_jobs`) is the Director's own, created beside the
store's tables; finished jobs are forgotten after `KEEP_FINISHED_DAYS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from synergos_contract import planning
from synergos_contract.planning import PlannedJob
from synergos_contract.store import Store

KEEP_FINISHED_DAYS = 7
OPEN_STATES = ("waiting", "published")
FINAL_STATES = ("completed", "failed")


class _Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class _JobRow(_Base):
    __tablename__ = "director_jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # submission order
    job_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # alignment | training | validation | prediction
    process: Mapped[str] = mapped_column(String(32))  # preprocess | train | evaluate
    keys: Mapped[dict[str, str]] = mapped_column(JSON)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. an alignment's options
    marks: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    waits_for: Mapped[list[str]] = mapped_column(JSON, default=list)
    rounds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class JournaledJob:
    """A journal row, detached from its session."""

    seq: int
    job_id: str
    kind: str
    process: str
    keys: dict[str, str]
    recipe: dict[str, Any]
    marks: tuple[tuple[str, ...], ...]
    waits_for: tuple[str, ...]
    rounds: int | None
    state: str
    detail: str | None
    created_at: datetime

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


def _detached(row: _JobRow) -> JournaledJob:
    return JournaledJob(
        seq=row.seq,
        job_id=row.job_id,
        kind=row.kind,
        process=row.process,
        keys=dict(row.keys),
        recipe=dict(row.recipe or {}),
        marks=tuple(tuple(m) for m in row.marks or []),
        waits_for=tuple(row.waits_for or []),
        rounds=row.rounds,
        state=row.state,
        detail=row.detail,
        created_at=row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC),
    )


class Journal:
    """The `director_jobs` table of the Director's store. Each call is its own short transaction."""

    def __init__(self, engine: Engine) -> None:
        _Base.metadata.create_all(engine)
        self._reads = engine
        # the store's engine takes SQLite's write lock up front for these (BEGIN IMMEDIATE)
        self._writes = engine.execution_options(synergos_write=True)

    def add(
        self,
        job_id: str,
        kind: str,
        process: str,
        keys: dict[str, str],
        *,
        recipe: dict[str, Any] | None = None,
        marks: Sequence[Sequence[str]] = (),
        waits_for: Sequence[str] = (),
        rounds: int | None = None,
    ) -> None:
        with Session(self._writes) as session, session.begin():
            session.add(
                _JobRow(
                    job_id=job_id,
                    kind=kind,
                    process=process,
                    keys=dict(keys),
                    recipe=dict(recipe or {}),
                    marks=[list(m) for m in marks],
                    waits_for=list(waits_for),
                    rounds=rounds,
                    state="waiting",
                )
            )

    def set_state(self, job_id: str, state: str, detail: str | None = None) -> None:
        if state not in OPEN_STATES + FINAL_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with Session(self._writes) as session, session.begin():
            session.execute(
                update(_JobRow).where(_JobRow.job_id == job_id).values(state=state, detail=detail, updated_at=_now())
            )

    def get(self, job_id: str) -> JournaledJob | None:
        with Session(self._reads) as session:
            row = session.scalars(select(_JobRow).where(_JobRow.job_id == job_id)).first()
            return _detached(row) if row is not None else None

    def recent(self, limit: int) -> list[JournaledJob]:
        """Every open job, and the newest finished ones up to `limit` jobs in all; oldest first."""
        with Session(self._reads) as session:
            open_rows = list(session.scalars(select(_JobRow).where(_JobRow.state.in_(OPEN_STATES))))
            room = max(0, limit - len(open_rows))
            finished = list(
                session.scalars(
                    select(_JobRow).where(_JobRow.state.in_(FINAL_STATES)).order_by(_JobRow.seq.desc()).limit(room)
                )
            )
            return [_detached(row) for row in sorted(open_rows + finished, key=lambda r: r.seq)]

    def states(self) -> dict[str, str]:
        """Every journaled job's state, by job id."""
        with Session(self._reads) as session:
            return {job_id: state for job_id, state in session.execute(select(_JobRow.job_id, _JobRow.state))}

    def prune(self, older_than_days: float = KEEP_FINISHED_DAYS) -> int:
        """Forget finished jobs last changed more than `older_than_days` ago; returns how many."""
        cutoff = _now() - timedelta(days=older_than_days)
        with Session(self._writes) as session, session.begin():
            result = session.execute(
                delete(_JobRow).where(_JobRow.state.in_(FINAL_STATES), _JobRow.updated_at < cutoff)
            )
            return int(getattr(result, "rowcount", 0) or 0)


def _always_pending(_mark: planning.Mark) -> bool:
    return True  # what a journaled job waited for was planned already: the plan may count on it


def rebuild(store: Store, job: JournaledJob) -> PlannedJob:
    """Plan a journaled job again, with the planning function that first planned it: its `build`
    makes the job from the store as it is now. Raises what planning raises when the job cannot
    be made any more (its run deleted, say); the job then fails with that reason."""
    keys = job.keys
    c, p = keys["collab_id"], keys["project_id"]
    if job.kind == "alignment":
        return planning.plan_alignment(
            store, c, p, bool(job.recipe.get("auto_fix", True)), job.recipe.get("preprocessing")
        )
    e, r = keys["expt_id"], keys["run_id"]
    if job.kind == "training":
        planned = planning.plan_training(store, c, p, e, r, auto_align=False)
    elif job.kind == "validation":
        planned = planning.plan_validation(store, c, p, e, r, keys.get("participant_id"), _always_pending)
    elif job.kind == "prediction":
        planned = planning.plan_prediction(store, keys["participant_id"], c, {}, p, e, r, _always_pending)
    else:
        raise ValueError(f"journaled job {job.job_id} is of unknown kind {job.kind!r}")
    for item in planned:
        if item.kind == job.kind and item.keys == keys:
            return item
    raise ValueError(f"journaled job {job.job_id} ({job.kind} of {'/'.join(keys.values())}) plans to nothing now")
