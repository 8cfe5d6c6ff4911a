"""Settings of the MLOps service (`SYNERGOS_…` environment variables, overridden by flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from synergos_core.settings import ServiceSettings

CONTAINER_ROOT = Path("/mlflow")


def in_container() -> bool:
    """The MLOps image mounts its store at `/mlflow`."""
    return CONTAINER_ROOT.is_dir()


class MLOpsSettings(ServiceSettings):
    """`host` None means: `GUNICORN_CMD_ARGS --bind`, else 0.0.0.0 in a container, else 127.0.0.1."""

    id: str = "mlops"
    host: str | None = None  # type: ignore[assignment]
    port: int = Field(default=5500, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    allowed_hosts: str | None = None

    def resolve_mlflow_dir(self) -> Path:
        """`--mlflow_dir`, else `/mlflow` in a container, else `./<id>/mlflow`; created."""
        if self.mlflow_dir is None:
            self.mlflow_dir = CONTAINER_ROOT if in_container() else Path.cwd() / self.id / "mlflow"
        self.mlflow_dir = Path(self.mlflow_dir).resolve()
        (self.mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        return self.mlflow_dir
