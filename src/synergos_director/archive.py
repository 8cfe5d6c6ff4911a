"""Archiving what the TTPs report on `completed`: records into the metadata store, once per job."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_mlops.records import RunRecorder

log = logging.getLogger("synergos_director")


class Archivist:
    def __init__(self, store: Store, jobs: JobBoard, finished: Callable[[str, str, str | None], None],
                 mlflow: RunRecorder) -> None:
        self.mlflow = mlflow
        self.store = store
        self.jobs = jobs
        self.finished = finished
        self._done: set[str] = set()
        self._lock = threading.Lock()
        self.listeners: list[Callable[[dict], None]] = []

    def archive(self, event: dict) -> None:
        """Apply one completed event; a repeated event (at-least-once delivery) changes nothing."""
        job_id = event.get("job_id")
        with self._lock:
            if job_id in self._done:
                return
        keys = event.get("keys") or {}
        if event.get("status") != "completed":
            error = event.get("error") or {}
            detail = error.get("detail") or error.get("message") or str(error) or "failed"
            log.warning("%s FAILED - %s: %s", str(event.get("process", "job")).upper(), "/".join(keys.values()), detail)
            if event.get("process") == "train":
                self.mlflow.failed(self._uri(keys), keys, detail)
            self._close(job_id, "failed", detail, event)
            return
        outcome = event.get("outcome") or {}
        process = event.get("process")
        c, p = keys.get("collab_id"), keys.get("project_id")
        if process == "preprocess":
            for pid, details in (outcome.get("alignments") or {}).items():
                self.store.put_alignment(c, p, pid, details)
            for expt_id, model in (outcome.get("experiments") or {}).items():
                self.store.set_experiment_model(c, p, expt_id, model)
            log.info("ALIGNMENT COMPLETED - %s", p)
        elif process == "train":
            self.store.put_model(c, p, keys["expt_id"], keys["run_id"], outcome)
            self.mlflow.trained(self._uri(keys), keys, outcome)
            log.info("TRAINING COMPLETED - %s/%s/%s", p, keys["expt_id"], keys["run_id"])
        elif process == "evaluate":
            meta = outcome.get("meta", "evaluate")
            e, r = keys["expt_id"], keys["run_id"]
            for pid, details in (outcome.get("results") or {}).items():
                if meta == "predict":
                    self._update_predict_spacers(c, p, pid, (outcome.get("spacers") or {}).get(pid))
                    self.store.put_prediction(pid, c, p, e, r, details)
                else:
                    self.store.put_validation(c, p, e, r, pid, details)
            whole = meta == "evaluate" and outcome.get("aggregate") and "participant_id" not in keys
            if whole:
                self.store.put_validation(c, p, e, r, "aggregate", outcome["aggregate"])
            if meta == "evaluate":
                self.mlflow.validated(self._uri(keys), keys, outcome.get("results") or {},
                                      outcome.get("aggregate") if whole else None)
            log.info("%s COMPLETED - %s/%s/%s", "PREDICTION" if meta == "predict" else "VALIDATION", p, e, r)
        self._close(job_id, "completed", None, event)

    def _uri(self, keys: dict) -> str:
        return self.mlflow.uri(self.store.get_collaboration(keys["collab_id"]))

    def _update_predict_spacers(self, c: str, p: str, pid: str, spacers: dict | None) -> None:
        if spacers is None:
            return
        current = next((a for a in self.store.list_alignments(c, p) if a["key"]["participant_id"] == pid), None)
        if current is not None:
            details = {k: v for k, v in current.items() if k not in {"key", "created_at", "relations", "link"}}
            self.store.put_alignment(c, p, pid, {**details, "predict": spacers})

    def _close(self, job_id: str, status: str, detail: str | None, event: dict) -> None:
        with self._lock:
            self._done.add(job_id)
        self.finished(job_id, status, detail)
        for listener in list(self.listeners):
            listener(event)
