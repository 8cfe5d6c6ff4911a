"""Request bodies of the TTP's connect routes; shared shapes come from `synergos_core.schemas`.

`…Create` bodies are complete; `…Update` bodies carry only what changes and are merged into the
stored details, after which the merge is checked again as a `…Create`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from synergos_core.errors import ErrorCode, InvalidRequest
from synergos_core.preprocessing import Scaling, Source, TargetScalingOption
from synergos_core.schemas import (
    ID_PATTERN,
    Connection,
    Layer,
    NodeInfo,
    RunHyperparameters,
    Strict,
    TagList,
    TagsCreate,
    check_tag,
)

from .store import AGGREGATE

__all__ = [
    "PreprocessingChoice",
    "CollaborationCreate",
    "CollaborationUpdate",
    "ProjectCreate",
    "ProjectUpdate",
    "ExperimentCreate",
    "ExperimentUpdate",
    "RunCreate",
    "RunUpdate",
    "ParticipantCreate",
    "ParticipantUpdate",
    "RegistrationCreate",
    "RegistrationUpdate",
    "TagsCreate",
    "TagsUpdate",
    "OptimizationRequest",
    "invalid_body",
    "recheck",
]

Identifier = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits, '_', '-', '.'; at most 128")]
SECTIONS = ("mq", "mlops", "logs", "catalogue", "meter")
_NODE_KEY = re.compile(r"^node_(0|[1-9][0-9]{0,3})$")


def invalid_body(exc: ValidationError, detail_prefix: str = "") -> InvalidRequest:
    """A pydantic failure outside FastAPI's own body parsing, as the same 422 with field paths."""
    fields = [
        {"path": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]
    detail = detail_prefix + "; ".join(f"{f['path']}: {f['message']}" for f in fields)
    return InvalidRequest(detail, ErrorCode.REQUEST_INVALID, fields=fields)


def recheck(model: type[BaseModel], merged: dict[str, Any], ids: dict[str, str], **dump: Any) -> dict[str, Any]:
    """Validate updated details as a complete `…Create` body; return them without the ids."""
    try:
        body = model.model_validate({**merged, **ids})
    except ValidationError as exc:
        raise invalid_body(exc) from None
    return body.model_dump(mode="json", exclude=set(ids), **dump)


def _field_error(title: str, path: str, kind: str, message: str, value: Any) -> ValidationError:
    """A ValidationError located at `path`, for checks that span several fields."""
    return ValidationError.from_exception_data(
        title, [InitErrorDetails(type=PydanticCustomError(kind, message), loc=(path,), input=value)]
    )


# ---- collaborations ----


class CollaborationCreate(Strict):
    collab_id: Identifier
    mq: Connection | None = None
    mlops: Connection | None = None
    logs: Connection | None = None
    catalogue: Connection | None = None
    meter: Connection | None = None


class CollaborationUpdate(Strict):
    """A section given replaces the stored one; a section given as null removes it."""

    collab_id: Identifier | None = None
    mq: Connection | None = None
    mlops: Connection | None = None
    logs: Connection | None = None
    catalogue: Connection | None = None
    meter: Connection | None = None


# ---- projects ----


class PreprocessingChoice(BaseModel):
    """Optional preprocessing options (see `synergos_core.preprocessing`); null keeps the default."""

    scaling: Scaling | None = Field(default=None, description="standard (default), minmax or none")
    statistics: Source | None = Field(
        default=None, description="global (default: the parties' train splits pooled) or local (each party's own)"
    )
    target_scaling: TargetScalingOption | None = Field(
        default=None, description="regression target: standard (default) or none"
    )


class ProjectCreate(PreprocessingChoice):
    model_config = ConfigDict(extra="allow")  # the original also takes universe_alignment, start_at
    project_id: Identifier
    action: Literal["classify", "regress"]
    incentives: dict[str, Any] = Field(default_factory=dict)


class ProjectUpdate(PreprocessingChoice):
    model_config = ConfigDict(extra="allow")
    project_id: Identifier | None = None
    action: Literal["classify", "regress"] | None = None
    incentives: dict[str, Any] | None = None


# ---- experiments ----


class ExperimentCreate(Strict):
    expt_id: Identifier
    model: list[Layer] = Field(min_length=1)


class ExperimentUpdate(Strict):
    expt_id: Identifier | None = None
    model: list[Layer] | None = Field(default=None, min_length=1)


# ---- runs ----


class RunCreate(RunHyperparameters):
    """A run: its id plus every hyper-parameter, defaults filled in; extra keys are kept by name."""

    run_id: Identifier


class RunUpdate(BaseModel):
    """Any hyper-parameters to change; the merged run is checked again in full."""

    model_config = ConfigDict(extra="allow")
    run_id: Identifier | None = None


# ---- participants ----


def _not_aggregate(value: str) -> str:
    if value == AGGREGATE:
        raise ValueError(f"{AGGREGATE!r} is reserved for aggregated validation results")
    return value


ParticipantId = Annotated[Identifier, AfterValidator(_not_aggregate)]


class ParticipantCreate(Strict):
    id: ParticipantId = Field(validation_alias=AliasChoices("id", "participant_id"))
    category: list[Annotated[str, Field(max_length=256)]] | None = None
    summary: str | None = Field(default=None, max_length=10_000)
    phone: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    socials: dict[str, Annotated[str, Field(max_length=2048)]] | None = None

    @field_validator("category", mode="before")
    @classmethod
    def _one_category(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ParticipantUpdate(ParticipantCreate):
    # an update may leave the id out
    id: ParticipantId | None = Field(default=None, validation_alias=AliasChoices("id", "participant_id"))  # type: ignore[assignment]


# ---- registrations: {role, n_count, node_0 … node_<n_count-1>} ----


def _node_key(key: str) -> str:
    if not _NODE_KEY.match(key):
        raise PydanticCustomError(
            "extra_forbidden", "unknown field; a registration takes role, n_count and node_0 … node_<k>"
        )
    return key


NodeKey = Annotated[str, AfterValidator(_node_key)]


class _Nodes(BaseModel):
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[NodeKey, NodeInfo] = Field(init=False)

    def nodes(self) -> list[NodeInfo]:
        """The declared nodes in index order."""
        extra = self.model_extra or {}
        return [extra[k] for k in sorted(extra, key=lambda k: int(k.split("_")[1]))]

    def _check_count(self, n_count: int | None) -> None:
        extra = self.model_extra or {}
        if n_count is not None and n_count != len(extra):
            raise _field_error(
                type(self).__name__,
                "n_count",
                "count_mismatch",
                f"n_count is {n_count} but {len(extra)} node_* entries were given",
                n_count,
            )
        expected = {f"node_{i}" for i in range(len(extra))}
        if set(extra) != expected:
            missing = sorted(expected - set(extra))
            raise _field_error(
                type(self).__name__,
                missing[0],
                "missing",
                f"nodes are numbered from node_0 without gaps: {missing[0]} is missing",
                None,
            )


class RegistrationCreate(_Nodes):
    role: Literal["host", "guest", "arbiter"]
    n_count: int = Field(ge=1, le=1024)

    @model_validator(mode="after")
    def _counted(self) -> RegistrationCreate:
        self._check_count(self.n_count)
        return self


class RegistrationUpdate(_Nodes):
    """Change the role and/or replace the node list (then n_count, if given, must match it)."""

    role: Literal["host", "guest", "arbiter"] | None = None
    n_count: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _counted(self) -> RegistrationUpdate:
        if self.model_extra:
            self._check_count(self.n_count)
        return self


# ---- tags ----


class TagsUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")
    train: TagList | None = None
    evaluate: TagList | None = None
    predict: TagList | None = None

    @field_validator("train", "evaluate", "predict")
    @classmethod
    def _tags(cls, value: TagList | None) -> TagList | None:
        return None if value is None else [check_tag(tag) for tag in value]


# ---- optimizations (Director) ----


class OptimizationRequest(BaseModel):
    """A search space and how to explore it (Ray Tune); extra keys go to the searcher."""

    model_config = ConfigDict(extra="allow")
    search_space: dict[str, Any]
    tuner: str | None = None
    metric: str | None = None
    optimize_mode: Literal["max", "min"] | None = None
    n_samples: int = Field(default=3, ge=1, le=1000)
    trial_concurrency: int | None = Field(default=None, ge=1, le=64)
    max_exec_duration: str | None = None
    auto_align: bool = True
    # the original Driver's spellings
    max_trial_num: int | None = Field(default=None, ge=1, le=1000, exclude=True)
    searcher: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _original_spellings(self) -> OptimizationRequest:
        if self.max_trial_num is not None and "n_samples" not in self.model_fields_set:
            self.n_samples = self.max_trial_num
        if self.searcher is not None and self.tuner is None:
            self.tuner = self.searcher
        return self
