"""Phase 2: /ttp/train/… alignments and models (training runs within the request in basic mode)."""
from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synergos_contract.envelope import envelope
from synergos_core.errors import NotFound
from synergos_core.preprocessing import OPTION_FIELDS
from synergos_core.schemas import ID_PATTERN

from ..deps import StoreDep
from ..orchestration import Orchestrator
from ..schemas import PreprocessingChoice

router = APIRouter(prefix="/ttp/train/collaborations/{collab_id}/projects/{project_id}")
Id = Annotated[str, Path(pattern=ID_PATTERN)]


def orchestrator(request: Request) -> Orchestrator:
    return request.app.state.orchestrator


OrchestratorDep = Annotated[Orchestrator, Depends(orchestrator)]


def accepted(orch: Orchestrator) -> int:
    """201 when the work is done within the request (basic mode), 202 when it was queued (cluster)."""
    return 202 if getattr(orch, "queued", False) else 201


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


@router.post("/alignments", name="alignments")
@router.post("/alignments/", name="alignments", include_in_schema=False)
async def create_alignments(request: Request, body: AlignmentRequest, orch: OrchestratorDep,
                            collab_id: Id, project_id: Id) -> object:
    records = await orch.align(collab_id, project_id, body.auto_align, body.auto_fix, body.preprocessing())
    return envelope(request, records, accepted(orch))


@router.get("/alignments", name="alignments")
@router.get("/alignments/", name="alignments", include_in_schema=False)
async def read_alignments(request: Request, store: StoreDep, collab_id: Id, project_id: Id) -> object:
    store.get_project(collab_id, project_id)
    return envelope(request, store.list_alignments(collab_id, project_id))


MODEL_PATHS = ["/models", "/models/", "/models/{expt_id}", "/models/{expt_id}/{run_id}"]


async def create_models(request: Request, body: TrainRequest, orch: OrchestratorDep,
                        collab_id: Id, project_id: Id, expt_id: str | None = None,
                        run_id: str | None = None) -> object:
    records = await orch.train(collab_id, project_id, expt_id, run_id, body.auto_align)
    return envelope(request, records, accepted(orch))


async def read_models(request: Request, store: StoreDep, collab_id: Id, project_id: Id,
                      expt_id: str | None = None, run_id: str | None = None) -> object:
    store.get_project(collab_id, project_id)
    return envelope(request, store.list_models(collab_id, project_id, expt_id, run_id))




class OptimizationRequest(BaseModel):
    """A search space and how to explore it (Ray Tune); extra keys go to the searcher."""

    model_config = ConfigDict(extra="allow")
    search_space: dict[str, Any]
    tuner: str | None = None
    metric: str | None = None
    optimize_mode: Literal["max", "min"] | None = None
    n_samples: int = Field(default=3, ge=1, le=1000)
    trial_concurrency: int | None = Field(default=None, ge=1, le=64)
    max_exec_duration: str | None = None
    auto_align: bool = True
    # the original Driver's spellings
    max_trial_num: int | None = Field(default=None, ge=1, le=1000, exclude=True)
    searcher: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _original_spellings(self) -> "OptimizationRequest":
        if self.max_trial_num is not None and "n_samples" not in self.model_fields_set:
            self.n_samples = self.max_trial_num
        if self.searcher is not None and self.tuner is None:
            self.tuner = self.searcher
        return self


@router.post("/models/{expt_id}/optimizations", name="optimizations")
@router.post("/models/{expt_id}/optimizations/", name="optimizations", include_in_schema=False)
async def create_optimizations(request: Request, body: OptimizationRequest, orch: OrchestratorDep, collab_id: Id,
                               project_id: Id, expt_id: Id) -> object:
    records = await orch.optimize(collab_id, project_id, expt_id, body.model_dump())
    return envelope(request, records, 202)


@router.get("/models/{expt_id}/optimizations", name="optimizations")
@router.get("/models/{expt_id}/optimizations/", name="optimizations", include_in_schema=False)
async def read_optimizations(request: Request, store: StoreDep, collab_id: Id, project_id: Id, expt_id: Id) -> object:
    trials = []
    for run in store.list_runs(collab_id, project_id, expt_id):
        if run["key"]["run_id"].startswith("optim_run_"):
            aggregate = store.list_validations(collab_id, project_id, expt_id, run["key"]["run_id"], "aggregate")
            trials.append({**run, "validation": aggregate[0]["evaluate"]["statistics"] if aggregate else None})
    return envelope(request, trials)


@router.get("/models/{expt_id}/champion", name="champion")
async def read_champion(request: Request, store: StoreDep, collab_id: Id, project_id: Id, expt_id: Id) -> object:
    """The registered model version marked `champion` (the best optimization trial) in MLflow."""
    store.get_experiment(collab_id, project_id, expt_id)
    mlflow = request.app.state.orchestrator.mlflow
    uri = mlflow.uri(store.get_collaboration(collab_id))
    found = await asyncio.to_thread(mlflow.tracker.champion, uri, collab_id, project_id, expt_id)
    if found is None:
        raise NotFound(f"no champion yet for {expt_id!r}: run an optimization first", "champion.not_found")
    return envelope(request, found)


# after the optimization routes: `/models/{expt_id}/{run_id}` would otherwise swallow `/optimizations`
for _path in MODEL_PATHS:
    router.add_api_route(_path, create_models, methods=["POST"], name="models", include_in_schema=_path != "/models/")
    router.add_api_route(_path, read_models, methods=["GET"], name="models", include_in_schema=_path != "/models/")
