"""`…/collaborations/{c}/projects[/{project_id}]`: what a collaboration builds (classify or regress)."""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from synergos_contract.envelope import envelope

from ..deps import created, CollabId, ProjectId, SlashRouter, StoreDep, agree_with_url
from synergos_core.preprocessing import OPTION_FIELDS

from ..schemas import ProjectCreate, ProjectUpdate, recheck

router = SlashRouter(prefix="/ttp/connect/collaborations/{collab_id}", tags=["projects"])


@router.get("/projects", name="projects")
def read_projects(request: Request, store: StoreDep, collab_id: CollabId) -> JSONResponse:
    return envelope(request, store.list_projects(collab_id))


@router.post("/projects", name="projects", status_code=201)
def create_project(request: Request, store: StoreDep, collab_id: CollabId, body: ProjectCreate) -> JSONResponse:
    unset = {name for name in OPTION_FIELDS if getattr(body, name) is None}  # the defaults apply
    details = agree_with_url(request, body.model_dump(mode="json", exclude={"project_id"} | unset))
    return created(request, store.create_project(collab_id, body.project_id, details))


@router.get("/projects/{project_id}", name="project")
def read_project(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId) -> JSONResponse:
    return envelope(request, store.get_project(collab_id, project_id))


@router.put("/projects/{project_id}", name="project")
def update_project(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId,
                   body: ProjectUpdate) -> JSONResponse:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(ProjectCreate, merged, {"project_id": project_id})

    return envelope(request, store.update_project(collab_id, project_id, changes, validate))


@router.delete("/projects/{project_id}", name="project")
def delete_project(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId) -> JSONResponse:
    return envelope(request, store.delete_project(collab_id, project_id))
