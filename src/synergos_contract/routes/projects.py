"""`…/collaborations/{c}/projects[/{project_id}]`: what a collaboration builds (classify or regress)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from synergos_core.preprocessing import OPTION_FIELDS

from ..deps import CollabId, ProjectId, SlashRouter, StoreDep, agree_with_url, created
from ..public import Envelope, ProjectPublic, answer, created_responses
from ..schemas import ProjectCreate, ProjectUpdate, recheck

router = SlashRouter(prefix="/ttp/connect/collaborations/{collab_id}", tags=["projects"])
One = Envelope[ProjectPublic]


@router.get("/projects", name="projects", response_model=Envelope[list[ProjectPublic]])
def read_projects(request: Request, store: StoreDep, collab_id: CollabId) -> dict[str, Any]:
    return answer(request, store.list_projects(collab_id))


@router.post(
    "/projects", name="projects", status_code=201, response_model=One, responses=created_responses(ProjectPublic)
)
def create_project(
    request: Request, response: Response, store: StoreDep, collab_id: CollabId, body: ProjectCreate
) -> dict[str, Any]:
    unset = {name for name in OPTION_FIELDS if getattr(body, name) is None}  # the defaults apply
    details = agree_with_url(request, body.model_dump(mode="json", exclude={"project_id"} | unset))
    return created(request, response, store.create_project(collab_id, body.project_id, details))


@router.get("/projects/{project_id}", name="project", response_model=One)
def read_project(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId) -> dict[str, Any]:
    return answer(request, store.get_project(collab_id, project_id))


@router.put("/projects/{project_id}", name="project", response_model=One)
def update_project(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, body: ProjectUpdate
) -> dict[str, Any]:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(ProjectCreate, merged, {"project_id": project_id})

    return answer(request, store.update_project(collab_id, project_id, changes, validate))


@router.delete("/projects/{project_id}", name="project", response_model=One)
def delete_project(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId) -> dict[str, Any]:
    return answer(request, store.delete_project(collab_id, project_id))
