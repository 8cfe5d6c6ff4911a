"""`/ttp/connect/participants[/{participant_id}]`: the parties, independent of any collaboration."""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from synergos_contract.envelope import envelope

from ..deps import created, ParticipantId, SlashRouter, StoreDep, agree_with_url
from ..schemas import ParticipantCreate, ParticipantUpdate, recheck

router = SlashRouter(prefix="/ttp/connect", tags=["participants"])


@router.get("/participants", name="participants")
def read_participants(request: Request, store: StoreDep) -> JSONResponse:
    return envelope(request, store.list_participants())


@router.post("/participants", name="participants", status_code=201)
def create_participant(request: Request, store: StoreDep, body: ParticipantCreate) -> JSONResponse:
    details = body.model_dump(mode="json", exclude={"id"})
    return created(request, store.create_participant(body.id, details))


@router.get("/participants/{participant_id}", name="participant")
def read_participant(request: Request, store: StoreDep, participant_id: ParticipantId) -> JSONResponse:
    return envelope(request, store.get_participant(participant_id))


@router.put("/participants/{participant_id}", name="participant")
def update_participant(request: Request, store: StoreDep, participant_id: ParticipantId,
                       body: ParticipantUpdate) -> JSONResponse:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True),
                             aliases={"id": "participant_id"})

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(ParticipantCreate, merged, {"id": participant_id})

    return envelope(request, store.update_participant(participant_id, changes, validate))


@router.delete("/participants/{participant_id}", name="participant")
def delete_participant(request: Request, store: StoreDep, participant_id: ParticipantId) -> JSONResponse:
    """Removes the participant with its registrations, tags, alignments, validations and predictions."""
    return envelope(request, store.delete_participant(participant_id))
