"""`…/experiments/{e}/runs[/{run_id}]`: one set of hyper-parameters for an experiment.

Defaults are filled in here, and the run's optimizer, scheduler and criterion are built on a
dummy parameter before anything is stored, so a run that could not train, or that names a
hyper-parameter nothing reads, is refused up front (`planning.accept_run`).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from synergos_core.schemas import RunHyperparameters

from .. import planning
from ..deps import CollabId, ExptId, ProjectId, RunId, SlashRouter, StoreDep, agree_with_url, created
from ..public import Envelope, RunPublic, answer, created_responses
from ..schemas import RunCreate, RunUpdate

router = SlashRouter(
    prefix="/ttp/connect/collaborations/{collab_id}/projects/{project_id}/experiments/{expt_id}", tags=["runs"]
)
One = Envelope[RunPublic]


@router.get("/runs", name="runs", response_model=Envelope[list[RunPublic]])
def read_runs(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId
) -> dict[str, Any]:
    return answer(request, store.list_runs(collab_id, project_id, expt_id))


@router.post("/runs", name="runs", status_code=201, response_model=One, responses=created_responses(RunPublic))
def create_run(
    request: Request,
    response: Response,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    expt_id: ExptId,
    body: RunCreate,
) -> dict[str, Any]:
    hyperparameters = agree_with_url(request, body.model_dump(mode="json", exclude={"run_id"}))
    written = planning.accept_run(
        store, collab_id, project_id, expt_id, body.run_id, RunHyperparameters.model_validate(hyperparameters)
    )
    return created(request, response, written)


@router.get("/runs/{run_id}", name="run", response_model=One)
def read_run(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId, run_id: RunId
) -> dict[str, Any]:
    return answer(request, store.get_run(collab_id, project_id, expt_id, run_id))


@router.put("/runs/{run_id}", name="run", response_model=One)
def update_run(
    request: Request,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    expt_id: ExptId,
    run_id: RunId,
    body: RunUpdate,
) -> dict[str, Any]:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))
    return answer(request, planning.revise_run(store, collab_id, project_id, expt_id, run_id, changes))


@router.delete("/runs/{run_id}", name="run", response_model=One)
def delete_run(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId, run_id: RunId
) -> dict[str, Any]:
    return answer(request, store.delete_run(collab_id, project_id, expt_id, run_id))
