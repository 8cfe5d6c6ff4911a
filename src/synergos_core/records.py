"""The domain records: what the metadata store holds and what orchestration works with.

A record has its key fields (`collab_id`, `project_id`, …), `created_at` and its details, typed;
records that own others carry them in `relations` when they are read from the store. Nothing
here knows the REST envelope: `{key, created_at, relations, **details}` is drawn from a record at
the REST edge only (`synergos_contract.public`), and the store's rows only in the store.

`details()` is what a record holds beyond its key, as JSON: exactly what was stored (fields that
were never given stay absent, as they are on the wire); a Run's are its hyper-parameters with
every default filled in, from `RunHyperparameters` (the one place defaults live).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .preprocessing import Preprocessing, Scaling, Source, TargetScalingOption
from .schemas import Connection, Layer, MetaAlignment, NodeInfo, RunHyperparameters, Superset, TagList

__all__ = [
    "Record",
    "Collaboration",
    "Project",
    "Experiment",
    "Run",
    "Participant",
    "Registration",
    "Tags",
    "Alignment",
    "ModelExport",
    "Exclusion",
    "Model",
    "Inference",
    "Validation",
    "Prediction",
    "Job",
    "JobState",
    "OPEN_JOB_STATES",
    "QueuedJob",
    "OptimizationSummary",
    "RECORDS",
    "AGGREGATE",
]

AGGREGATE = "aggregate"  # the participant_id of a run's sample-weighted aggregate validation

_C, _P, _E, _R, _U = "collab_id", "project_id", "expt_id", "run_id", "participant_id"


class Record(BaseModel):
    """Key fields, `created_at`, details; `relations` holds the records that belong to this one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    KEY: ClassVar[tuple[str, ...]] = ()

    created_at: datetime
    relations: dict[str, list[Record]] = Field(default_factory=dict, exclude=True)

    @property
    def key(self) -> dict[str, str]:
        """The record's ids, outermost first."""
        return {name: getattr(self, name) for name in self.KEY}

    def details(self) -> dict[str, Any]:
        """What the record holds beyond its key, as stored (JSON-ready)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={*self.KEY, "created_at"})

    @classmethod
    def of(
        cls,
        key: dict[str, str],
        created_at: datetime,
        details: dict[str, Any],
        relations: dict[str, list[Record]] | None = None,
    ) -> Record:
        """The record the store read: its key, when it was made, its stored details."""
        return cls.model_validate({**details, **key, "created_at": created_at, "relations": relations or {}})


class Collaboration(Record):
    KEY = (_C,)
    collab_id: str
    mq: Connection | None = None
    mlops: Connection | None = None
    logs: Connection | None = None
    catalogue: Connection | None = None
    meter: Connection | None = None


class Project(Record):
    model_config = ConfigDict(extra="allow")  # the original also takes universe_alignment, start_at
    KEY = (_C, _P)
    collab_id: str
    project_id: str
    action: Literal["classify", "regress"]
    incentives: dict[str, Any] = Field(default_factory=dict)
    # preprocessing options; absent means the default (see synergos_core.preprocessing)
    scaling: Scaling | None = None
    statistics: Source | None = None
    target_scaling: TargetScalingOption | None = None


class Experiment(Record):
    KEY = (_C, _P, _E)
    collab_id: str
    project_id: str
    expt_id: str
    model: list[Layer]

    def layers(self) -> list[dict[str, Any]]:
        """The layer list as the model builder and the Workers take it."""
        return [layer.model_dump(mode="json") for layer in self.model]


class Run(Record):
    """One set of hyper-parameters for an experiment; `optimization_id` names the hyper-parameter
    search that made it (a trial), if any."""

    KEY = (_C, _P, _E, _R)
    collab_id: str
    project_id: str
    expt_id: str
    run_id: str
    hyperparameters: RunHyperparameters = Field(default_factory=RunHyperparameters)
    optimization_id: str | None = None

    def hyperparameter_dict(self) -> dict[str, Any]:
        """Every hyper-parameter with its default filled in, extra keys by name: what the training
        loops and the Workers are given."""
        return self.hyperparameters.model_dump(mode="json")

    def details(self) -> dict[str, Any]:
        extra = {"optimization_id": self.optimization_id} if self.optimization_id else {}
        return {**self.hyperparameter_dict(), **extra}

    @classmethod
    def of(
        cls,
        key: dict[str, str],
        created_at: datetime,
        details: dict[str, Any],
        relations: dict[str, list[Record]] | None = None,
    ) -> Run:
        hyperparameters = dict(details)
        optimization_id = hyperparameters.pop("optimization_id", None)
        return cls(
            **key,
            created_at=created_at,
            relations=relations or {},
            hyperparameters=RunHyperparameters.model_validate(hyperparameters),
            optimization_id=optimization_id,
        )


class Participant(Record):
    KEY = (_U,)
    participant_id: str
    category: list[str] | None = None
    summary: str | None = None
    phone: str | None = None
    email: str | None = None
    socials: dict[str, str] | None = None


class Registration(Record):
    """A participant's membership of a project: its role and the compute nodes it declared. Read
    with its relations, it also names the collaboration, project and participant it joins."""

    KEY = (_C, _P, _U)
    collab_id: str
    project_id: str
    participant_id: str
    role: str
    nodes: list[NodeInfo] = Field(default_factory=list)
    collaboration: Collaboration | None = Field(default=None, exclude=True)
    project: Project | None = Field(default=None, exclude=True)
    participant: Participant | None = Field(default=None, exclude=True)

    def details(self) -> dict[str, Any]:
        """`{role, n_count, node_0, …}`: the registration as the original wrote it."""
        nodes = {f"node_{i}": node.model_dump(mode="json") for i, node in enumerate(self.nodes)}
        return {"role": self.role, "n_count": len(self.nodes), **nodes}


class Tags(Record):
    model_config = ConfigDict(extra="allow")  # the original accepts `model`/`hyperparameters` extras
    KEY = (_C, _P, _U)
    collab_id: str
    project_id: str
    participant_id: str
    train: TagList = Field(default_factory=list)
    evaluate: TagList = Field(default_factory=list)
    predict: TagList = Field(default_factory=list)


class Alignment(Record):
    """A participant's place in the project's aligned layout: its spacers per meta (where it lacks
    a feature of the superset), the superset, and the preprocessing every split is prepared with."""

    model_config = ConfigDict(extra="allow")
    KEY = (_C, _P, _U)
    collab_id: str
    project_id: str
    participant_id: str
    train: MetaAlignment | None = None
    evaluate: MetaAlignment | None = None
    predict: MetaAlignment | None = None
    superset: Superset | None = None
    preprocessing: Preprocessing | None = None


class ModelExport(BaseModel):
    """One exported model: the global one (origin `ttp`) or a party's local one."""

    model_config = ConfigDict(extra="allow")
    origin: str
    path: str | None = None
    loss_history: dict[str, Any] = Field(default_factory=dict)
    checkpoints: str | None = None


class Exclusion(BaseModel):
    """A party's reply that a run left out, refused for what it held (`federation.bad_count`,
    `federation.non_finite`, `federation.replay`, ...); the party took part again the next round."""

    model_config = ConfigDict(extra="allow")
    round: int
    participant_id: str
    request: str = Field(description="what the reply answered: train, evaluate, gkt_train, ...")
    code: str
    reason: str


class Model(Record):
    """A trained run: where its global and local models are, their loss histories, how it ended,
    and the parties' replies it left out (`exclusions`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    KEY = (_C, _P, _E, _R)
    collab_id: str
    project_id: str
    expt_id: str
    run_id: str
    global_model: ModelExport | None = Field(default=None, alias="global")
    local_models: dict[str, ModelExport] = Field(default_factory=dict, alias="locals")
    rounds_completed: int | None = None
    stopped_early: bool | None = None
    exclusions: list[Exclusion] | None = None


class Inference(BaseModel):
    """Statistics of a model on one meta's data: a party's (with where its predictions stay on its
    Worker) or the sample-weighted aggregate (with the parties it pools)."""

    model_config = ConfigDict(extra="allow")
    statistics: dict[str, Any] = Field(default_factory=dict)
    res_path: str | None = None
    participants: list[str] | None = None


class Validation(Record):
    KEY = (_C, _P, _E, _R, _U)
    collab_id: str
    project_id: str
    expt_id: str
    run_id: str
    participant_id: str  # a registered participant, or AGGREGATE
    evaluate: Inference | None = None


class Prediction(Record):
    KEY = (_U, _C, _P, _E, _R)
    participant_id: str
    collab_id: str
    project_id: str
    expt_id: str
    run_id: str
    predict: Inference | None = None


# interrupted: the service stopped (a restart, a kill) while the job was queued or running; a
# training resumes from its last complete checkpoint when it is requested again
JobState = Literal["queued", "running", "completed", "failed", "interrupted"]
OPEN_JOB_STATES: frozenset[str] = frozenset({"queued", "running"})


class Job(BaseModel):
    """Progress of one piece of long work (alignment, training, validation, prediction) as the job
    board keeps it: readable while it runs, and after a restart (a basic TTP's jobs are kept in its
    metadata store)."""

    job_id: str
    kind: str
    keys: dict[str, str]
    state: JobState = "running"
    round: int | None = None
    rounds: int | None = None
    detail: str | None = None
    metrics: dict[str, Any] | None = None
    exclusions: list[Exclusion] | None = Field(default=None, description="parties' replies left out so far")
    rounds_checkpointed: int | None = Field(
        default=None,
        description="training: how many rounds a complete checkpoint holds (a resume continues after them)",
    )
    resumed_after: int | None = Field(
        default=None, description="training: the rounds completed before this job resumed the run (none: from round 1)"
    )
    started_at: str
    updated_at: str


class QueuedJob(BaseModel):
    """What a cluster-mode request answers at once: the job it queued (its records appear as it
    completes)."""

    job_id: str
    kind: str
    keys: dict[str, str]
    state: JobState = "queued"


class OptimizationSummary(BaseModel):
    """A hyper-parameter search, as accepted: how it will explore the space and how it stands."""

    optimization_id: str
    state: Literal["queued", "running", "completed", "failed"]
    metric: str
    optimize_mode: Literal["max", "min"]
    tuner: str
    n_samples: int
    trial_concurrency: int
    error: str | None = None


RECORDS: dict[str, type[Record]] = {
    "Collaboration": Collaboration,
    "Project": Project,
    "Experiment": Experiment,
    "Run": Run,
    "Participant": Participant,
    "Registration": Registration,
    "Tag": Tags,
    "Alignment": Alignment,
    "Model": Model,
    "Validation": Validation,
    "Prediction": Prediction,
}
