"""What the TTP (basic mode) and the Director (cluster mode) record in MLflow for a Synergos run:
the same calls from either, built from the records they archive."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import backend
from .tracking import Tracker, default_uri_for, tracking_uri

_RECORD = {"key", "created_at", "relations", "link", "run_id"}


class RunRecorder:
    """A Tracker bound to a service's shared `mlflow` directory and outputs.

    The directory's store is created and migrated here, synchronously, before the service takes
    work (`backend.prepare`); a broken one disables tracking to it, with the reason and the fix
    in the log and in `health()`, and the service serves on."""

    def __init__(self, mlflow_dir: Path, outputs_dir: Path, spool_dir: Path) -> None:
        self.default_uri = default_uri_for(mlflow_dir)
        self.outputs_dir = outputs_dir
        self.store = backend.prepare(self.default_uri)
        self.tracker = Tracker(
            self.default_uri, spool_dir, disabled={} if self.store.ready else {self.default_uri: self.store}
        )

    def health(self) -> dict[str, Any]:
        """`{"mlflow": {...}}` for a service's /health: `tracking` ok or disabled (with `reason` and
        `fix`) for the directory's store, and what waits to be recorded."""
        status = self.tracker.status()
        disabled = {d["store"]: d for d in status["disabled"]}
        mine = disabled.pop(str(self.store.path or self.store.uri), None) or self.store.health()
        return {
            "mlflow": {
                **mine,
                "pending": status["pending"],
                "held": status["held"],
                **({"other_stores_disabled": list(disabled.values())} if disabled else {}),
            }
        }

    def uri(self, collaboration: Mapping[str, Any]) -> str:
        """The collaboration's `mlops` section, else the shared directory."""
        return tracking_uri(collaboration.get("mlops"), self.default_uri)

    def started(self, uri: str, keys: Mapping[str, str], run: Mapping[str, Any]) -> None:
        params = {k: v for k, v in run.items() if k not in _RECORD}
        tags = {"synergos.optimization_id": params["optimization_id"]} if params.get("optimization_id") else None
        self.tracker.start_run(uri, keys, params, tags)

    def trained(self, uri: str, keys: Mapping[str, str], details: Mapping[str, Any]) -> None:
        model = self.outputs_dir / details["global"]["path"]
        run_dir = model.parent
        artifacts = sorted(run_dir.glob("*loss_history*.json")) + sorted(run_dir.glob("local_model_*.safetensors"))
        local = {pid: info.get("loss_history", {}) for pid, info in (details.get("locals") or {}).items()}
        self.tracker.log_training(uri, keys, details["global"].get("loss_history", {}), local, artifacts, model)

    def failed(self, uri: str, keys: Mapping[str, str], reason: str) -> None:
        self.tracker.fail_run(uri, keys, reason)

    def validated(
        self,
        uri: str,
        keys: Mapping[str, str],
        results: Mapping[str, Any],
        aggregate: Mapping[str, Any] | None,
        meta: str = "evaluate",
    ) -> None:
        per_participant = {pid: r[meta]["statistics"] for pid, r in results.items() if r.get(meta)}
        total = aggregate[meta]["statistics"] if aggregate and aggregate.get(meta) else None
        self.tracker.log_validation(uri, keys, per_participant, total)

    def close(self) -> None:
        self.tracker.close()
