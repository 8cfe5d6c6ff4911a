"""Service settings: CLI flags override `SYNERGOS_…` environment variables, which override defaults.

No settings object is built at import time; each CLI builds one and hands it to `create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def default_dir(role: str, service_id: str, leaf: str) -> Path:
    """Container path (e.g. `/worker/data`) inside an image, else `./<id>/<leaf>` under the cwd."""
    container_root = Path("/") / role
    if container_root.is_dir():
        return container_root / leaf
    return Path.cwd() / service_id / leaf


class ServiceSettings(BaseSettings):
    """Flags every Synergos service accepts (deployment guide flags plus local ones)."""

    model_config = SettingsConfigDict(env_prefix="SYNERGOS_", env_nested_delimiter="__", extra="ignore")

    id: str = "synergos"
    host: str = "127.0.0.1"
    port: int = 5000
    data_dir: Path | None = None
    outputs_dir: Path | None = None
    mlflow_dir: Path | None = None
    db_url: str | None = None
    logging_variant: list[str] = Field(default_factory=lambda: ["basic"])
    censored: bool = False
    debug: bool = False
    # the service's identity: a folder from synergos-provision (inside an image, /<role>/credentials)
    credentials: Path | None = None
    insecure: bool = False  # development only: no TLS, no identities (loudly warned about)
    # bounded resources
    max_body_bytes: int = 8 * MiB
    http_timeout_s: float = 60.0

    @field_validator("logging_variant", mode="before")
    @classmethod
    def _split_variant(cls, value: object) -> object:
        if isinstance(value, str):
            return value.split()
        return value

    @field_validator("logging_variant")
    @classmethod
    def _check_variant(cls, value: list[str]) -> list[str]:
        if not value or value[0] not in {"basic", "graylog"}:
            raise ValueError("logging_variant must be 'basic' or 'graylog HOST PORT'")
        if value[0] == "graylog" and (len(value) != 3 or not value[2].isdigit()):
            raise ValueError("graylog logging needs a host and a numeric port: graylog HOST PORT")
        return value

    def resolve_dirs(self, role: str) -> None:
        """Fill unset directories with the role's defaults and create them."""
        for name, leaf in (("data_dir", "data"), ("outputs_dir", "outputs"), ("mlflow_dir", "mlflow")):
            if getattr(self, name) is None:
                setattr(self, name, default_dir(role, self.id, leaf))
        for name in ("outputs_dir",):
            getattr(self, name).mkdir(parents=True, exist_ok=True)


class FederationLimits(BaseSettings):
    """Bounds on the TTP ⇄ Worker WebSocket channel, and how soon a dead or silent peer is noticed.

    A party is noticed gone by whichever comes first: its channel closing (a killed process), the
    keepalive (`ping_interval_s` + `ping_timeout_s`: a frozen process or a cut link), or the round's
    deadline (`round_deadline`: a party that is alive but does not answer in time)."""

    model_config = SettingsConfigDict(env_prefix="SYNERGOS_FED_", extra="ignore")

    max_frame_bytes: int = 16 * MiB
    shard_bytes: int = 8 * MiB
    max_queue: int = 16
    open_timeout_s: float = Field(default=10.0, gt=0)  # opening a channel: TCP, TLS and the handshake
    close_timeout_s: float = Field(default=2.0, gt=0)  # the closing handshake; a dead peer is not waited for longer
    ping_interval_s: float = Field(default=5.0, gt=0)  # keepalive: a ping every this many seconds ...
    ping_timeout_s: float = Field(default=10.0, gt=0)  # ... and the channel fails when a pong is this late
    # a round's deadline (the TTP waiting for the parties' replies): `round_base_s` plus
    # `round_sample_epoch_s` per sample-epoch of the busiest party; from the second round on at most
    # `round_factor` times the slowest round measured so far (never below `round_base_s`; 0: off);
    # `round_timeout_s`, when set, is a fixed deadline instead
    round_base_s: float = Field(default=60.0, gt=0)
    round_sample_epoch_s: float = Field(default=0.005, ge=0)
    round_factor: float = Field(default=5.0, ge=0)
    round_timeout_s: float | None = Field(default=None, gt=0)
    frame_timeout_s: float = Field(default=120.0, gt=0)  # a Worker waiting for the next frame of a message
    terminate_timeout_s: float = Field(default=5.0, gt=0)  # the TTP ending a run's session on a Worker
    rejoin_interval_s: float = Field(default=5.0, gt=0)  # how often the TTP tries again a party that dropped out
    # a Worker's session without an open channel expires after this long without TTP traffic
    session_lease_s: float = Field(default=900.0, gt=0)
    max_payload_bytes: int = 2 * 1024 * MiB  # features and predictions a FedGKT party sends per round

    def round_deadline(self, sample_epochs: int, slowest_s: float | None = None) -> float:
        """Seconds the TTP waits for a round's replies: the work's allowance (`sample_epochs` of the
        busiest party), tightened to `round_factor` times the slowest round measured so far."""
        if self.round_timeout_s is not None:
            return self.round_timeout_s
        deadline = self.round_base_s + self.round_sample_epoch_s * max(0, sample_epochs)
        if slowest_s is not None and self.round_factor > 0:
            deadline = min(deadline, max(self.round_base_s, self.round_factor * slowest_s))
        return deadline


def _names(value: object) -> object:
    """`a,b c` from the environment, or a list from the CLI."""
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return value


class WorkerSettings(ServiceSettings):
    ws_port: int = 8020
    federation: FederationLimits = Field(default_factory=FederationLimits)
    # the operator's choice: which TTP/Director identities may command this node (empty: any
    # TTP or Director of the collaboration CA), and which collaborations (`collab` or
    # `collab/project`) it serves (empty: the collaboration its certificate names, if any, else any)
    trust: Annotated[list[str], NoDecode] = Field(default_factory=list)
    collaborations: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("trust", "collaborations", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        return _names(value)


class TTPSettings(ServiceSettings):
    federation: FederationLimits = Field(default_factory=FederationLimits)
    queue: list[str] | None = None
    grid: int = 0
    # checkpoints of the newest rounds a training keeps besides the best one (a run's
    # `keep_checkpoints` overrides it): SYNERGOS_KEEP_CHECKPOINTS
    keep_checkpoints: int = Field(default=2, ge=1)


class DirectorSettings(ServiceSettings):
    """The Director publishes to the MQ named by each collaboration's `mq` section, else `queue`."""

    queue: list[str] | None = None
    ray_address: str | None = None  # join an existing Ray cluster instead of starting a local one
    ray_cpus: int | None = None
