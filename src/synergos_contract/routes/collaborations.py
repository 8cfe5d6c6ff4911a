"""`/ttp/connect/collaborations[/{collab_id}]`: a collaboration and its connection sections."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from ..deps import CollabId, SlashRouter, StoreDep, agree_with_url, created
from ..public import CollaborationPublic, Envelope, answer, created_responses
from ..schemas import CollaborationCreate, CollaborationUpdate, recheck

router = SlashRouter(prefix="/ttp/connect", tags=["collaborations"])
One = Envelope[CollaborationPublic]


@router.get("/collaborations", name="collaborations", response_model=Envelope[list[CollaborationPublic]])
def read_collaborations(request: Request, store: StoreDep) -> dict[str, Any]:
    return answer(request, store.list_collaborations())


@router.post(
    "/collaborations",
    name="collaborations",
    status_code=201,
    response_model=One,
    responses=created_responses(CollaborationPublic),
)
def create_collaboration(
    request: Request, response: Response, store: StoreDep, body: CollaborationCreate
) -> dict[str, Any]:
    details = body.model_dump(mode="json", exclude={"collab_id"}, exclude_none=True)
    return created(request, response, store.create_collaboration(body.collab_id, details))


@router.get("/collaborations/{collab_id}", name="collaboration", response_model=One)
def read_collaboration(request: Request, store: StoreDep, collab_id: CollabId) -> dict[str, Any]:
    return answer(request, store.get_collaboration(collab_id))


@router.put("/collaborations/{collab_id}", name="collaboration", response_model=One)
def update_collaboration(
    request: Request, store: StoreDep, collab_id: CollabId, body: CollaborationUpdate
) -> dict[str, Any]:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        sections = {name: value for name, value in merged.items() if value is not None}  # null removes
        return recheck(CollaborationCreate, sections, {"collab_id": collab_id}, exclude_none=True)

    return answer(request, store.update_collaboration(collab_id, changes, validate))


@router.delete("/collaborations/{collab_id}", name="collaboration", response_model=One)
def delete_collaboration(request: Request, store: StoreDep, collab_id: CollabId) -> dict[str, Any]:
    return answer(request, store.delete_collaboration(collab_id))
