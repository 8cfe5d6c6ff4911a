"""The TTP's metadata store: typed tables in, typed records (`synergos_core.records`) out.

A record read from the store carries `relations`, the records that belong to it (which carry
none of their own). Creating a record that exists already with the same details answers it as it
is (`Written.created` is False), so re-running a script works; other details are a 409 that says
to update it instead. Every method opens its own short
transaction, so one `Store` serves all request threads. SQLite (the default) runs in WAL mode
with foreign keys on and takes its write lock at `BEGIN IMMEDIATE`, so concurrent writers queue
on the busy timeout instead of failing half-way; PostgreSQL is used as given by its URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from synergos_core.errors import Conflict, ErrorCode, NotFound
from synergos_core.finite import json_safe
from synergos_core.records import (
    OPEN_JOB_STATES,
    RECORDS,
    Alignment,
    Collaboration,
    Experiment,
    Job,
    Model,
    Participant,
    Prediction,
    Project,
    Record,
    Registration,
    Run,
    Tags,
    Validation,
)

from .tables import (
    AGGREGATE,
    CASCADES,
    DELETE_ORDER,
    KINDS,
    TABLES,
    Base,
    JobRow,
    Kind,
    RegistrationNode,
    Tag,
    utcnow,
)
from .tables import Registration as RegistrationRow

__all__ = ["Store", "Written", "AGGREGATE"]

RESERVED = frozenset({"key", "created_at", "relations"})
METAS = ("train", "evaluate", "predict")
Validator = Callable[[dict[str, Any]], dict[str, Any]]
_SQLITE_BUSY_MS = 30_000
R = TypeVar("R", bound=Record, covariant=True)


@dataclass(frozen=True)
class Written(Generic[R]):
    """What a create answers: the record it wrote, or the same one it found (`created` False)."""

    record: R
    created: bool


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite keeps no offset


def describe(kind: Kind, key: dict[str, str]) -> str:
    """`project 'p1' (collab_id='c1')`: the record's own id first, then its scope."""
    own = kind.key[-1]
    scope = ", ".join(f"{column}={key[column]!r}" for column in kind.key if column != own)
    return f"{kind.code} {key[own]!r}" + (f" ({scope})" if scope else "")


def _matching(table: type[Base], key: dict[str, str]) -> list[Any]:
    return [getattr(table, column) == value for column, value in key.items()]


def _engine(db_url: str) -> Engine:
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_MS / 1000},
        **({"poolclass": StaticPool} if in_memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred BEGIN that later writes can fail at once with SQLITE_BUSY under WAL;
        # taking the write lock up front makes writers wait their turn instead.
        write = connection.get_execution_options().get("synergos_write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Store:
    """Metadata of collaborations, projects, experiments, runs, participants and their results."""

    def __init__(self, db_url: str) -> None:
        self.engine = _engine(db_url)
        Base.metadata.create_all(self.engine)
        self._reads = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writes = sessionmaker(bind=self.engine.execution_options(synergos_write=True), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reads.begin() as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writes.begin() as session:
            yield session

    # ---- collaborations ----

    def create_collaboration(self, collab_id: str, details: dict[str, Any]) -> Written[Collaboration]:
        return self._create("Collaboration", {"collab_id": collab_id}, details)

    def get_collaboration(self, collab_id: str) -> Collaboration:
        return self._get("Collaboration", {"collab_id": collab_id})

    def list_collaborations(self) -> list[Collaboration]:
        return self._list("Collaboration", {})

    def update_collaboration(
        self, collab_id: str, changes: dict[str, Any], validate: Validator | None = None
    ) -> Collaboration:
        return self._update("Collaboration", {"collab_id": collab_id}, changes, validate)

    def delete_collaboration(self, collab_id: str) -> Collaboration:
        return self._delete("Collaboration", {"collab_id": collab_id})

    # ---- projects ----

    def create_project(self, collab_id: str, project_id: str, details: dict[str, Any]) -> Written[Project]:
        return self._create("Project", {"collab_id": collab_id, "project_id": project_id}, details)

    def get_project(self, collab_id: str, project_id: str) -> Project:
        return self._get("Project", {"collab_id": collab_id, "project_id": project_id})

    def list_projects(self, collab_id: str) -> list[Project]:
        return self._list("Project", {"collab_id": collab_id})

    def update_project(
        self, collab_id: str, project_id: str, changes: dict[str, Any], validate: Validator | None = None
    ) -> Project:
        return self._update("Project", {"collab_id": collab_id, "project_id": project_id}, changes, validate)

    def delete_project(self, collab_id: str, project_id: str) -> Project:
        return self._delete("Project", {"collab_id": collab_id, "project_id": project_id})

    # ---- experiments ----

    def create_experiment(
        self, collab_id: str, project_id: str, expt_id: str, details: dict[str, Any]
    ) -> Written[Experiment]:
        return self._create("Experiment", _expt(collab_id, project_id, expt_id), details)

    def get_experiment(self, collab_id: str, project_id: str, expt_id: str) -> Experiment:
        return self._get("Experiment", _expt(collab_id, project_id, expt_id))

    def list_experiments(self, collab_id: str, project_id: str) -> list[Experiment]:
        return self._list("Experiment", {"collab_id": collab_id, "project_id": project_id})

    def update_experiment(
        self, collab_id: str, project_id: str, expt_id: str, changes: dict[str, Any], validate: Validator | None = None
    ) -> Experiment:
        return self._update("Experiment", _expt(collab_id, project_id, expt_id), changes, validate)

    def set_experiment_model(
        self, collab_id: str, project_id: str, expt_id: str, model: list[dict[str, Any]]
    ) -> Experiment:
        """Replace the experiment's layer list (alignment's auto-fix resizes the input and output)."""
        return self._update("Experiment", _expt(collab_id, project_id, expt_id), {"model": model}, None)

    def delete_experiment(self, collab_id: str, project_id: str, expt_id: str) -> Experiment:
        return self._delete("Experiment", _expt(collab_id, project_id, expt_id))

    # ---- runs (details: every hyper-parameter, and the optimization that made it, if any) ----

    def create_run(
        self, collab_id: str, project_id: str, expt_id: str, run_id: str, details: dict[str, Any]
    ) -> Written[Run]:
        return self._create("Run", _run(collab_id, project_id, expt_id, run_id), details)

    def get_run(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> Run:
        return self._get("Run", _run(collab_id, project_id, expt_id, run_id))

    def list_runs(self, collab_id: str, project_id: str, expt_id: str) -> list[Run]:
        return self._list("Run", _expt(collab_id, project_id, expt_id))

    def update_run(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str,
        run_id: str,
        changes: dict[str, Any],
        validate: Validator | None = None,
    ) -> Run:
        return self._update("Run", _run(collab_id, project_id, expt_id, run_id), changes, validate)

    def delete_run(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> Run:
        return self._delete("Run", _run(collab_id, project_id, expt_id, run_id))

    # ---- participants ----

    def create_participant(self, participant_id: str, details: dict[str, Any]) -> Written[Participant]:
        return self._create("Participant", {"participant_id": participant_id}, details)

    def get_participant(self, participant_id: str) -> Participant:
        return self._get("Participant", {"participant_id": participant_id})

    def list_participants(self) -> list[Participant]:
        return self._list("Participant", {})

    def update_participant(
        self, participant_id: str, changes: dict[str, Any], validate: Validator | None = None
    ) -> Participant:
        return self._update("Participant", {"participant_id": participant_id}, changes, validate)

    def delete_participant(self, participant_id: str) -> Participant:
        return self._delete("Participant", {"participant_id": participant_id})

    # ---- registrations (role in details, nodes in their own rows) ----

    def create_registration(
        self, collab_id: str, project_id: str, participant_id: str, role: str, nodes: list[dict[str, Any]]
    ) -> Written[Registration]:
        key = _reg(collab_id, project_id, participant_id)
        kind = KINDS["Registration"]
        with self._write() as s:
            existing = s.get(RegistrationRow, key)
            if existing is not None:
                return self._again(s, kind, key, existing, {"role": role}, nodes)
            self._require_lineage(s, kind, key)
            row = RegistrationRow(**key, details={"role": role}, created_at=utcnow())
            s.add(row)
            s.add_all(RegistrationNode(**key, node_index=i, **node) for i, node in enumerate(nodes))
            self._flush(s, kind, key)
            s.refresh(row)  # the record is what the store holds: its details as JSON
            return Written(self._record(s, kind, row), created=True)

    def get_registration(self, collab_id: str, project_id: str, participant_id: str) -> Registration:
        return self._get("Registration", _reg(collab_id, project_id, participant_id))

    def list_registrations(
        self, collab_id: str | None = None, project_id: str | None = None, participant_id: str | None = None
    ) -> list[Registration]:
        """Registrations filtered by whichever ids are given; each given scope must exist."""
        scope = {
            k: v
            for k, v in (("collab_id", collab_id), ("project_id", project_id), ("participant_id", participant_id))
            if v is not None
        }
        with self._read() as s:
            if participant_id is not None:
                self._load(s, KINDS["Participant"], {"participant_id": participant_id})
            if project_id is not None:
                self._load(s, KINDS["Project"], {"collab_id": str(collab_id), "project_id": project_id})
            elif collab_id is not None:
                self._load(s, KINDS["Collaboration"], {"collab_id": collab_id})
            return self._select(s, KINDS["Registration"], scope, relations=True)

    def update_registration(
        self,
        collab_id: str,
        project_id: str,
        participant_id: str,
        role: str | None = None,
        nodes: list[dict[str, Any]] | None = None,
    ) -> Registration:
        """Change the role and/or replace the whole node list."""
        key = _reg(collab_id, project_id, participant_id)
        kind = KINDS["Registration"]
        with self._write() as s:
            row = self._load(s, kind, key)
            if role is not None:
                row.details = {**row.details, "role": role}
            if nodes is not None:
                s.execute(
                    delete(RegistrationNode).where(*_matching(RegistrationNode, key)),
                    execution_options={"synchronize_session": False},
                )
                s.add_all(RegistrationNode(**key, node_index=i, **node) for i, node in enumerate(nodes))
            s.flush()
            s.refresh(row)  # the record is what the store holds: its details as JSON
            return self._record(s, kind, row)

    def delete_registration(self, collab_id: str, project_id: str, participant_id: str) -> Registration:
        return self._delete("Registration", _reg(collab_id, project_id, participant_id))

    # ---- tags ----

    def create_tags(
        self, collab_id: str, project_id: str, participant_id: str, details: dict[str, Any]
    ) -> Written[Tags]:
        return self._create("Tag", _reg(collab_id, project_id, participant_id), details)

    def get_tags(self, collab_id: str, project_id: str, participant_id: str) -> Tags:
        return self._get("Tag", _reg(collab_id, project_id, participant_id))

    def update_tags(
        self,
        collab_id: str,
        project_id: str,
        participant_id: str,
        changes: dict[str, Any],
        validate: Validator | None = None,
    ) -> Tags:
        return self._update("Tag", _reg(collab_id, project_id, participant_id), changes, validate)

    def delete_tags(self, collab_id: str, project_id: str, participant_id: str) -> Tags:
        return self._delete("Tag", _reg(collab_id, project_id, participant_id))

    # ---- the grid the orchestration drives ----

    def run_scope(
        self, collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None
    ) -> list[tuple[Experiment, Run]]:
        """(experiment, run) pairs a request covers: one run, an experiment's runs, or the project's."""
        experiments = (
            [self.get_experiment(collab_id, project_id, expt_id)]
            if expt_id
            else self.list_experiments(collab_id, project_id)
        )
        pairs: list[tuple[Experiment, Run]] = []
        for expt in experiments:
            runs = (
                [self.get_run(collab_id, project_id, expt.expt_id, run_id)]
                if run_id
                else self.list_runs(collab_id, project_id, expt.expt_id)
            )
            pairs.extend((expt, run) for run in runs)
        if not pairs:
            raise NotFound("nothing to do: no runs in this scope", ErrorCode.RUN_NOT_FOUND)
        return pairs

    def project_grid(self, collab_id: str, project_id: str) -> list[dict]:
        """One entry per registered participant (by participant_id): role, nodes in index order, tags,
        as a job's grids are made of them (`synergos_core.jobs.build_grids`)."""
        scope = {"collab_id": collab_id, "project_id": project_id}
        with self._read() as s:
            self._load(s, KINDS["Project"], scope)
            registrations = s.scalars(
                select(RegistrationRow)
                .where(*_matching(RegistrationRow, scope))
                .order_by(RegistrationRow.participant_id)
            ).all()
            nodes = s.scalars(
                select(RegistrationNode)
                .where(*_matching(RegistrationNode, scope))
                .order_by(RegistrationNode.participant_id, RegistrationNode.node_index)
            ).all()
            tags = {t.participant_id: t.details for t in s.scalars(select(Tag).where(*_matching(Tag, scope)))}
            grid = []
            for reg in registrations:
                declared = tags.get(reg.participant_id) or {}
                grid.append(
                    {
                        "participant_id": reg.participant_id,
                        "role": reg.details.get("role"),
                        "nodes": [n.as_dict() for n in nodes if n.participant_id == reg.participant_id],
                        "tags": {meta: list(declared.get(meta) or []) for meta in METAS},
                    }
                )
            return grid

    # ---- results written by alignment, training, validation and prediction (upserts) ----

    def put_alignment(self, collab_id: str, project_id: str, participant_id: str, details: dict[str, Any]) -> Alignment:
        return self._put("Alignment", _reg(collab_id, project_id, participant_id), details)

    def list_alignments(self, collab_id: str, project_id: str) -> list[Alignment]:
        return self._list("Alignment", {"collab_id": collab_id, "project_id": project_id})

    def put_model(self, collab_id: str, project_id: str, expt_id: str, run_id: str, details: dict[str, Any]) -> Model:
        return self._put("Model", _run(collab_id, project_id, expt_id, run_id), details)

    def list_models(
        self, collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None
    ) -> list[Model]:
        return self._list("Model", _scope(collab_id, project_id, expt_id, run_id))

    def put_validation(
        self, collab_id: str, project_id: str, expt_id: str, run_id: str, participant_id: str, details: dict[str, Any]
    ) -> Validation:
        """`participant_id` is a registered participant or `"aggregate"` (the sample-weighted aggregate)."""
        key = {**_run(collab_id, project_id, expt_id, run_id), "participant_id": participant_id}
        return self._put("Validation", key, details)

    def list_validations(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
    ) -> list[Validation]:
        scope = _scope(collab_id, project_id, expt_id, run_id)
        with self._read() as s:
            self._load_scope(s, scope)
            if participant_id is not None:
                if participant_id != AGGREGATE:
                    self._load(s, KINDS["Participant"], {"participant_id": participant_id})
                scope["participant_id"] = participant_id
            return self._select(s, KINDS["Validation"], scope, relations=True)

    def put_prediction(
        self, participant_id: str, collab_id: str, project_id: str, expt_id: str, run_id: str, details: dict[str, Any]
    ) -> Prediction:
        key = {"participant_id": participant_id, **_run(collab_id, project_id, expt_id, run_id)}
        return self._put("Prediction", key, details)

    def list_predictions(
        self,
        participant_id: str,
        collab_id: str,
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
    ) -> list[Prediction]:
        scope = _scope(collab_id, project_id, expt_id, run_id)
        with self._read() as s:
            self._load(s, KINDS["Participant"], {"participant_id": participant_id})
            self._load_scope(s, scope)
            return self._select(s, KINDS["Prediction"], {"participant_id": participant_id, **scope}, relations=True)

    # ---- jobs (the job board's, kept across restarts) ----

    def save_job(self, job: Job, keep: int = 5000) -> None:
        """Insert or update `job` by its id; past `keep` jobs, the oldest finished ones are forgotten."""
        details = job.model_dump(mode="json")
        with self._write() as s:
            row = s.scalars(select(JobRow).where(JobRow.job_id == job.job_id)).first()
            if row is None:
                row = JobRow(
                    job_id=job.job_id,
                    kind=job.kind,
                    collab_id=job.keys.get("collab_id"),
                    project_id=job.keys.get("project_id"),
                )
                s.add(row)
            row.state, row.details, row.updated_at = job.state, details, utcnow()
            s.flush()
            newest = s.scalar(select(func.max(JobRow.seq))) or 0
            if newest > keep:
                s.execute(
                    delete(JobRow).where(JobRow.seq <= newest - keep, JobRow.state.not_in(OPEN_JOB_STATES)),
                    execution_options={"synchronize_session": False},
                )

    def list_jobs(
        self, collab_id: str | None = None, project_id: str | None = None, limit: int | None = None
    ) -> list[Job]:
        """The jobs of a collaboration (and project), or all, in the order they started; with
        `limit`, the newest that many."""
        query = select(JobRow)
        if collab_id is not None:
            query = query.where(JobRow.collab_id == collab_id)
        if project_id is not None:
            query = query.where(JobRow.project_id == project_id)
        with self._read() as s:
            rows = s.scalars(query.order_by(JobRow.seq.desc()).limit(limit)).all()
            return [Job.model_validate(row.details) for row in reversed(rows)]

    # ---- the generic operations every kind shares ----

    def _create(self, name: str, key: dict[str, str], details: dict[str, Any]) -> Any:
        kind = KINDS[name]
        with self._write() as s:
            existing = s.get(kind.table, key)
            if existing is not None:
                return self._again(s, kind, key, existing, _clean(kind, details))
            self._require_lineage(s, kind, key)
            row = kind.table(**key, details=_clean(kind, details), created_at=utcnow())
            s.add(row)
            self._flush(s, kind, key)
            s.refresh(row)  # the record is what the store holds: its details as JSON
            return Written(self._record(s, kind, row), created=True)

    def _again(
        self,
        s: Session,
        kind: Kind,
        key: dict[str, str],
        row: Any,
        details: dict[str, Any],
        nodes: list[dict[str, Any]] | None = None,
    ) -> Written[Any]:
        """A create of a record that exists: the same body is the existing record (re-running a
        script works), a different one a 409 that says how to change it."""
        same = row.details == details
        if nodes is not None:
            stored = s.scalars(
                select(RegistrationNode).where(*_matching(RegistrationNode, key)).order_by(RegistrationNode.node_index)
            ).all()
            same = (
                same
                and len(stored) == len(nodes)
                and all(
                    {k: old.as_dict().get(k) for k in new} == dict(new) for old, new in zip(stored, nodes, strict=True)
                )
            )
        if not same:
            raise Conflict(
                f"{describe(kind, key)} already exists with other details: use update to change it "
                "(PUT, or the Driver's update), or delete it first",
                f"{kind.code}.exists",
            )
        return Written(self._record(s, kind, row), created=False)

    def _get(self, name: str, key: dict[str, str]) -> Any:
        kind = KINDS[name]
        with self._read() as s:
            return self._record(s, kind, self._load(s, kind, key))

    def _list(self, name: str, scope: dict[str, str]) -> Any:
        with self._read() as s:
            self._load_scope(s, scope)
            return self._select(s, KINDS[name], scope, relations=True)

    def _update(self, name: str, key: dict[str, str], changes: dict[str, Any], validate: Validator | None) -> Any:
        """Merge `changes` into the stored details; `validate` sees the merged details and may refuse them."""
        kind = KINDS[name]
        with self._write() as s:
            row = self._load(s, kind, key)
            merged = {**row.details, **changes}
            if validate is not None:
                merged = validate(merged)
            row.details = _clean(kind, merged)
            s.flush()
            s.refresh(row)  # the record is what the store holds: its details as JSON
            return self._record(s, kind, row)

    def _put(self, name: str, key: dict[str, str], details: dict[str, Any]) -> Any:
        kind = KINDS[name]
        for attempt in (1, 2):  # a concurrent first insert (PostgreSQL) makes the second attempt an update
            try:
                with self._write() as s:
                    row: Any = s.get(kind.table, key)
                    if row is None:
                        self._require_lineage(s, kind, key)
                        row = kind.table(**key, details=_clean(kind, details), created_at=utcnow())
                        s.add(row)
                    else:
                        row.details = _clean(kind, details)
                    s.flush()
                    s.refresh(row)  # the record is what the store holds: its details as JSON
                    return self._record(s, kind, row)
            except IntegrityError:
                if attempt == 2:
                    raise Conflict(
                        f"{describe(kind, key)} changed concurrently; try again", f"{kind.code}.conflict"
                    ) from None
        raise AssertionError("unreachable")

    def _delete(self, name: str, key: dict[str, str]) -> Any:
        """Delete a record and everything that belongs to it; return it as it was."""
        kind = KINDS[name]
        with self._write() as s:
            row = self._load(s, kind, key)
            record = self._record(s, kind, row)
            doomed = set(CASCADES[name])
            for victim in DELETE_ORDER:
                if victim in doomed:
                    table = TABLES[victim]
                    s.execute(
                        delete(table).where(*_matching(table, key)), execution_options={"synchronize_session": False}
                    )
            s.delete(row)
            return record

    def _flush(self, s: Session, kind: Kind, key: dict[str, str]) -> None:
        try:
            s.flush()
        except IntegrityError:  # lost a race with a concurrent create of the same key
            raise Conflict(f"{describe(kind, key)} already exists", f"{kind.code}.exists") from None

    def _require_lineage(self, s: Session, kind: Kind, key: dict[str, str]) -> None:
        """NotFound for the outermost missing ancestor, e.g. the collaboration before the project."""
        for ancestor_name in kind.lineage:
            if ancestor_name == "Participant" and kind.name == "Validation" and key["participant_id"] == AGGREGATE:
                continue
            ancestor = KINDS[ancestor_name]
            ancestor_key = {column: key[column] for column in ancestor.key}
            if s.get(ancestor.table, ancestor_key) is None:
                raise NotFound(f"{describe(ancestor, ancestor_key)} does not exist", f"{ancestor.code}.not_found")

    def _load(self, s: Session, kind: Kind, key: dict[str, str]) -> Any:
        row = s.get(kind.table, key)
        if row is None:
            self._require_lineage(s, kind, key)
            raise NotFound(f"{describe(kind, key)} does not exist", f"{kind.code}.not_found")
        return row

    def _load_scope(self, s: Session, scope: dict[str, str]) -> None:
        """The scope of a listing ({collab_id[, project_id[, expt_id[, run_id]]]}) must exist."""
        names = {1: "Collaboration", 2: "Project", 3: "Experiment", 4: "Run"}
        if scope:
            self._load(s, KINDS[names[len(scope)]], scope)

    def _select(self, s: Session, kind: Kind, scope: dict[str, str], relations: bool) -> list[Any]:
        table: Any = kind.table  # every kind's table has created_at and its key columns
        rows = s.scalars(
            select(table)
            .where(*_matching(table, scope))
            .order_by(table.created_at, *(getattr(table, c) for c in kind.key))
        ).all()
        return [self._record(s, kind, row, relations) for row in rows]

    def _record(self, s: Session, kind: Kind, row: Any, relations: bool = True) -> Any:
        """The typed record of `row`; with `relations`, what belongs to it (and, for a registration,
        the collaboration, project and participant it joins), each without relations of its own."""
        key = kind.key_of(row)
        related: dict[str, list[Record]] = {}
        if relations:
            related = {name: self._select(s, KINDS[name], key, relations=False) for name in kind.relations}
        # a NaN stored before `_clean` refused them reads as null, so that the record still answers
        details = {k: json_safe(v) for k, v in (row.details or {}).items() if k not in RESERVED}
        created_at = _aware(row.created_at)
        if kind.name != "Registration":
            return RECORDS[kind.name].of(key, created_at, details, related)
        nodes = s.scalars(
            select(RegistrationNode).where(*_matching(RegistrationNode, key)).order_by(RegistrationNode.node_index)
        ).all()
        links: dict[str, Any] = {}
        if relations:  # as the original did: the records this registration joins, without relations
            for name, attr in (
                ("Collaboration", "collaboration"),
                ("Project", "project"),
                ("Participant", "participant"),
            ):
                parent = KINDS[name]
                parent_row = s.get(parent.table, {c: key[c] for c in parent.key})
                links[attr] = self._record(s, parent, parent_row, relations=False) if parent_row else None
        return Registration.model_validate(
            {
                **key,
                "created_at": created_at,
                "relations": related,
                "role": details.get("role", ""),
                "nodes": [n.as_dict() for n in nodes],
                **links,
            }
        )


def _clean(kind: Kind, details: dict[str, Any]) -> dict[str, Any]:
    """Details never shadow the envelope fields of a record nor repeat its ids, and hold no NaN or
    infinity (stored as null: JSON has neither, and every read of the record would fail)."""
    return {k: json_safe(v) for k, v in details.items() if k not in RESERVED and k not in kind.key}


def _expt(collab_id: str, project_id: str, expt_id: str) -> dict[str, str]:
    return {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id}


def _run(collab_id: str, project_id: str, expt_id: str, run_id: str) -> dict[str, str]:
    return {**_expt(collab_id, project_id, expt_id), "run_id": run_id}


def _reg(collab_id: str, project_id: str, participant_id: str) -> dict[str, str]:
    return {"collab_id": collab_id, "project_id": project_id, "participant_id": participant_id}


def _scope(collab_id: str, project_id: str | None, expt_id: str | None, run_id: str | None) -> dict[str, str]:
    """Listing filters are nested: a run needs its experiment, an experiment its project."""
    scope = {"collab_id": collab_id}
    for column, value in (("project_id", project_id), ("expt_id", expt_id), ("run_id", run_id)):
        if value is None:
            break
        scope[column] = value
    return scope
