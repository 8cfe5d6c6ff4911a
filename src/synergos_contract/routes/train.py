"""Phase 2: /ttp/train/… alignments and models (training runs within the request in basic mode)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import Path, Request, Response
from pydantic import BaseModel, ConfigDict

from synergos_core.errors import ErrorCode, NotFound
from synergos_core.preprocessing import OPTION_FIELDS
from synergos_core.records import AGGREGATE, Job, QueuedJob
from synergos_core.schemas import ID_PATTERN

from ..deps import ContractRouter, JobsDep, OrchestratorDep, StoreDep
from ..jobs import JobBoard
from ..orchestration import Orchestrator
from ..public import (
    AlignmentPublic,
    ChampionPublic,
    Envelope,
    ModelPublic,
    OptimizationPublic,
    OptimizationTrialPublic,
    QueuedJobPublic,
    answer,
    queued_responses,
    view,
)
from ..schemas import OptimizationRequest, PreprocessingChoice

__all__ = ["router", "accepted", "start_once", "AlignmentRequest", "TrainRequest", "OptimizationRequest"]

router = ContractRouter(prefix="/ttp/train/collaborations/{collab_id}/projects/{project_id}", tags=["train"])
Id = Annotated[str, Path(pattern=ID_PATTERN)]


def accepted(orch: Orchestrator) -> int:
    """201 when the work is done within the request (basic mode), 202 when it was queued (cluster)."""
    return 202 if orch.queued else 201


Start = Callable[[dict[str, str]], Awaitable[Sequence[Any]]]


async def start_once(
    request: Request,
    response: Response,
    orch: Orchestrator,
    jobs: JobBoard,
    kind: str,
    scopes: list[dict[str, str]],
    start_all: Callable[[], Awaitable[Sequence[Any]]],
    start_one: Start,
) -> dict[str, Any]:
    """Start the work of every scope (one job's keys each) that has no job of `kind` queued or
    running; a scope that has one is answered with that job instead, so that a request sent twice
    never runs twice. Nothing open: `start_all`, as ever (201 with the records in basic mode, 202
    with the queued jobs in cluster mode). Everything open: 202 with those jobs. Some: the others
    are started one by one (`start_one`), answered as they would be (in cluster mode with the open
    jobs beside the new ones)."""
    found = [jobs.open_job(kind, scope) for scope in scopes]
    if not any(found):
        return answer(request, await start_all(), accepted(orch), response)
    if all(found):
        return answer(request, [_open(job) for job in found if job is not None], 202, response)
    records: list[Any] = []
    for scope, job in zip(scopes, found, strict=True):
        if job is None:
            records += await start_one(scope)
        elif orch.queued:
            records.append(_open(job))
    return answer(request, records, accepted(orch), response)


def _open(job: Job) -> QueuedJob:
    return QueuedJob(job_id=job.job_id, kind=job.kind, keys=job.keys, state=job.state)


class AlignmentRequest(PreprocessingChoice):
    """Options given here override the project's for this alignment (and the runs trained on it)."""

    model_config = ConfigDict(extra="allow")
    auto_align: bool = True
    auto_fix: bool = True

    def preprocessing(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OPTION_FIELDS if getattr(self, name) is not None}


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # dockerised, verbose, log_msgs: accepted for compatibility
    auto_align: bool = True


Alignments = Envelope[list[AlignmentPublic]]
Models = Envelope[list[ModelPublic]]


@router.post(
    "/alignments",
    name="alignments",
    status_code=201,
    response_model=Envelope[list[AlignmentPublic] | list[QueuedJobPublic]],
    responses=queued_responses(QueuedJobPublic),
)
@router.post(
    "/alignments/",
    name="alignments",
    status_code=201,
    response_model=Envelope[list[AlignmentPublic] | list[QueuedJobPublic]],
    include_in_schema=False,
)
async def create_alignments(
    request: Request,
    response: Response,
    body: AlignmentRequest,
    orch: OrchestratorDep,
    jobs: JobsDep,
    collab_id: Id,
    project_id: Id,
) -> dict[str, Any]:
    """An alignment of a project that has one queued or running answers that job (202)."""

    async def align(_scope: dict[str, str] | None = None) -> Sequence[Any]:
        return await orch.align(collab_id, project_id, body.auto_align, body.auto_fix, body.preprocessing())

    scopes = [{"collab_id": collab_id, "project_id": project_id}] if body.auto_align else []
    return await start_once(request, response, orch, jobs, "alignment", scopes, align, align)


@router.get("/alignments", name="alignments", response_model=Alignments)
@router.get("/alignments/", name="alignments", response_model=Alignments, include_in_schema=False)
async def read_alignments(request: Request, store: StoreDep, collab_id: Id, project_id: Id) -> dict[str, Any]:
    return answer(request, store.list_alignments(collab_id, project_id))


MODEL_PATHS = ["/models", "/models/", "/models/{expt_id}", "/models/{expt_id}/{run_id}"]


async def create_models(
    request: Request,
    response: Response,
    body: TrainRequest,
    orch: OrchestratorDep,
    store: StoreDep,
    jobs: JobsDep,
    collab_id: Id,
    project_id: Id,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """A run of the scope whose training is queued or running is answered with that job (202)
    rather than trained again."""
    scopes = [
        {"collab_id": collab_id, "project_id": project_id, "expt_id": expt.expt_id, "run_id": run.run_id}
        for expt, run in store.run_scope(collab_id, project_id, expt_id, run_id)
    ]

    async def train_all() -> Sequence[Any]:
        return await orch.train(collab_id, project_id, expt_id, run_id, body.auto_align)

    async def train_one(scope: dict[str, str]) -> Sequence[Any]:
        return await orch.train(collab_id, project_id, scope["expt_id"], scope["run_id"], body.auto_align)

    return await start_once(request, response, orch, jobs, "training", scopes, train_all, train_one)


async def read_models(
    request: Request,
    store: StoreDep,
    collab_id: Id,
    project_id: Id,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    return answer(request, store.list_models(collab_id, project_id, expt_id, run_id))


@router.post(
    "/models/{expt_id}/optimizations",
    name="optimizations",
    status_code=202,
    response_model=Envelope[list[OptimizationPublic]],
)
@router.post(
    "/models/{expt_id}/optimizations/",
    name="optimizations",
    status_code=202,
    response_model=Envelope[list[OptimizationPublic]],
    include_in_schema=False,
)
async def create_optimizations(
    request: Request, body: OptimizationRequest, orch: OrchestratorDep, collab_id: Id, project_id: Id, expt_id: Id
) -> dict[str, Any]:
    return answer(request, await orch.optimize(collab_id, project_id, expt_id, body), 202)


Trials = Envelope[list[OptimizationTrialPublic]]


@router.get("/models/{expt_id}/optimizations", name="optimizations", response_model=Trials)
@router.get("/models/{expt_id}/optimizations/", name="optimizations", response_model=Trials, include_in_schema=False)
async def read_optimizations(
    request: Request, store: StoreDep, collab_id: Id, project_id: Id, expt_id: Id
) -> dict[str, Any]:
    """The optimization trials of the experiment, each with its aggregate validation once in."""
    trials = []
    for run in store.list_runs(collab_id, project_id, expt_id):
        if run.run_id.startswith("optim_run_"):
            aggregate = store.list_validations(collab_id, project_id, expt_id, run.run_id, AGGREGATE)
            statistics = aggregate[0].evaluate.statistics if aggregate and aggregate[0].evaluate else None
            trials.append({**view(run), "validation": statistics})
    return answer(request, trials)


@router.get("/models/{expt_id}/champion", name="champion", response_model=Envelope[ChampionPublic])
async def read_champion(
    request: Request, store: StoreDep, orch: OrchestratorDep, collab_id: Id, project_id: Id, expt_id: Id
) -> dict[str, Any]:
    """The registered model version marked `champion` (the best optimization trial) in MLflow."""
    store.get_experiment(collab_id, project_id, expt_id)
    found = await orch.champion(collab_id, project_id, expt_id)
    if found is None:
        raise NotFound(f"no champion yet for {expt_id!r}: run an optimization first", ErrorCode.CHAMPION_NOT_FOUND)
    return answer(request, found)


# after the optimization routes: `/models/{expt_id}/{run_id}` would otherwise swallow `/optimizations`
for _path in MODEL_PATHS:
    router.add_api_route(
        _path,
        create_models,
        methods=["POST"],
        name="models",
        status_code=201,
        response_model=Envelope[list[ModelPublic] | list[QueuedJobPublic]],
        responses=queued_responses(QueuedJobPublic),
        include_in_schema=_path != "/models/",
    )
    router.add_api_route(
        _path, read_models, methods=["GET"], name="models", response_model=Models, include_in_schema=_path != "/models/"
    )
