"""Cluster-mode orchestration: each phase 2/3 request is planned with `synergos_contract.planning`
and its jobs are published on the Synergos MQ in dependency order; the outcomes TTPs publish on
`completed` are archived into the metadata store. The `submit_*` methods are what an
optimization trial calls too, in-process."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from synergos_contract import planning
from synergos_contract.jobs import JobBoard, failure_reason
from synergos_contract.planning import PlannedJob
from synergos_contract.schemas import OptimizationRequest
from synergos_contract.store import Store
from synergos_core.errors import ErrorCode, InvalidRequest, UpstreamError
from synergos_core.jobs import build_grids
from synergos_core.records import OptimizationSummary, QueuedJob
from synergos_core.settings import DirectorSettings
from synergos_mlops.records import RunRecorder
from synergos_mq.connection import BrokerAddress, parse_queue_flag
from synergos_mq.consumer import CompletedConsumer
from synergos_mq.errors import MQError
from synergos_mq.publisher import Publisher

from .archive import Archivist
from .ledger import Entry, Ledger

if TYPE_CHECKING:
    from .optimizations import Optimization, OptimizationRunner

log = logging.getLogger(__name__)


class QueueOrchestrator:
    queued = True  # requests are accepted (202) and their records appear as jobs complete

    def __init__(self, store: Store, settings: DirectorSettings, jobs: JobBoard) -> None:
        self.store = store
        self.settings = settings
        self.jobs = jobs
        self.ledger = Ledger()
        self.mlflow = RunRecorder(
            settings.mlflow_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
            settings.outputs_dir,  # type: ignore[arg-type]
            settings.data_dir / "mlflow_spool",  # type: ignore[operator]
        )
        self.archivist = Archivist(store, self._finished, self.mlflow)
        self._lock = threading.Lock()
        self._publishers: dict[tuple[str, int], Publisher] = {}
        self._archivers: dict[tuple[str, int], tuple[CompletedConsumer, threading.Thread]] = {}
        self._stop = threading.Event()
        self.optimizations: dict[str, Optimization] = {}
        self._optimizer: OptimizationRunner | None = None
        if settings.queue:
            self._connect(parse_queue_flag(settings.queue))

    # -- the MQ of a collaboration --
    def address(self, collab_id: str) -> BrokerAddress:
        section = self.store.get_collaboration(collab_id).mq
        if section and section.host:
            return BrokerAddress(host=section.host, port=int(section.ports.get("main") or 5672))
        if self.settings.queue:
            return parse_queue_flag(self.settings.queue)
        raise InvalidRequest(
            f"collaboration {collab_id!r} names no MQ: call configure_mq(host, port) before "
            "creating it, or start the Director with --queue rabbitmq HOST PORT",
            ErrorCode.MQ_NOT_CONFIGURED,
        )

    def _connect(self, address: BrokerAddress) -> Publisher:
        key = (address.host, address.port)
        with self._lock:
            if key not in self._publishers:
                self._publishers[key] = Publisher(address)
                consumer = CompletedConsumer(address, self.archivist.archive, name=f"{self.settings.id}-archiver")
                thread = threading.Thread(
                    target=consumer.run, args=(self._stop,), daemon=True, name=f"archiver-{address.host}:{address.port}"
                )
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

    # -- submitting: a plan's jobs, each published once what it waits for is done --
    def _pending(self, mark: planning.Mark) -> bool:
        return self.ledger.latest(mark) is not None

    def _submit(self, collab_id: str, planned: list[PlannedJob]) -> list[QueuedJob]:
        publisher = self._connect(self.address(collab_id))  # no MQ: refused before anything is queued
        return [self._submit_one(publisher, item) for item in planned]

    def _submit_one(self, publisher: Publisher, item: PlannedJob) -> QueuedJob:
        job_id = uuid.uuid4().hex
        board = self.jobs.start(item.kind, item.keys)
        self.jobs.update(board, state="queued", detail=f"job {job_id}")

        def publish() -> None:
            try:
                job = item.build()  # from the store as it is now: e.g. the model as the alignment resized it
                if item.process == "train":
                    planning.training_started(self.store, self.mlflow, item.keys)
                job["job_id"] = job_id
                publisher.publish_job(item.process, job)
            except MQError as exc:
                self._finished(job_id, "failed", f"could not queue the job: {exc}")
                raise UpstreamError(f"the MQ refused the job: {exc}", ErrorCode.MQ_UNAVAILABLE) from None
            except Exception as exc:  # e.g. what it waited for made it impossible (a model resized for it)
                self._finished(job_id, "failed", failure_reason(exc))
                raise

        self.ledger.submit(Entry(job_id, item.process, board, publish, marks=list(item.marks)), list(item.after))
        return QueuedJob(job_id=job_id, kind=item.kind, keys=item.keys)

    def _finished(self, job_id: str, status: str, detail: str | None = None) -> None:
        """Close a job in the ledger, publish what waited for it, fail what can no longer run."""
        entry, ready, failed = self.ledger.finish(job_id, status, detail)
        if entry is not None:
            self.jobs.finish(entry.board, "completed" if status == "completed" else "failed", detail)
        for other in ready:
            try:
                other.publish()
            except Exception as exc:  # noqa: BLE001 (closed as failed, with the reason, by `publish`)
                log.warning("job %s could not be queued: %s", other.job_id, failure_reason(exc))
        for other in failed:
            self._finished(other.job_id, "failed", f"a job it depended on failed ({job_id})")

    def wait(self, job_id: str, timeout_s: float) -> tuple[str, str | None]:
        """How a submitted job ended (completed or failed, and why), once the archive closes it."""
        return self.ledger.wait(job_id, timeout_s)

    def submit_alignment(
        self, collab_id: str, project_id: str, auto_fix: bool = True, preprocessing: dict[str, Any] | None = None
    ) -> list[QueuedJob]:
        planned = planning.plan_alignment(self.store, collab_id, project_id, auto_fix, preprocessing)
        return self._submit(collab_id, [planned])

    def submit_training(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
    ) -> list[QueuedJob]:
        planned = planning.plan_training(self.store, collab_id, project_id, expt_id, run_id, auto_align, self._pending)
        return self._submit(collab_id, planned)

    def submit_validation(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
    ) -> list[QueuedJob]:
        planned = planning.plan_validation(
            self.store, collab_id, project_id, expt_id, run_id, participant_id, self._pending
        )
        return self._submit(collab_id, planned)

    def submit_prediction(
        self,
        participant_id: str,
        collab_id: str,
        tags: dict[str, list[list[str]]],
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
    ) -> list[QueuedJob]:
        planned = planning.plan_prediction(
            self.store, participant_id, collab_id, tags, project_id, expt_id, run_id, self._pending
        )
        return self._submit(collab_id, planned)

    # -- the REST routes' orchestration --
    async def align(
        self,
        collab_id: str,
        project_id: str,
        auto_align: bool = True,
        auto_fix: bool = True,
        preprocessing: dict[str, Any] | None = None,
    ) -> list[QueuedJob]:
        return self.submit_alignment(collab_id, project_id, auto_fix, preprocessing)

    async def train(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
    ) -> list[QueuedJob]:
        return self.submit_training(collab_id, project_id, expt_id, run_id, auto_align)

    async def validate(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
    ) -> list[QueuedJob]:
        return self.submit_validation(collab_id, project_id, expt_id, run_id, participant_id)

    async def predict(
        self,
        participant_id: str,
        collab_id: str,
        tags: dict[str, list[list[str]]],
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
    ) -> list[QueuedJob]:
        return self.submit_prediction(participant_id, collab_id, tags, project_id, expt_id, run_id)

    async def champion(self, collab_id: str, project_id: str, expt_id: str) -> dict[str, Any] | None:
        uri = self.mlflow.uri(self.store.get_collaboration(collab_id).details())
        return await asyncio.to_thread(self.mlflow.tracker.champion, uri, collab_id, project_id, expt_id)

    async def optimize(
        self, collab_id: str, project_id: str, expt_id: str, request: OptimizationRequest
    ) -> list[OptimizationSummary]:
        from .optimizations import Optimization, OptimizationRunner

        self.store.get_experiment(collab_id, project_id, expt_id)
        self.address(collab_id)  # refuse now if there is no MQ to run trials on
        grids = build_grids(self.store.project_grid(collab_id, project_id), [])
        optimization = Optimization(self, collab_id, project_id, expt_id, request, len(grids))
        self.optimizations[optimization.optimization_id] = optimization
        with self._lock:
            if self._optimizer is None:
                self._optimizer = OptimizationRunner(self.settings)
        self._optimizer.submit(optimization)
        return [optimization.summary()]
