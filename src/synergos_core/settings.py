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
    """Bounds on the TTP ⇄ Worker WebSocket channel."""

    model_config = SettingsConfigDict(env_prefix="SYNERGOS_FED_", extra="ignore")

    max_frame_bytes: int = 16 * MiB
    shard_bytes: int = 8 * MiB
    max_queue: int = 16
    open_timeout_s: float = 10.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 20.0
    round_timeout_s: float = 3600.0
    max_payload_bytes: int = 2 * 1024 * MiB  # features and predictions a FedGKT party sends per round


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
