"""`/ttp/connect/participants[/{participant_id}]`: the parties, independent of any collaboration."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from ..deps import ParticipantId, SlashRouter, StoreDep, agree_with_url, created
from ..public import Envelope, ParticipantPublic, answer, created_responses
from ..schemas import ParticipantCreate, ParticipantUpdate, recheck

router = SlashRouter(prefix="/ttp/connect", tags=["participants"])
One = Envelope[ParticipantPublic]


@router.get("/participants", name="participants", response_model=Envelope[list[ParticipantPublic]])
def read_participants(request: Request, store: StoreDep) -> dict[str, Any]:
    return answer(request, store.list_participants())


@router.post(
    "/participants",
    name="participants",
    status_code=201,
    response_model=One,
    responses=created_responses(ParticipantPublic),
)
def create_participant(
    request: Request, response: Response, store: StoreDep, body: ParticipantCreate
) -> dict[str, Any]:
    details = body.model_dump(mode="json", exclude={"id"})
    return created(request, response, store.create_participant(body.id, details))


@router.get("/participants/{participant_id}", name="participant", response_model=One)
def read_participant(request: Request, store: StoreDep, participant_id: ParticipantId) -> dict[str, Any]:
    return answer(request, store.get_participant(participant_id))


@router.put("/participants/{participant_id}", name="participant", response_model=One)
def update_participant(
    request: Request, store: StoreDep, participant_id: ParticipantId, body: ParticipantUpdate
) -> dict[str, Any]:
    changes = agree_with_url(
        request, body.model_dump(mode="json", exclude_unset=True), aliases={"id": "participant_id"}
    )

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(ParticipantCreate, merged, {"id": participant_id})

    return answer(request, store.update_participant(participant_id, changes, validate))


@router.delete("/participants/{participant_id}", name="participant", response_model=One)
def delete_participant(request: Request, store: StoreDep, participant_id: ParticipantId) -> dict[str, Any]:
    """Removes the participant with its registrations, tags, alignments, validations and predictions."""
    return answer(request, store.delete_participant(participant_id))
