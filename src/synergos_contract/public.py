"""What the REST edge answers: the envelope and each record's public shape (`XPublic`).

Records (`synergos_core.records`) travel inward typed; only here are they drawn as the wire has
them, `{key, created_at, relations, **details}` (a record inside `relations` has no relations of
its own). Every route declares its answer as `Envelope[XPublic]`, so `/openapi.json` describes
each response and FastAPI checks what is sent against it (fields never given stay absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field

from synergos_core.preprocessing import Preprocessing, Scaling, Source, TargetScalingOption
from synergos_core.records import (
    Exclusion,
    Inference,
    Job,
    ModelExport,
    OptimizationSummary,
    QueuedJob,
    Record,
    Registration,
)
from synergos_core.schemas import Connection, Layer, MetaAlignment, NodeInfo, RunHyperparameters, Superset, TagList

from .envelope import envelope_body

T = TypeVar("T")


# ---- the envelope ----


class Envelope(BaseModel, Generic[T]):
    """Every success: `data` is a record, a list of records, or what the route says."""

    apiVersion: str
    success: Literal[1]
    status: int
    method: str = Field(description="the route's name and the HTTP method, e.g. `projects.post`")
    params: dict[str, str] = Field(description="the ids in the URL")
    data: T


class FieldError(BaseModel):
    path: str
    message: str
    type: str | None = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="a stable dotted code, e.g. `run.not_found`")
    title: str
    detail: str
    correlation_id: str | None = None
    fields: list[FieldError] | None = None


class ErrorEnvelope(BaseModel):
    """Every failure: the envelope with `success: 0` and the error."""

    apiVersion: str
    success: Literal[0]
    status: int
    method: str
    params: dict[str, Any]
    data: None = None
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "An id in the URL names no record"},
    409: {"model": ErrorEnvelope, "description": "A conflict with what is stored"},
    422: {"model": ErrorEnvelope, "description": "An invalid body or id, with field paths"},
}


def created_responses(public: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The extra answer of a create: 200 when the same record was there already (a re-run)."""
    return {
        200: {
            "model": Envelope[public],  # type: ignore[valid-type]
            "description": "The record existed already with the same details; it is answered as it is",
        }
    }


def queued_responses(public: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The extra answer of long work: 202 with the jobs a cluster (the Director) queued."""
    return {
        202: {
            "model": Envelope[list[public]],  # type: ignore[valid-type]
            "description": "Queued for the cluster's grids (Director); the records appear as the jobs complete",
        }
    }


# ---- keys ----


class CollaborationKey(BaseModel):
    collab_id: str


class ProjectKey(CollaborationKey):
    project_id: str


class ExperimentKey(ProjectKey):
    expt_id: str


class RunKey(ExperimentKey):
    run_id: str


class ParticipantKey(BaseModel):
    participant_id: str


class RegistrationKey(ProjectKey):
    participant_id: str


class ValidationKey(RunKey):
    participant_id: str = Field(description="a participant, or `aggregate` for the sample-weighted aggregate")


class PredictionKey(BaseModel):
    participant_id: str
    collab_id: str
    project_id: str
    expt_id: str
    run_id: str


# ---- records ----


class RelatedPublic(BaseModel):
    """A record inside another's `relations` (or a registration's links): key, time, details."""

    model_config = ConfigDict(extra="allow")
    key: dict[str, str]
    created_at: str


class _Public(BaseModel):
    created_at: str = Field(description="ISO 8601, UTC")
    relations: dict[str, list[RelatedPublic]] = Field(
        default_factory=dict, description="the records that belong to this one, by kind"
    )


class CollaborationPublic(_Public):
    key: CollaborationKey
    mq: Connection | None = None
    mlops: Connection | None = None
    logs: Connection | None = None
    catalogue: Connection | None = None
    meter: Connection | None = None


class ProjectPublic(_Public):
    model_config = ConfigDict(extra="allow")
    key: ProjectKey
    action: Literal["classify", "regress"]
    incentives: dict[str, Any] = Field(default_factory=dict)
    scaling: Scaling | None = None
    statistics: Source | None = None
    target_scaling: TargetScalingOption | None = None


class ExperimentPublic(_Public):
    key: ExperimentKey
    model: list[Layer]


class RunPublic(_Public, RunHyperparameters):
    """A run: its key and every hyper-parameter (defaults filled in), extra keys by name."""

    key: RunKey
    optimization_id: str | None = Field(default=None, description="the optimization whose trial this run is")


class OptimizationTrialPublic(RunPublic):
    validation: dict[str, Any] | None = Field(description="the trial's aggregate validation statistics, once in")


class ParticipantPublic(_Public):
    key: ParticipantKey
    category: list[str] | None = None
    summary: str | None = None
    phone: str | None = None
    email: str | None = None
    socials: dict[str, str] | None = None


class RegistrationPublic(_Public):
    """`{role, n_count, node_0 … node_<n_count-1>}`, and the records it joins."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, NodeInfo] = Field(init=False)
    key: RegistrationKey
    role: str
    n_count: int
    collaboration: RelatedPublic | None = None
    project: RelatedPublic | None = None
    participant: RelatedPublic | None = None


class TagsPublic(_Public):
    model_config = ConfigDict(extra="allow")
    key: RegistrationKey
    train: TagList = Field(default_factory=list)
    evaluate: TagList = Field(default_factory=list)
    predict: TagList = Field(default_factory=list)


class AlignmentPublic(_Public):
    """A participant's spacers per meta, the superset they align to, and its preprocessing."""

    model_config = ConfigDict(extra="allow")
    key: RegistrationKey
    train: MetaAlignment | None = None
    evaluate: MetaAlignment | None = None
    predict: MetaAlignment | None = None
    superset: Superset | None = None
    preprocessing: Preprocessing | None = None


class ModelPublic(_Public):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    key: RunKey
    global_model: ModelExport | None = Field(default=None, alias="global")
    local_models: dict[str, ModelExport] | None = Field(default=None, alias="locals")
    rounds_completed: int | None = None
    stopped_early: bool | None = None
    exclusions: list[Exclusion] | None = Field(default=None, description="the parties' replies the run left out")


class ValidationPublic(_Public):
    key: ValidationKey
    evaluate: Inference | None = None


class PredictionPublic(_Public):
    key: PredictionKey
    predict: Inference | None = None


class JobPublic(Job):
    """A job's progress on `GET /ttp/status/jobs`."""


class QueuedJobPublic(QueuedJob):
    """A job a cluster-mode request queued."""


class OptimizationPublic(OptimizationSummary):
    """A hyper-parameter search the Director accepted."""


class ChampionPublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    registered_model: str
    version: str
    run_id: str


class HealthPublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: str


# ---- drawing records ----


def view(record: Record, relations: bool = True) -> dict[str, Any]:
    """`{key, created_at, relations, **details}`: a record as the wire has it."""
    body: dict[str, Any] = {"key": record.key, "created_at": record.created_at.isoformat()}
    if relations:
        body["relations"] = {
            name: [view(r, relations=False) for r in related] for name, related in record.relations.items()
        }
    body.update(record.details())
    if relations and isinstance(record, Registration):  # as the original: the records it joins
        for name in ("collaboration", "project", "participant"):
            linked = getattr(record, name)
            body[name] = view(linked, relations=False) if linked is not None else None
    return body


def plain(data: Any) -> Any:
    """Records drawn with `view`, other models dumped as JSON, lists item by item."""
    if isinstance(data, Record):
        return view(data)
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", by_alias=True)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [plain(item) for item in data]
    return data


def answer(request: Request, data: Any, status: int = 200, response: Response | None = None) -> dict[str, Any]:
    """The envelope of `data`, for the route's response model to check and send; a status other
    than the route's own needs the route's `response`."""
    if response is not None:
        response.status_code = status
    return envelope_body(request, plain(data), status)
