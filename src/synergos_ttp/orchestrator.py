"""Basic-mode orchestration: plan a request with `synergos_contract.planning`, run each job it
makes in-process on grid 0 with the code a cluster TTP runs queued jobs with
(`operations.run_job`), and archive what they produce. REST handlers call these methods."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from synergos_contract import planning
from synergos_contract.jobs import JobBoard, failure_reason
from synergos_contract.planning import PlannedJob
from synergos_contract.schemas import OptimizationRequest
from synergos_contract.serving import service_credentials
from synergos_contract.store import Store
from synergos_core.errors import ErrorCode, Forbidden
from synergos_core.records import Alignment, Job, Model, OptimizationSummary, Prediction, Record, Validation
from synergos_core.settings import TTPSettings
from synergos_mlops.records import RunRecorder

from . import operations
from .grid import WorkerClient
from .recovery import Recovery

log = logging.getLogger(__name__)


class Orchestrator:
    queued = False  # the work is done within the request: its records answer it

    def __init__(self, store: Store, settings: TTPSettings, jobs: JobBoard) -> None:
        self.store = store
        self.settings = settings
        self.jobs = jobs
        self.http = WorkerClient(service_credentials(settings, "ttp"), settings.http_timeout_s)
        self.mlflow = RunRecorder(
            settings.mlflow_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
            settings.outputs_dir,  # type: ignore[arg-type]
            settings.data_dir / "mlflow_spool",  # type: ignore[operator]
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        self.mlflow.close()

    def _recovery(self, board: Job, previous: Job | None) -> Recovery:
        """A training resumes from its run's checkpoints when the run's last training was cut short
        (interrupted by a stop of this TTP, or failed while resuming); else it starts at round 1."""
        resume = previous is not None and (
            previous.state == "interrupted" or (previous.state == "failed" and previous.resumed_after is not None)
        )
        return Recovery(keep=self.settings.keep_checkpoints, job_id=board.job_id, resume=resume)

    async def _execute(self, planned: list[PlannedJob]) -> list[Record]:
        """Run the jobs in order (the plan's dependency order) on this TTP's grid; a failure stops
        the request with that job marked failed. Every job of the request is on the board (queued)
        before the first one starts."""
        written: list[Record] = []
        previous = {id(item): self.jobs.latest(item.kind, item.keys) for item in planned}
        boards = [self.jobs.start(item.kind, item.keys, rounds=item.rounds, state="queued") for item in planned]
        for index, (item, board) in enumerate(zip(planned, boards, strict=True)):
            try:
                written += await self._run(item, board, previous[id(item)])
            except BaseException:
                for later in boards[index + 1 :]:  # they never run: what they come after failed
                    self.jobs.finish(later, "failed", f"the {item.kind} it came after ({board.job_id}) failed")
                raise
        return written

    async def _run(self, item: PlannedJob, board: Job, previous: Job | None) -> list[Record]:
        """One job of a request, on this TTP's grid; the records it wrote."""
        self.jobs.update(board, state="running")
        with self.jobs.failing(board):
            job = item.build()
            if item.process == "train":
                planning.training_started(self.store, self.mlflow, item.keys)
            try:
                outcome = await operations.run_job(
                    self.http,
                    job,
                    self.settings.grid,
                    self.settings.federation,
                    self.settings.outputs_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
                    self.jobs.progress(board) if item.process == "train" else None,
                    self._recovery(board, previous) if item.process == "train" else None,
                )
            except BaseException as exc:
                if item.process == "train":
                    planning.training_failed(self.store, self.mlflow, item.keys, failure_reason(exc))
                raise
            records = planning.archive(self.store, item.process, item.keys, outcome, self.mlflow)
        if item.kind == "validation":
            aggregate = outcome.get("aggregate")
            self.jobs.update(board, metrics=aggregate["evaluate"]["statistics"] if aggregate else None)
        self.jobs.finish(board, "completed")
        log.info(planning.completion_line(item.process, item.keys, outcome))
        return records

    # -- phase 2A --
    async def align(
        self,
        collab_id: str,
        project_id: str,
        auto_align: bool = True,
        auto_fix: bool = True,
        preprocessing: dict[str, Any] | None = None,
    ) -> list[Alignment]:
        if auto_align:
            await self._execute([planning.plan_alignment(self.store, collab_id, project_id, auto_fix, preprocessing)])
        return self.store.list_alignments(collab_id, project_id)

    # -- phase 2B --
    async def train(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
    ) -> list[Model]:
        planned = planning.plan_training(self.store, collab_id, project_id, expt_id, run_id, auto_align)
        return [r for r in await self._execute(planned) if isinstance(r, Model)]

    async def optimize(
        self, collab_id: str, project_id: str, expt_id: str, request: OptimizationRequest
    ) -> list[OptimizationSummary]:
        raise Forbidden(
            "hyper-parameter optimization runs on a Synergos Cluster: send it to the Director",
            ErrorCode.OPTIMIZATION_CLUSTER_ONLY,
        )

    async def champion(self, collab_id: str, project_id: str, expt_id: str) -> dict[str, Any] | None:
        uri = self.mlflow.uri(self.store.get_collaboration(collab_id).details())
        return await asyncio.to_thread(self.mlflow.tracker.champion, uri, collab_id, project_id, expt_id)

    # -- phase 3A --
    async def validate(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
    ) -> list[Validation]:
        planned = planning.plan_validation(self.store, collab_id, project_id, expt_id, run_id, participant_id)
        return [r for r in await self._execute(planned) if isinstance(r, Validation)]

    # -- phase 3B --
    async def predict(
        self,
        participant_id: str,
        collab_id: str,
        tags: dict[str, list[list[str]]],
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
    ) -> list[Prediction]:
        planned = planning.plan_prediction(self.store, participant_id, collab_id, tags, project_id, expt_id, run_id)
        return [
            r for r in await self._execute(planned) if isinstance(r, Prediction) and r.participant_id == participant_id
        ]
