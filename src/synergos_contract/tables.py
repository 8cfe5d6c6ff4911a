"""The TTP's metadata tables (SQLAlchemy 2) and the map of how records relate.

Every record is named by explicit id columns that together form its primary key, so the same
`project_id` under two collaborations (or the same `expt_id` under two projects) are distinct
rows. Children carry their parent's ids as a composite foreign key with `ON DELETE CASCADE`;
the Store also deletes descendants explicitly (see `KIND.cascade`), which covers the one
relation that is not a foreign key: a Validation's `participant_id` may be `"aggregate"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, ForeignKeyConstraint, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from synergos_core.records import AGGREGATE  # noqa: F401 (the participant_id of the aggregate validation)

ID_LENGTH = 128


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, str: String(ID_LENGTH)}


class _Stamped:
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _fk(columns: tuple[str, ...], table: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(list(columns), [f"{table}.{c}" for c in columns], ondelete="CASCADE")


class Collaboration(_Stamped, Base):
    __tablename__ = "collaborations"
    collab_id: Mapped[str] = mapped_column(primary_key=True)


class Project(_Stamped, Base):
    __tablename__ = "projects"
    collab_id: Mapped[str] = mapped_column(ForeignKey("collaborations.collab_id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)


class Experiment(_Stamped, Base):
    __tablename__ = "experiments"
    __table_args__ = (_fk(("collab_id", "project_id"), "projects"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    expt_id: Mapped[str] = mapped_column(primary_key=True)


class Run(_Stamped, Base):
    __tablename__ = "runs"
    __table_args__ = (_fk(("collab_id", "project_id", "expt_id"), "experiments"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    expt_id: Mapped[str] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(primary_key=True)


class Participant(_Stamped, Base):
    __tablename__ = "participants"
    participant_id: Mapped[str] = mapped_column(primary_key=True)


class Registration(_Stamped, Base):
    """A participant's membership of a project; `details` holds its role, its nodes are rows below."""

    __tablename__ = "registrations"
    __table_args__ = (_fk(("collab_id", "project_id"), "projects"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.participant_id", ondelete="CASCADE"), primary_key=True
    )


class RegistrationNode(Base):
    """One compute node a participant declared for a project; `node_index` is the k of `node_k`."""

    __tablename__ = "registration_nodes"
    __table_args__ = (_fk(("collab_id", "project_id", "participant_id"), "registrations"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    participant_id: Mapped[str] = mapped_column(primary_key=True)
    node_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    f_port: Mapped[int] = mapped_column(Integer)
    log_msgs: Mapped[bool] = mapped_column(Boolean, default=False)
    verbose: Mapped[bool] = mapped_column(Boolean, default=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "f_port": self.f_port,
            "log_msgs": self.log_msgs,
            "verbose": self.verbose,
        }


class Tag(_Stamped, Base):
    __tablename__ = "tags"
    __table_args__ = (_fk(("collab_id", "project_id", "participant_id"), "registrations"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    participant_id: Mapped[str] = mapped_column(primary_key=True)


class Alignment(_Stamped, Base):
    __tablename__ = "alignments"
    __table_args__ = (_fk(("collab_id", "project_id", "participant_id"), "registrations"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    participant_id: Mapped[str] = mapped_column(primary_key=True)


class Model(_Stamped, Base):
    __tablename__ = "models"
    __table_args__ = (_fk(("collab_id", "project_id", "expt_id", "run_id"), "runs"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    expt_id: Mapped[str] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(primary_key=True)


class Validation(_Stamped, Base):
    """Per-participant validation statistics, or the aggregate (`participant_id == "aggregate"`),
    which is why `participant_id` is deliberately not a foreign key here."""

    __tablename__ = "validations"
    __table_args__ = (_fk(("collab_id", "project_id", "expt_id", "run_id"), "runs"),)
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    expt_id: Mapped[str] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(primary_key=True)
    participant_id: Mapped[str] = mapped_column(primary_key=True)


class Prediction(_Stamped, Base):
    __tablename__ = "predictions"
    __table_args__ = (_fk(("collab_id", "project_id", "expt_id", "run_id"), "runs"),)
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.participant_id", ondelete="CASCADE"), primary_key=True
    )
    collab_id: Mapped[str] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(primary_key=True)
    expt_id: Mapped[str] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(primary_key=True)


class JobRow(Base):
    """One job of the job board (`synergos_core.records.Job`, as JSON in `details`), so that a TTP
    that restarts still knows what it was doing: what was running then is `interrupted`. Not a
    record kind: jobs belong to no collaboration's lineage and outlive deleted records."""

    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # the order jobs started in
    job_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    collab_id: Mapped[str | None] = mapped_column(index=True, nullable=True)
    project_id: Mapped[str | None] = mapped_column(nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class Kind:
    """How one record kind is keyed, what must exist before it, and what belongs to it."""

    name: str  # "Project": the name used in `relations`
    code: str  # "project": the prefix of error codes
    table: type[Base]
    key: tuple[str, ...]  # id columns, outermost first
    lineage: tuple[str, ...]  # kinds that must exist first, outermost first
    relations: tuple[str, ...]  # kinds that belong to it: shown in `relations`, deleted with it

    def key_of(self, row: Base) -> dict[str, str]:
        return {column: getattr(row, column) for column in self.key}


_C, _P, _E, _R, _U = "collab_id", "project_id", "expt_id", "run_id", "participant_id"

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "Collaboration",
            "collaboration",
            Collaboration,
            (_C,),
            (),
            ("Project", "Experiment", "Run", "Registration", "Tag", "Alignment", "Model", "Validation", "Prediction"),
        ),
        Kind(
            "Project",
            "project",
            Project,
            (_C, _P),
            ("Collaboration",),
            ("Experiment", "Run", "Registration", "Tag", "Alignment", "Model", "Validation", "Prediction"),
        ),
        Kind(
            "Experiment",
            "experiment",
            Experiment,
            (_C, _P, _E),
            ("Collaboration", "Project"),
            ("Run", "Model", "Validation", "Prediction"),
        ),
        Kind(
            "Run",
            "run",
            Run,
            (_C, _P, _E, _R),
            ("Collaboration", "Project", "Experiment"),
            ("Model", "Validation", "Prediction"),
        ),
        Kind(
            "Participant",
            "participant",
            Participant,
            (_U,),
            (),
            ("Registration", "Tag", "Alignment", "Validation", "Prediction"),
        ),
        Kind(
            "Registration",
            "registration",
            Registration,
            (_C, _P, _U),
            ("Collaboration", "Project", "Participant"),
            ("Tag", "Alignment"),
        ),
        Kind(
            "Tag", "tag", Tag, (_C, _P, _U), ("Collaboration", "Project", "Participant", "Registration"), ("Alignment",)
        ),
        Kind(
            "Alignment",
            "alignment",
            Alignment,
            (_C, _P, _U),
            ("Collaboration", "Project", "Participant", "Registration"),
            (),
        ),
        Kind(
            "Model",
            "model",
            Model,
            (_C, _P, _E, _R),
            ("Collaboration", "Project", "Experiment", "Run"),
            ("Validation", "Prediction"),
        ),
        Kind(
            "Validation",
            "validation",
            Validation,
            (_C, _P, _E, _R, _U),
            ("Collaboration", "Project", "Experiment", "Run", "Participant"),
            (),
        ),
        Kind(
            "Prediction",
            "prediction",
            Prediction,
            (_U, _C, _P, _E, _R),
            ("Participant", "Collaboration", "Project", "Experiment", "Run"),
            (),
        ),
    )
}

# Children before parents, so explicit cascades never trip a foreign key. Nodes go with registrations.
DELETE_ORDER: tuple[str, ...] = (
    "Prediction",
    "Validation",
    "Model",
    "Alignment",
    "Tag",
    "RegistrationNode",
    "Registration",
    "Run",
    "Experiment",
    "Project",
    "Participant",
    "Collaboration",
)
TABLES: dict[str, type[Base]] = {
    **{name: kind.table for name, kind in KINDS.items()},
    "RegistrationNode": RegistrationNode,
}

# Deleting a Model leaves its validations and predictions: they are results of the run.
CASCADES: dict[str, tuple[str, ...]] = {
    name: kind.relations + (("RegistrationNode",) if "Registration" in kind.relations else ())
    for name, kind in KINDS.items()
}
CASCADES["Model"] = ()
CASCADES["Registration"] += ("RegistrationNode",)
