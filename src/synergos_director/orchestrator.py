"""Cluster-mode orchestration: each phase 2/3 request is planned with `synergos_contract.planning`
and its jobs are published on the Synergos MQ in dependency order; the outcomes TTPs publish on
`completed` are archived into the metadata store. The `submit_*` methods are what an
optimization trial calls too, in-process.

Every job is journaled in the Director's store (`journal`) before it is published, and a job that
waits for another waits there: a restarted Director shows every journaled job on its board again,
tracks the open ones and publishes those whose dependencies completed meanwhile (retrying while
the broker is unreachable), before it takes requests."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
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
from synergos_mq.loop import next_backoff
from synergos_mq.publisher import Publisher

from .archive import Archivist
from .journal import Journal, JournaledJob, rebuild
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
        self.journal = Journal(store.engine)
        self.ledger = Ledger(self.journal)
        self.mlflow = RunRecorder(
            settings.mlflow_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
            settings.outputs_dir,  # type: ignore[arg-type]
            settings.data_dir / "mlflow_spool",  # type: ignore[operator]
        )
        self.archivist = Archivist(store, self._finished, self.mlflow, seen=self.ledger.seen, retrying=self._retrying)
        self._lock = threading.Lock()
        self._publishers: dict[tuple[str, int], Publisher] = {}
        self._archivers: dict[tuple[str, int], tuple[CompletedConsumer, threading.Thread]] = {}
        self._stop = threading.Event()
        self.optimizations: dict[str, Optimization] = {}
        self._optimizer: OptimizationRunner | None = None
        self._recovery: threading.Thread | None = None
        ready = self._restore()  # before any completed event is archived: they may close restored jobs
        if settings.queue:
            self._connect(parse_queue_flag(settings.queue))
        for collab_id in sorted({e.keys["collab_id"] for e in self.ledger.open_entries()}):
            try:  # the completed events of restored jobs arrive on their collaboration's MQ
                self._connect(self.address(collab_id))
            except Exception as exc:  # noqa: BLE001 - the collaboration is gone or names no MQ: said below
                log.warning("restored jobs of %s: no MQ to hear from (%s)", collab_id, failure_reason(exc))
        if ready:
            self._recovery = threading.Thread(
                target=self._republish, args=(ready,), daemon=True, name="director-republish"
            )
            self._recovery.start()

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
        if self._recovery is not None:
            self._recovery.join(timeout=10)
        for consumer, thread in self._archivers.values():
            consumer.stop()
            thread.join(timeout=10)
        for publisher in self._publishers.values():
            publisher.close()
        self.mlflow.close()

    # -- submitting: a plan's jobs, each published once what it waits for is done --
    def _pending(self, mark: planning.Mark) -> bool:
        return self.ledger.latest(mark) is not None

    def _submit(
        self, collab_id: str, planned: list[PlannedJob], recipe: dict[str, Any] | None = None
    ) -> list[QueuedJob]:
        publisher = self._connect(self.address(collab_id))  # no MQ: refused before anything is queued
        return [self._submit_one(publisher, item, recipe if item.kind == "alignment" else None) for item in planned]

    def _submit_one(self, publisher: Publisher, item: PlannedJob, recipe: dict[str, Any] | None) -> QueuedJob:
        job_id = uuid.uuid4().hex
        board = self.jobs.start(item.kind, item.keys, job_id=job_id)  # on the board by the id the request answers
        self.jobs.update(board, state="queued", detail=f"job {job_id}")
        entry = Entry(
            job_id,
            item.process,
            board,
            self._publisher_of(job_id, item.process, item.keys, lambda: publisher, lambda: item.build),
            marks=list(item.marks),
            kind=item.kind,
            keys=dict(item.keys),
            recipe=dict(recipe or {}),
            rounds=item.rounds,
        )

        def waiting(on: set[str]) -> None:
            self.jobs.update(board, detail=f"job {job_id}, waiting for job {', '.join(sorted(on))}")

        if self.ledger.submit(entry, list(item.after), waiting):
            self._publish(entry)
        return QueuedJob(job_id=job_id, kind=item.kind, keys=item.keys)

    def _publisher_of(
        self,
        job_id: str,
        process: str,
        keys: dict[str, str],
        publisher: Callable[[], Publisher],
        build: Callable[[], Callable[[], dict[str, Any]]],
    ) -> Callable[[], None]:
        def publish() -> None:
            job = build()()  # from the store as it is now: e.g. the model as the alignment resized it
            if process == "train":
                planning.training_started(self.store, self.mlflow, keys)
            job["job_id"] = job_id
            publisher().publish_job(process, job)

        return publish

    def _publish(self, entry: Entry, *, fail_if_mq_down: bool = True) -> None:
        """Build and publish a job whose turn has come, and journal that it is on the MQ. A job
        that cannot be built fails with the reason; one the MQ refuses too, unless
        `fail_if_mq_down` is False (then the MQError is raised and the job stays waiting)."""
        try:
            entry.publish()
        except MQError as exc:
            if not fail_if_mq_down:
                raise
            self._finished(entry.job_id, "failed", f"could not queue the job: {exc}")
            raise UpstreamError(f"the MQ refused the job: {exc}", ErrorCode.MQ_UNAVAILABLE) from None
        except Exception as exc:  # e.g. what it waited for made it impossible (a model resized for it)
            self._finished(entry.job_id, "failed", failure_reason(exc))
            raise
        self.ledger.published(entry.job_id)
        self.jobs.update(entry.board, detail=f"job {entry.job_id}")

    def _finished(self, job_id: str, status: str, detail: str | None = None) -> None:
        """Close a job in the ledger, publish what waited for it, fail what can no longer run."""
        entry, ready, failed = self.ledger.finish(job_id, status, detail)
        if entry is not None:
            self.jobs.finish(entry.board, "completed" if status == "completed" else "failed", detail)
        for other in ready:
            try:
                self._publish(other)
            except Exception as exc:  # noqa: BLE001 (closed as failed, with the reason, by `_publish`)
                log.warning("job %s could not be queued: %s", other.job_id, failure_reason(exc))
        for other in failed:
            self._finished(other.job_id, "failed", f"a job it depended on failed ({job_id})")

    def _retrying(self, job_id: str, detail: str) -> None:
        """A TTP's attempt at the job failed and it will try again: say so on the board."""
        entry = self.ledger.entry(job_id)
        if entry is not None:
            self.jobs.update(entry.board, state="queued", detail=f"job {job_id}: {detail}")

    # -- after a restart: the journal's jobs, on the board and tracked again --
    def _restore(self) -> list[Entry]:
        """Show the journal's recent jobs on the board and track the open ones again; returns the
        waiting jobs whose dependencies are done (to publish). Jobs whose dependency failed fail."""
        pruned = self.journal.prune()
        journaled = self.journal.recent(limit=500)
        states = self.journal.states()
        boards: dict[str, Any] = {}
        for job in journaled:
            board = self.jobs.start(job.kind, job.keys, job_id=job.job_id)
            self.jobs.update(board, started_at=job.created_at.isoformat())
            if job.open:
                waiting = [d for d in job.waits_for if states.get(d) in ("waiting", "published")]
                detail = f"job {job.job_id}" + (f", waiting for job {', '.join(waiting)}" if waiting else "")
                self.jobs.update(board, state="queued", detail=detail)
            else:
                self.jobs.finish(board, "completed" if job.state == "completed" else "failed", job.detail)
            boards[job.job_id] = board
        ready, doomed = self.ledger.restore(
            journaled, states, lambda job: self._restored_entry(job, boards[job.job_id])
        )
        opened = sum(job.open for job in journaled)
        if journaled:
            log.info(
                "job journal: %d jobs restored (%d open, %d of them to publish now)%s",
                len(journaled),
                opened,
                len(ready),
                f"; {pruned} finished jobs older than a week forgotten" if pruned else "",
            )
        for entry, failed in doomed:
            self._finished(entry.job_id, "failed", f"a job it depended on failed ({failed})")
        return ready

    def _restored_entry(self, job: JournaledJob, board: Any) -> Entry:
        collab_id = job.keys["collab_id"]
        return Entry(
            job.job_id,
            job.process,
            board,
            self._publisher_of(
                job.job_id,
                job.process,
                job.keys,
                lambda: self._connect(self.address(collab_id)),
                lambda: rebuild(self.store, job).build,
            ),
            marks=list(job.marks),
            kind=job.kind,
            keys=dict(job.keys),
            recipe=dict(job.recipe),
            rounds=job.rounds,
        )

    def _republish(self, ready: list[Entry]) -> None:
        """Publish restored jobs whose turn came while the Director was down; while the MQ is
        unreachable, try again with backoff (the jobs stay waiting, on the board and journaled)."""
        backoff = 1.0
        pending = list(ready)
        while pending and not self._stop.is_set():
            entry = pending[0]
            try:
                self._publish(entry, fail_if_mq_down=False)
            except MQError as exc:
                log.warning("restored job %s not queued yet (%s); retrying in %.0f s", entry.job_id, exc, backoff)
                self._stop.wait(backoff)
                backoff = next_backoff(backoff, 1.0, 30.0)
                continue
            except Exception as exc:  # noqa: BLE001 (closed as failed, with the reason, by `_publish`)
                log.warning("restored job %s could not be queued: %s", entry.job_id, failure_reason(exc))
            else:
                log.info("restored job %s (%s of %s) queued", entry.job_id, entry.kind, "/".join(entry.keys.values()))
            pending.pop(0)
            backoff = 1.0

    def health(self) -> dict[str, Any]:
        """What the Director's /health adds: its open jobs and MLflow tracking."""
        entries = self.ledger.open_entries()
        waiting = sum(1 for e in entries if e.waits_for)
        return {"jobs": {"open": len(entries), "waiting": waiting}, **self.mlflow.health()}

    def wait(self, job_id: str, timeout_s: float) -> tuple[str, str | None]:
        """How a submitted job ended (completed or failed, and why), once the archive closes it."""
        return self.ledger.wait(job_id, timeout_s)

    def submit_alignment(
        self, collab_id: str, project_id: str, auto_fix: bool = True, preprocessing: dict[str, Any] | None = None
    ) -> list[QueuedJob]:
        planned = planning.plan_alignment(self.store, collab_id, project_id, auto_fix, preprocessing)
        return self._submit(collab_id, [planned], {"auto_fix": auto_fix, "preprocessing": preprocessing})

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
