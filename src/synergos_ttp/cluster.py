"""A cluster TTP: consumes jobs from the Synergos MQ, runs each on its grid (node K of every
participant) with the code a basic TTP runs its own jobs with (`operations.run_job`), publishes
the outcome, and keeps no metadata of its own but its jobs (a job board in its own small store, so
that after a restart the job it was running shows `interrupted` until the MQ delivers it again).
A job that could never run (`check_job`: a wrong schema) is refused on its first delivery; one
whose grid cannot be reached is retried later. A training delivered again (its TTP stopped, or an
attempt failed) resumes from the newest checkpoint it wrote on the shared outputs volume."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synergos_contract.jobs import JobBoard
from synergos_contract.serving import service_credentials
from synergos_core.errors import ErrorCode, InvalidRequest, SynergosError
from synergos_core.records import Job
from synergos_core.schemas import RunHyperparameters
from synergos_core.settings import TTPSettings
from synergos_mq.errors import PoisonMessage

from . import operations
from .grid import WorkerClient
from .recovery import Recovery

log = logging.getLogger(__name__)


class JobRunner:
    """Runs one queued job at a time on this TTP's grid, and says what it is doing."""

    def __init__(self, settings: TTPSettings, jobs: JobBoard | None = None) -> None:
        self.settings = settings
        self.credentials = service_credentials(settings, "ttp")  # None only with --insecure
        self.jobs = jobs or JobBoard()
        self.done = 0
        self.current: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": "cluster", "grid": self.settings.grid, "jobs_done": self.done, "current": self.current}

    def __call__(self, job: dict) -> dict:
        keys = job["keys"]
        with self._lock:
            self.current = {"job_id": job["job_id"], "process": job["process"], "keys": keys}
        log.info("job %s: %s %s", job["job_id"], job["process"], "/".join(keys.values()))
        train = job["process"] == "train"
        rounds = RunHyperparameters.of(job["parameters"]["hyperparameters"]).rounds if train else None
        # the same job delivered again takes up its own entry on the board
        board = self.jobs.start(_kind(job), keys, rounds=rounds, job_id=str(job["job_id"]))
        try:
            with self.jobs.failing(board):
                outcome = asyncio.run(self._run(job, board))
            self.jobs.finish(board, "completed")
            return outcome
        finally:
            with self._lock:
                self.current = None
                self.done += 1

    async def _run(self, job: dict, board: Job) -> dict:
        train = job["process"] == "train"
        # a job delivered again resumes from what it checkpointed itself; any other trains from round 1
        recovery = Recovery(keep=self.settings.keep_checkpoints, job_id=str(job["job_id"]), resume=None)
        async with WorkerClient(self.credentials, self.settings.http_timeout_s) as http:
            return await operations.run_job(
                http,
                job,
                self.settings.grid,
                self.settings.federation,
                self.settings.outputs_dir,  # type: ignore[arg-type]  # set by the CLI (resolve_dirs) or the caller
                self.jobs.progress(board) if train else None,
                recovery if train else None,
            )


def _kind(job: dict[str, Any]) -> str:
    """The job board's kind of a queued job (`planning.PlannedJob.kind`)."""
    if job["process"] != "evaluate":
        return {"preprocess": "alignment", "train": "training"}[job["process"]]
    return "prediction" if job["parameters"].get("meta") == "predict" else "validation"


def permanent(exc: BaseException) -> bool:
    """Bad input never gets better by retrying; a node that is down might."""
    return isinstance(exc, SynergosError) and exc.status < 500


class _Node(BaseModel):
    """A node as `operations.job_nodes` builds a `GridNode` of it."""

    model_config = ConfigDict(extra="forbid")
    participant_id: str
    host: str
    port: int = Field(ge=1, le=65535)
    f_port: int = Field(ge=1, le=65535)
    tags: dict[str, list]
    alignment: dict[str, dict[str, list]] = Field(default_factory=dict)
    superset: dict[str, list] | None = None
    preprocessing: dict[str, Any] | None = None


class _Job(BaseModel):
    job_id: str
    process: Literal["preprocess", "train", "evaluate"]
    keys: dict[str, str]
    grids: list[list[_Node]] = Field(min_length=1)
    parameters: dict[str, Any]


_KEYS = {
    "preprocess": ("collab_id", "project_id"),
    "train": ("collab_id", "project_id", "expt_id", "run_id"),
    "evaluate": ("collab_id", "project_id", "expt_id", "run_id"),
}
_PARAMETERS = {"preprocess": ("action",), "train": ("action", "model", "hyperparameters")}
_PARAMETERS["evaluate"] = _PARAMETERS["train"]


def check_job(job: dict[str, Any]) -> None:
    """Refuse (`PoisonMessage`, its cause a public `InvalidRequest`) a job `operations.run_job`
    could never run: no grid, a malformed node, keys or parameters its process needs missing,
    hyper-parameters that do not parse. Retrying such a job would only fail again."""
    problems: list[str] = []
    try:
        parsed = _Job.model_validate(job)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors()[:5]]
    else:
        params = parsed.parameters
        problems += [f"keys.{k}: missing" for k in _KEYS[parsed.process] if k not in parsed.keys]
        problems += [f"parameters.{k}: missing" for k in _PARAMETERS[parsed.process] if k not in params]
        if any(not grid for grid in parsed.grids):
            problems.append("grids: a grid has no node")
        if parsed.process != "preprocess":
            model = params.get("model")
            if "model" in params and (not isinstance(model, list) or not all(isinstance(x, dict) for x in model)):
                problems.append("parameters.model: must be a list of layers")
            hyperparameters = params.get("hyperparameters")
            if isinstance(hyperparameters, dict):
                try:
                    RunHyperparameters.model_validate(hyperparameters)
                except ValidationError as exc:
                    problems += [
                        f"parameters.hyperparameters.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                        for e in exc.errors()[:3]
                    ]
            elif "hyperparameters" in params:
                problems.append("parameters.hyperparameters: must be an object")
            if params.get("meta", "evaluate") not in ("evaluate", "predict"):
                problems.append("parameters.meta: must be evaluate or predict")
    if problems:
        detail = f"the job cannot run: {'; '.join(problems)}"
        raise PoisonMessage(detail) from InvalidRequest(detail, ErrorCode.REQUEST_INVALID)
