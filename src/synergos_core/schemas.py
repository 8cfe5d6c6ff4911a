"""Request bodies shared by the services (pydantic). Names carry their role: `…Create`, `…Update`.

Validation here is the first line of defence: every body is checked before anything is stored
or any Worker is touched, and a failure is a 422 with field paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .finite import has_non_finite
from .preprocessing import Preprocessing

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")
METAS = ("train", "evaluate", "predict")
Aggregation = Literal["mean", "median", "trimmed_mean", "krum"]

Identifier = Field(pattern=ID_PATTERN, description="letters, digits, '_', '-', '.'; at most 128")


def check_tag(tag: list[str]) -> list[str]:
    """A tag is a non-empty list of plain names: no separators, no '..', no NUL."""
    if not isinstance(tag, list) or not tag:
        raise ValueError("a tag is a non-empty list of tokens")
    for token in tag:
        if not isinstance(token, str) or token in {".", ".."} or not _TOKEN.match(token):
            raise ValueError(f"tag token {token!r} is not a plain name (letters, digits, '_', '-', '.'; no '..')")
    return tag


TagList = list[list[str]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tags(Strict):
    train: TagList = Field(default_factory=list)
    evaluate: TagList = Field(default_factory=list)
    predict: TagList = Field(default_factory=list)

    @field_validator("train", "evaluate", "predict")
    @classmethod
    def _tags(cls, value: TagList) -> TagList:
        return [check_tag(tag) for tag in value]


class TagsCreate(Tags):
    model_config = ConfigDict(extra="allow")  # the original accepts `model`/`hyperparameters` extras

    @model_validator(mode="after")
    def _needs_train(self) -> TagsCreate:
        if not self.train:
            raise ValueError("train tags are required")
        return self


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    l_type: str
    structure: dict[str, Any] = Field(default_factory=dict)
    activation: str | None = None
    is_input: bool = False


class RunHyperparameters(BaseModel):
    """Run hyper-parameters with the defaults of the deployment guide; extra keys are kept by name.
    No number of a run may be NaN or infinite (JSON bodies can spell both; JSON answers cannot)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    algorithm: Literal["FedAvg", "FedProx", "FedGKT"] = "FedProx"
    batch_size: int | None = Field(default=None, ge=1)
    rounds: int = Field(default=10, ge=1, le=100_000)
    epochs: int = Field(default=100, ge=1, le=1_000_000)
    lr: float = Field(default=0.001, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_decay: float = Field(default=0.1, ge=0)
    mu: float = Field(default=0.1, ge=0)
    l1_lambda: float = Field(default=0.0, ge=0)
    l2_lambda: float = Field(default=0.0, ge=0)
    optimizer: str = "SGD"
    criterion: str = "BCELoss"
    lr_scheduler: str | None = "CyclicLR"
    delta: float = Field(default=0.0, ge=0)
    patience: int = Field(default=10, ge=0)
    seed: int = 42
    is_snn: bool = False
    precision_fractional: int = Field(default=5, ge=0)
    # how the TTP combines the parties' weights each round (`synergos_core.aggregation`)
    aggregation: Aggregation = Field(
        default="mean",
        description="mean: the sample-weighted mean (FedAvg/FedProx); median and trimmed_mean: coordinate-wise, "
        "each party counting once; krum: the update closest to its neighbours (Blanchard et al. 2017)",
    )
    trim_ratio: float = Field(
        default=0.1, ge=0, lt=0.5, description="trimmed_mean: the share of parties cut at each end, per coordinate"
    )
    byzantine: int | None = Field(
        default=None,
        ge=0,
        description="krum: how many Byzantine parties to tolerate (f); needs more than 2f + 2 parties; "
        "default the largest f the run's parties allow",
    )
    # how many of the newest rounds' checkpoints the TTP keeps, besides the best (lowest evaluate
    # loss); None: the TTP's `keep_checkpoints` setting (SYNERGOS_KEEP_CHECKPOINTS, default 2)
    keep_checkpoints: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="checkpoints of the newest rounds kept besides the best; default the TTP's setting (2)",
    )
    # failure detection (`synergos_ttp.grid`): how many parties' valid updates a round needs
    min_workers: int | None = Field(
        default=None,
        ge=1,
        description="the fewest parties whose valid updates a round may be aggregated from; the others count as "
        "dropped for that round and are re-admitted when they are back; default every party (a party that drops out "
        "fails the run)",
    )

    @model_validator(mode="after")
    def _extras_are_finite(self) -> RunHyperparameters:
        bad = sorted(name for name, value in (self.model_extra or {}).items() if has_non_finite(value))
        if bad:
            raise ValueError(f"{', '.join(bad)} must be finite (no NaN or infinity)")
        return self

    @model_validator(mode="after")
    def _aggregation_fits_the_algorithm(self) -> RunHyperparameters:
        if self.algorithm == "FedGKT" and self.aggregation != "mean":
            raise ValueError(
                f"aggregation {self.aggregation!r} needs weights to combine, and FedGKT averages none: it distils the "
                "parties' predictions into the server model; use aggregation='mean' (the default) with FedGKT"
            )
        return self

    @classmethod
    def of(cls, hp: RunHyperparameters | Mapping[str, Any]) -> RunHyperparameters:
        """The run's typed hyper-parameters: every default filled in here, nowhere else."""
        return hp if isinstance(hp, cls) else cls.model_validate(dict(hp))

    def as_dict(self) -> dict[str, Any]:
        """Every field and extra key by name: the arguments torch's constructors are taken from."""
        return self.model_dump()

    @property
    def proximal_mu(self) -> float:
        """FedProx's proximal weight; FedAvg and FedGKT train without it."""
        return self.mu if self.algorithm == "FedProx" else 0.0

    @property
    def distillation(self) -> DistillationOptions:
        """FedGKT's options, read from the run's extra keys with their defaults."""
        return DistillationOptions.model_validate(self.model_extra or {})

    @property
    def total_epochs(self) -> int:
        """A party's local epochs over the whole run: `rounds * epochs`."""
        return self.rounds * self.epochs


class DistillationOptions(BaseModel):
    """FedGKT's split and distillation settings, carried as extra keys of a run."""

    model_config = ConfigDict(extra="ignore")

    L: int | None = Field(default=None, ge=1, description="layers kept by the parties (default: half the model)")
    alpha: float = Field(default=1.0, ge=0, description="weight of the distillation term")
    temperature: float = Field(default=3.0, gt=0, description="softmax temperature of the distillation")
    server_epochs: int = Field(default=1, ge=1, description="server epochs per round")


class Connection(BaseModel):
    model_config = ConfigDict(extra="allow")
    host: str
    ports: dict[str, int] = Field(default_factory=dict)
    secure: bool = False


class NodeInfo(Strict):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    f_port: int = Field(ge=1, le=65535)
    log_msgs: bool = False
    verbose: bool = False


# ---- Worker-facing bodies (TTP -> Worker REST) ----


class PollRequest(Strict):
    action: Literal["classify", "regress"]
    tags: Tags


class MetaAlignment(Strict):
    X: list[int] = Field(default_factory=list)
    y: list[int] = Field(default_factory=list)


class Superset(Strict):
    X: list[str] = Field(default_factory=list)
    y: list[str] = Field(default_factory=list)


class InitialiseRequest(Strict):
    """Everything a Worker needs to serve one run: its data, the aligned layout and the run's recipe."""

    action: Literal["classify", "regress"]
    tags: Tags
    alignments: dict[str, MetaAlignment] = Field(default_factory=dict)
    model: list[Layer]
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    token: str = Field(min_length=16, max_length=256)
    participant_id: str = Field(pattern=ID_PATTERN)
    # the project's aligned layout by name and the statistics every split is preprocessed with;
    # without them the Worker places columns by spacers and scales with its own train split
    superset: Superset | None = None
    preprocessing: Preprocessing | None = None


class TerminateRequest(Strict):
    """Ending a run's session: with the run's token, only the session that token opened ends."""

    token: str | None = Field(default=None, min_length=16, max_length=256)
