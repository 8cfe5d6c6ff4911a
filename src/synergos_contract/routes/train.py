"""Phase 2: /ttp/train/… alignments and models (training runs within the request in basic mode)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request, Response
from pydantic import BaseModel, ConfigDict

from synergos_core.errors import ErrorCode, NotFound
from synergos_core.preprocessing import OPTION_FIELDS
from synergos_core.records import AGGREGATE
from synergos_core.schemas import ID_PATTERN

from ..deps import ContractRouter, OrchestratorDep, StoreDep
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

__all__ = ["router", "accepted", "AlignmentRequest", "TrainRequest", "OptimizationRequest"]

router = ContractRouter(prefix="/ttp/train/collaborations/{collab_id}/projects/{project_id}", tags=["train"])
Id = Annotated[str, Path(pattern=ID_PATTERN)]


def accepted(orch: Orchestrator) -> int:
    """201 when the work is done within the request (basic mode), 202 when it was queued (cluster)."""
    return 202 if orch.queued else 201


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
    request: Request, response: Response, body: AlignmentRequest, orch: OrchestratorDep, collab_id: Id, project_id: Id
) -> dict[str, Any]:
    records = await orch.align(collab_id, project_id, body.auto_align, body.auto_fix, body.preprocessing())
    return answer(request, records, accepted(orch), response)


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
    collab_id: Id,
    project_id: Id,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    records = await orch.train(collab_id, project_id, expt_id, run_id, body.auto_align)
    return answer(request, records, accepted(orch), response)


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
