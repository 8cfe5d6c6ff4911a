"""Basic-mode orchestration: gather a request's inputs from the metadata store, run the
operations on grid 0, and archive what they produce. REST handlers call these methods."""
from __future__ import annotations

import logging
from typing import Any

import httpx

from synergos_core.alignment import fix_model_io
from synergos_core.model import check_combination
from synergos_core.jobs import build_grids
from synergos_core.errors import Forbidden, InvalidRequest, NotFound
from synergos_core.preprocessing import PreprocessingOptions
from synergos_core.settings import TTPSettings
from synergos_mlops.records import RunRecorder

from . import operations
from .grid import GridNode
from synergos_contract.jobs import JobBoard, failure_reason
from synergos_contract.store import Store

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, store: Store, settings: TTPSettings, jobs: JobBoard) -> None:
        self.store = store
        self.settings = settings
        self.jobs = jobs
        self.limits = settings.federation
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.http_timeout_s, connect=5.0))
        self.mlflow = RunRecorder(settings.mlflow_dir, settings.outputs_dir, settings.data_dir / "mlflow_spool")

    async def aclose(self) -> None:
        await self.http.aclose()
        self.mlflow.close()

    # -- inputs --
    def grid_nodes(self, collab_id: str, project_id: str, grid: int = 0,
                   participants: list[str] | None = None) -> list[GridNode]:
        grids = build_grids(self.store.project_grid(collab_id, project_id),
                            self.store.list_alignments(collab_id, project_id))
        nodes = [GridNode(**node) for node in grids[min(grid, len(grids) - 1)]
                 if participants is None or node["participant_id"] in participants]
        if not nodes:
            raise NotFound(f"participant(s) {', '.join(participants or [])} not registered to {project_id!r}",
                           "registration.not_found")
        return nodes

    # -- phase 2A --
    async def align(self, collab_id: str, project_id: str, auto_align: bool = True, auto_fix: bool = True,
                    preprocessing: dict[str, Any] | None = None) -> list[dict]:
        project = self.store.get_project(collab_id, project_id)
        options = PreprocessingOptions.resolve(project, preprocessing)
        job = self.jobs.start("alignment", {"collab_id": collab_id, "project_id": project_id})
        with self.jobs.failing(job):
            if auto_align:
                nodes = self.grid_nodes(collab_id, project_id)
                alignment, polled = await operations.align(self.http, nodes, collab_id, project_id,
                                                           project["action"])
                for pid, details in operations.alignment_records(alignment, polled, options).items():
                    self.store.put_alignment(collab_id, project_id, pid, details)
                if auto_fix:
                    width, classes = len(alignment.superset["X"]), len(alignment.superset["y"])
                    for expt in self.store.list_experiments(collab_id, project_id):
                        fixed = fix_model_io(_layers(expt), width, classes, project["action"])
                        self.store.set_experiment_model(collab_id, project_id, expt["key"]["expt_id"], fixed)
        self.jobs.finish(job, "completed")
        return self.store.list_alignments(collab_id, project_id)

    # -- phase 2B --
    async def train(self, collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None,
                    auto_align: bool = True) -> list[dict]:
        project = self.store.get_project(collab_id, project_id)
        pairs = self.store.run_scope(collab_id, project_id, expt_id, run_id)
        if auto_align and not self.store.list_alignments(collab_id, project_id):
            await self.align(collab_id, project_id)
            pairs = self.store.run_scope(collab_id, project_id, expt_id, run_id)  # auto_fix may have resized models
        nodes = self.grid_nodes(collab_id, project_id)
        alignments = self.store.list_alignments(collab_id, project_id)
        n_classes = len(alignments[0]["superset"]["y"]) if alignments and "superset" in alignments[0] else None
        if project["action"] != "classify":
            n_classes = None
        for expt, run in pairs:  # refuse what cannot train before any Worker is touched
            check_combination(_layers(expt), _hyperparameters(run), project["action"], n_classes)
        records = []
        for expt, run in pairs:
            keys = (collab_id, project_id, expt["key"]["expt_id"], run["key"]["run_id"])
            hp = _hyperparameters(run)
            job = self.jobs.start("training", _keys(keys), rounds=int(hp.get("rounds", 10)))

            def progress(job=job, **info: Any) -> None:
                self.jobs.update(job, round=info["round"], metrics={k: v for k, v in info.items() if k != "round"
                                                                    and k != "rounds"})
            uri = self.mlflow.uri(self.store.get_collaboration(collab_id))
            self.mlflow.started(uri, _keys(keys), run)
            try:
                details = await operations.train_run(self.http, self.limits, keys, nodes, project["action"],
                                                     _layers(expt), hp, self.settings.outputs_dir, progress)
            except BaseException as exc:
                reason = failure_reason(exc)
                self.jobs.finish(job, "failed", reason)
                self.mlflow.failed(uri, _keys(keys), reason)
                raise
            records.append(self.store.put_model(*keys, details))
            self.mlflow.trained(uri, _keys(keys), details)
            self.jobs.finish(job, "completed")
            log.info("TRAINING COMPLETED - %s", "/".join(keys[1:]))
        return records

    async def optimize(self, collab_id: str, project_id: str, expt_id: str, request: dict[str, Any]) -> list[dict]:
        raise Forbidden("hyper-parameter optimization runs on a Synergos Cluster: send it to the Director",
                        "optimization.cluster_only")

    # -- phase 3A --
    async def validate(self, collab_id: str, project_id: str, expt_id: str | None = None,
                       run_id: str | None = None, participant_id: str | None = None) -> list[dict]:
        project = self.store.get_project(collab_id, project_id)
        pairs = self.store.run_scope(collab_id, project_id, expt_id, run_id)
        nodes = self.grid_nodes(collab_id, project_id, participants=[participant_id] if participant_id else None)
        records = []
        for expt, run in pairs:
            keys = (collab_id, project_id, expt["key"]["expt_id"], run["key"]["run_id"])
            if not self.store.list_models(*keys):
                raise InvalidRequest(f"run {keys[3]!r} has no trained model yet; train it first", "model.not_trained")
            with self.jobs.failing(self.jobs.start("validation", _keys(keys))) as job:
                inference = await operations.infer_run(self.http, self.limits, keys, nodes, project["action"],
                                                       _layers(expt), _hyperparameters(run),
                                                       self.settings.outputs_dir, "evaluate")
            results = inference.results
            for pid, details in results.items():
                records.append(self.store.put_validation(*keys, pid, details))
            summary = inference.aggregate("evaluate")
            if summary and not participant_id:
                records.append(self.store.put_validation(*keys, "aggregate", summary))
            self.mlflow.validated(self.mlflow.uri(self.store.get_collaboration(collab_id)), _keys(keys), results,
                                  summary if not participant_id else None)
            self.jobs.finish(job, "completed")
            self.jobs.update(job, metrics=summary["evaluate"]["statistics"] if summary else None)
            log.info("VALIDATION COMPLETED - %s", "/".join(keys[1:]))
        return records

    # -- phase 3B --
    async def predict(self, participant_id: str, collab_id: str, tags: dict[str, list[list[str]]],
                      project_id: str | None = None, expt_id: str | None = None, run_id: str | None = None
                      ) -> list[dict]:
        projects = [project_id] if project_id else sorted(tags)
        if not projects:
            raise InvalidRequest("name a project, or give predict tags keyed by project", "prediction.no_project")
        records = []
        for p in projects:
            project = self.store.get_project(collab_id, p)
            if p in tags:
                self.store.update_tags(collab_id, p, participant_id, {"predict": tags[p]})
            nodes = self.grid_nodes(collab_id, p, participants=[participant_id])
            await self._check_drift(collab_id, p, nodes[0], project["action"])
            for expt, run in self.store.run_scope(collab_id, p, expt_id, run_id):
                keys = (collab_id, p, expt["key"]["expt_id"], run["key"]["run_id"])
                if not self.store.list_models(*keys):
                    continue
                job = self.jobs.start("prediction", {**_keys(keys), "participant_id": participant_id})
                with self.jobs.failing(job):
                    results = (await operations.infer_run(self.http, self.limits, keys, nodes, project["action"],
                                                          _layers(expt), _hyperparameters(run),
                                                          self.settings.outputs_dir, "predict")).results
                self.jobs.finish(job, "completed")
                if participant_id in results:
                    records.append(self.store.put_prediction(participant_id, *keys, results[participant_id]))
        return records

    async def _check_drift(self, collab_id: str, project_id: str, node: GridNode, action: str) -> None:
        """Predict data must fit the trained layout: align its headers to the stored superset."""
        alignment = next((a for a in self.store.list_alignments(collab_id, project_id)
                          if a["key"]["participant_id"] == node.participant_id), None)
        if alignment is None or "superset" not in alignment:
            return
        spacers = await operations.predict_spacers(self.http, node, collab_id, project_id, action,
                                                   alignment["superset"])
        node.alignment["predict"] = spacers
        self.store.put_alignment(collab_id, project_id, node.participant_id, {**alignment_details(alignment),
                                                                              "predict": spacers})


def alignment_details(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in {"key", "created_at", "relations", "link"}}


def _layers(expt: dict) -> list[dict]:
    return list(expt["model"])


_RUN_META = {"key", "created_at", "relations", "link", "run_id"}


def _hyperparameters(run: dict) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in _RUN_META}


def _keys(keys: tuple[str, str, str, str]) -> dict[str, str]:
    return dict(zip(("collab_id", "project_id", "expt_id", "run_id"), keys))
