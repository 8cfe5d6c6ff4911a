"""`/ttp/connect/collaborations[/{collab_id}]`: a collaboration and its connection sections."""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from synergos_contract.envelope import envelope

from ..deps import created, CollabId, SlashRouter, StoreDep, agree_with_url
from ..schemas import CollaborationCreate, CollaborationUpdate, recheck

router = SlashRouter(prefix="/ttp/connect", tags=["collaborations"])


@router.get("/collaborations", name="collaborations")
def read_collaborations(request: Request, store: StoreDep) -> JSONResponse:
    return envelope(request, store.list_collaborations())


@router.post("/collaborations", name="collaborations", status_code=201)
def create_collaboration(request: Request, store: StoreDep, body: CollaborationCreate) -> JSONResponse:
    details = body.model_dump(mode="json", exclude={"collab_id"}, exclude_none=True)
    return created(request, store.create_collaboration(body.collab_id, details))


@router.get("/collaborations/{collab_id}", name="collaboration")
def read_collaboration(request: Request, store: StoreDep, collab_id: CollabId) -> JSONResponse:
    return envelope(request, store.get_collaboration(collab_id))


@router.put("/collaborations/{collab_id}", name="collaboration")
def update_collaboration(request: Request, store: StoreDep, collab_id: CollabId,
                         body: CollaborationUpdate) -> JSONResponse:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        sections = {name: value for name, value in merged.items() if value is not None}  # null removes
        return recheck(CollaborationCreate, sections, {"collab_id": collab_id}, exclude_none=True)

    return envelope(request, store.update_collaboration(collab_id, changes, validate))


@router.delete("/collaborations/{collab_id}", name="collaboration")
def delete_collaboration(request: Request, store: StoreDep, collab_id: CollabId) -> JSONResponse:
    return envelope(request, store.delete_collaboration(collab_id))
