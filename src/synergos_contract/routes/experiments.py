"""`…/projects/{p}/experiments[/{expt_id}]`: an experiment is a model, written as a layer list.

The layer list is built on torch's meta device before it is stored, so an unknown layer,
activation or structure is a 422 that leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from synergos_core.model import validate_model_spec

from ..deps import CollabId, ExptId, ProjectId, SlashRouter, StoreDep, agree_with_url, created
from ..public import Envelope, ExperimentPublic, answer, created_responses
from ..schemas import ExperimentCreate, ExperimentUpdate, recheck

router = SlashRouter(prefix="/ttp/connect/collaborations/{collab_id}/projects/{project_id}", tags=["experiments"])
One = Envelope[ExperimentPublic]


@router.get("/experiments", name="experiments", response_model=Envelope[list[ExperimentPublic]])
def read_experiments(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId) -> dict[str, Any]:
    return answer(request, store.list_experiments(collab_id, project_id))


@router.post(
    "/experiments",
    name="experiments",
    status_code=201,
    response_model=One,
    responses=created_responses(ExperimentPublic),
)
def create_experiment(
    request: Request,
    response: Response,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    body: ExperimentCreate,
) -> dict[str, Any]:
    validate_model_spec(body.model)
    details = agree_with_url(request, body.model_dump(mode="json", exclude={"expt_id"}))
    return created(request, response, store.create_experiment(collab_id, project_id, body.expt_id, details))


@router.get("/experiments/{expt_id}", name="experiment", response_model=One)
def read_experiment(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId
) -> dict[str, Any]:
    return answer(request, store.get_experiment(collab_id, project_id, expt_id))


@router.put("/experiments/{expt_id}", name="experiment", response_model=One)
def update_experiment(
    request: Request,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    expt_id: ExptId,
    body: ExperimentUpdate,
) -> dict[str, Any]:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))
    if "model" in changes:
        validate_model_spec(changes["model"])

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(ExperimentCreate, merged, {"expt_id": expt_id})

    return answer(request, store.update_experiment(collab_id, project_id, expt_id, changes, validate))


@router.delete("/experiments/{expt_id}", name="experiment", response_model=One)
def delete_experiment(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId
) -> dict[str, Any]:
    return answer(request, store.delete_experiment(collab_id, project_id, expt_id))
