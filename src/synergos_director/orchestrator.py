"""Cluster-mode orchestration: each phase 2/3 request becomes jobs on the Synergos MQ, published
in dependency order; the outcomes TTPs publish on `completed` are archived into the metadata store."""
from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable

from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_core.errors import InvalidRequest, UpstreamError
from synergos_core.jobs import build_grids, make_job
from synergos_core.model import check_combination
from synergos_core.preprocessing import PreprocessingOptions
from synergos_core.settings import DirectorSettings
from synergos_mq.connection import BrokerAddress, parse_queue_flag
from synergos_mq.consumer import CompletedConsumer
from synergos_mq.errors import MQError
from synergos_mq.publisher import Publisher

from synergos_mlops.records import RunRecorder

from .archive import Archivist
from .ledger import Entry, Ledger

log = logging.getLogger(__name__)
_RECORD = {"key", "created_at", "relations", "link", "run_id"}


class QueueOrchestrator:
    queued = True  # requests are accepted (202) and their records appear as jobs complete

    def __init__(self, store: Store, settings: DirectorSettings, jobs: JobBoard) -> None:
        self.store = store
        self.settings = settings
        self.jobs = jobs
        self.ledger = Ledger()
        self.mlflow = RunRecorder(settings.mlflow_dir, settings.outputs_dir, settings.data_dir / "mlflow_spool")
        self.archivist = Archivist(store, jobs, self._finished, self.mlflow)
        self._lock = threading.Lock()
        self._publishers: dict[tuple[str, int], Publisher] = {}
        self._archivers: dict[tuple[str, int], tuple[CompletedConsumer, threading.Thread]] = {}
        self._stop = threading.Event()
        self.optimizations: dict[str, Any] = {}
        self._optimizer: Any = None
        if settings.queue:
            self._connect(parse_queue_flag(settings.queue))

    # -- the MQ of a collaboration --
    def address(self, collab_id: str) -> BrokerAddress:
        section = self.store.get_collaboration(collab_id).get("mq")
        if section and section.get("host"):
            return BrokerAddress(host=section["host"], port=int((section.get("ports") or {}).get("main") or 5672))
        if self.settings.queue:
            return parse_queue_flag(self.settings.queue)
        raise InvalidRequest(f"collaboration {collab_id!r} names no MQ: call configure_mq(host, port) before "
                             "creating it, or start the Director with --queue rabbitmq HOST PORT", "mq.not_configured")

    def _connect(self, address: BrokerAddress) -> Publisher:
        key = (address.host, address.port)
        with self._lock:
            if key not in self._publishers:
                self._publishers[key] = Publisher(address)
                consumer = CompletedConsumer(address, self.archivist.archive, name=f"{self.settings.id}-archiver")
                thread = threading.Thread(target=consumer.run, args=(self._stop,), daemon=True,
                                          name=f"archiver-{address.host}:{address.port}")
                thread.start()
                self._archivers[key] = (consumer, thread)
            return self._publishers[key]

    async def aclose(self) -> None:
        if self._optimizer is not None:
            self._optimizer.close()
        self._stop.set()
        for consumer, thread in self._archivers.values():
            consumer.stop()
            thread.join(timeout=10)
        for publisher in self._publishers.values():
            publisher.close()
        self.mlflow.close()

    # -- submitting --
    def _submit(self, collab_id: str, process: str, kind: str, keys: dict[str, str], build: Callable[[], dict],
                after: list[tuple], marks: list[tuple]) -> dict:
        publisher = self._connect(self.address(collab_id))
        job_id = uuid.uuid4().hex
        board = self.jobs.start(kind, keys)
        self.jobs.update(board, state="queued", detail=f"job {job_id}")

        def publish() -> None:
            job = build()
            job["job_id"] = job_id
            try:
                publisher.publish_job(process, job)
            except MQError as exc:
                self._finished(job_id, "failed", f"could not queue the job: {exc}")
                raise UpstreamError(f"the MQ refused the job: {exc}", "mq.unavailable") from None

        entry = Entry(job_id, process, board, publish, marks=marks)
        self.ledger.submit(entry, after)
        return {"job_id": job_id, "kind": kind, "keys": keys, "state": "queued"}

    def _finished(self, job_id: str, status: str, detail: str | None = None) -> None:
        """Close a job in the ledger, publish what waited for it, fail what can no longer run."""
        entry, ready, failed = self.ledger.finish(job_id, status)
        if entry is not None:
            self.jobs.finish(entry.board, status, detail)
        for other in ready:
            try:
                other.publish()
            except UpstreamError as exc:
                log.warning("job %s could not be queued: %s", other.job_id, exc.detail)
        for other in failed:
            self._finished(other.job_id, "failed", f"a job it depended on failed ({job_id})")

    # -- phase 2A --
    async def align(self, collab_id: str, project_id: str, auto_align: bool = True, auto_fix: bool = True,
                    preprocessing: dict[str, Any] | None = None) -> list[dict]:
        project = self.store.get_project(collab_id, project_id)
        options = PreprocessingOptions.resolve(project, preprocessing)
        keys = {"collab_id": collab_id, "project_id": project_id}
        build_grids(self.store.project_grid(collab_id, project_id), [])  # refuse a project nobody joined, now

        def build() -> dict:
            experiments = {e["key"]["expt_id"]: e["model"] for e in self.store.list_experiments(collab_id, project_id)}
            grids = build_grids(self.store.project_grid(collab_id, project_id), [])
            return make_job("preprocess", keys, grids, {"action": project["action"], "auto_fix": auto_fix,
                                                        "experiments": experiments,
                                                        "preprocessing": options.model_dump()})
        mark = ("alignment", collab_id, project_id)
        return [self._submit(collab_id, "preprocess", "alignment", keys, build, [mark], [mark])]

    # -- phase 2B --

    def _job_inputs(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> tuple[dict, list, dict]:
        project = self.store.get_project(collab_id, project_id)
        expt = self.store.get_experiment(collab_id, project_id, expt_id)
        run = self.store.get_run(collab_id, project_id, expt_id, run_id)
        alignments = self.store.list_alignments(collab_id, project_id)
        grids = build_grids(self.store.project_grid(collab_id, project_id), alignments)
        hp = {k: v for k, v in run.items() if k not in _RECORD}
        params = {"action": project["action"], "model": expt["model"], "hyperparameters": hp}
        return params, grids, {a["key"]["participant_id"]: a for a in alignments}

    async def train(self, collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None,
                    auto_align: bool = True) -> list[dict]:
        project = self.store.get_project(collab_id, project_id)
        pairs = self.store.run_scope(collab_id, project_id, expt_id, run_id)
        align_mark = ("alignment", collab_id, project_id)
        records = []
        if auto_align and not self.ledger.latest(align_mark) and not self.store.list_alignments(collab_id, project_id):
            records += await self.align(collab_id, project_id)
        alignments = self.store.list_alignments(collab_id, project_id)
        classes = len(alignments[0]["superset"]["y"]) if alignments and project["action"] == "classify" else None
        if self.ledger.latest(align_mark):
            classes = None  # the pending alignment may still resize the model
        for expt, run in pairs:
            check_combination(expt["model"], {k: v for k, v in run.items() if k not in _RECORD}, project["action"],
                              classes)
        for expt, run in pairs:
            e, r = expt["key"]["expt_id"], run["key"]["run_id"]
            records.append(self.submit_training(collab_id, project_id, e, r))
        return records

    def submit_training(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> dict:
        keys = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id, "run_id": run_id}

        def build() -> dict:
            params, grids, _ = self._job_inputs(collab_id, project_id, expt_id, run_id)
            self.mlflow.started(self.mlflow.uri(self.store.get_collaboration(collab_id)), keys,
                                params["hyperparameters"])
            return make_job("train", keys, grids, params)
        mark = ("training", collab_id, project_id, expt_id, run_id)
        return self._submit(collab_id, "train", "training", keys, build,
                            [("alignment", collab_id, project_id), mark], [mark])

    # -- phase 3 --
    async def validate(self, collab_id: str, project_id: str, expt_id: str | None = None,
                       run_id: str | None = None, participant_id: str | None = None) -> list[dict]:
        records = []
        for expt, run in self.store.run_scope(collab_id, project_id, expt_id, run_id):
            e, r = expt["key"]["expt_id"], run["key"]["run_id"]
            records.append(self.submit_evaluation(collab_id, project_id, e, r, "evaluate",
                                                  [participant_id] if participant_id else None))
        return records

    def submit_evaluation(self, collab_id: str, project_id: str, expt_id: str, run_id: str, meta: str,
                          participants: list[str] | None) -> dict:
        training = ("training", collab_id, project_id, expt_id, run_id)
        if not self.ledger.latest(training) and not self.store.list_models(collab_id, project_id, expt_id, run_id):
            raise InvalidRequest(f"run {run_id!r} has no trained model yet; train it first", "model.not_trained")
        keys = {"collab_id": collab_id, "project_id": project_id, "expt_id": expt_id, "run_id": run_id}
        if participants:
            keys["participant_id"] = participants[0]

        def build() -> dict:
            params, grids, alignments = self._job_inputs(collab_id, project_id, expt_id, run_id)
            params.update(meta=meta, participants=participants)
            if meta == "predict":
                params["superset"] = alignments[participants[0]]["superset"]
            return make_job("evaluate", keys, grids, params)
        kind = "validation" if meta == "evaluate" else "prediction"
        return self._submit(collab_id, "evaluate", kind, keys, build,
                            [("alignment", collab_id, project_id), training], [])

    async def predict(self, participant_id: str, collab_id: str, tags: dict[str, list[list[str]]],
                      project_id: str | None = None, expt_id: str | None = None, run_id: str | None = None
                      ) -> list[dict]:
        projects = [project_id] if project_id else sorted(tags)
        if not projects:
            raise InvalidRequest("name a project, or give predict tags keyed by project", "prediction.no_project")
        records = []
        for p in projects:
            self.store.get_project(collab_id, p)
            if p in tags:
                self.store.update_tags(collab_id, p, participant_id, {"predict": tags[p]})
            for expt, run in self.store.run_scope(collab_id, p, expt_id, run_id):
                e, r = expt["key"]["expt_id"], run["key"]["run_id"]
                if self.ledger.latest(("training", collab_id, p, e, r)) or self.store.list_models(collab_id, p, e, r):
                    records.append(self.submit_evaluation(collab_id, p, e, r, "predict", [participant_id]))
        return records

    async def optimize(self, collab_id: str, project_id: str, expt_id: str, request: dict[str, Any]) -> list[dict]:
        from .optimizations import Optimization

        self.store.get_experiment(collab_id, project_id, expt_id)
        self.address(collab_id)  # refuse now if there is no MQ to run trials on
        grids = build_grids(self.store.project_grid(collab_id, project_id), [])
        optimization = Optimization(self, collab_id, project_id, expt_id, request, len(grids))
        self.optimizations[optimization.optimization_id] = optimization
        with self._lock:
            if self._optimizer is None:
                from .optimizations import OptimizationRunner

                self._optimizer = OptimizationRunner(self.settings)
        self._optimizer.submit(optimization)
        return [optimization.summary()]
