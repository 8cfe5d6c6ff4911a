"""A participant's registration to a project (role and compute nodes), its data tags, and the
registration listings by collaboration, project and participant.

Registration and tag routes also answer under the participant-first spelling of the original
(`/participants/{pid}/collaborations/{c}/projects/{p}/registration`).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from synergos_core.errors import ErrorCode, InvalidRequest

from ..deps import CollabId, ParticipantId, ProjectId, SlashRouter, StoreDep, agree_with_url, created
from ..public import Envelope, RegistrationPublic, TagsPublic, answer, created_responses
from ..schemas import RegistrationCreate, RegistrationUpdate, TagsCreate, TagsUpdate, recheck

router = SlashRouter(prefix="/ttp/connect", tags=["registrations"])

_REGISTRATION = "/collaborations/{collab_id}/projects/{project_id}/participants/{participant_id}/registration"
_REGISTRATION_ALIAS = "/participants/{participant_id}/collaborations/{collab_id}/projects/{project_id}/registration"
_TAGS, _TAGS_ALIAS = _REGISTRATION + "/tags", _REGISTRATION_ALIAS + "/tags"
Many = Envelope[list[RegistrationPublic]]
One = Envelope[RegistrationPublic]
OneTags = Envelope[TagsPublic]


# ---- listings ----


@router.get("/collaborations/{collab_id}/registrations", name="registrations", response_model=Many)
def read_collaboration_registrations(request: Request, store: StoreDep, collab_id: CollabId) -> dict[str, Any]:
    return answer(request, store.list_registrations(collab_id=collab_id))


@router.get(
    "/collaborations/{collab_id}/projects/{project_id}/registrations", name="registrations", response_model=Many
)
def read_project_registrations(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId
) -> dict[str, Any]:
    return answer(request, store.list_registrations(collab_id=collab_id, project_id=project_id))


@router.get("/participants/{participant_id}/registrations", name="registrations", response_model=Many)
def read_participant_registrations(request: Request, store: StoreDep, participant_id: ParticipantId) -> dict[str, Any]:
    return answer(request, store.list_registrations(participant_id=participant_id))


@router.get(
    "/collaborations/{collab_id}/participants/{participant_id}/registrations", name="registrations", response_model=Many
)
@router.get(
    "/participants/{participant_id}/collaborations/{collab_id}/registrations", name="registrations", response_model=Many
)
def read_participant_collaboration_registrations(
    request: Request, store: StoreDep, collab_id: CollabId, participant_id: ParticipantId
) -> dict[str, Any]:
    return answer(request, store.list_registrations(collab_id=collab_id, participant_id=participant_id))


# ---- one registration ----


@router.get(_REGISTRATION, name="registration", response_model=One)
@router.get(_REGISTRATION_ALIAS, name="registration", response_model=One, include_in_schema=False)
def read_registration(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, participant_id: ParticipantId
) -> dict[str, Any]:
    return answer(request, store.get_registration(collab_id, project_id, participant_id))


@router.post(
    _REGISTRATION,
    name="registration",
    status_code=201,
    response_model=One,
    responses=created_responses(RegistrationPublic),
)
@router.post(_REGISTRATION_ALIAS, name="registration", status_code=201, response_model=One, include_in_schema=False)
def create_registration(
    request: Request,
    response: Response,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    participant_id: ParticipantId,
    body: RegistrationCreate,
) -> dict[str, Any]:
    nodes = [node.model_dump(mode="json") for node in body.nodes()]
    return created(
        request, response, store.create_registration(collab_id, project_id, participant_id, body.role, nodes)
    )


@router.put(_REGISTRATION, name="registration", response_model=One)
@router.put(_REGISTRATION_ALIAS, name="registration", response_model=One, include_in_schema=False)
def update_registration(
    request: Request,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    participant_id: ParticipantId,
    body: RegistrationUpdate,
) -> dict[str, Any]:
    """A role replaces the role; any node_* replaces the whole node list (with n_count matching it)."""
    nodes = [node.model_dump(mode="json") for node in body.nodes()] or None
    if nodes is None and body.n_count is not None:
        current = len(store.get_registration(collab_id, project_id, participant_id).nodes)
        if body.n_count != current:
            message = f"n_count is {body.n_count} but the registration has {current} nodes; send the nodes too"
            raise InvalidRequest(
                message,
                ErrorCode.REQUEST_INVALID,
                fields=[{"path": "n_count", "message": message, "type": "count_mismatch"}],
            )
    record = store.update_registration(collab_id, project_id, participant_id, role=body.role, nodes=nodes)
    return answer(request, record)


@router.delete(_REGISTRATION, name="registration", response_model=One)
@router.delete(_REGISTRATION_ALIAS, name="registration", response_model=One, include_in_schema=False)
def delete_registration(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, participant_id: ParticipantId
) -> dict[str, Any]:
    """Removes the registration with its nodes, tags and alignments."""
    return answer(request, store.delete_registration(collab_id, project_id, participant_id))


# ---- the registration's data tags ----


@router.get(_TAGS, name="tags", response_model=OneTags)
@router.get(_TAGS_ALIAS, name="tags", response_model=OneTags, include_in_schema=False)
def read_tags(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, participant_id: ParticipantId
) -> dict[str, Any]:
    return answer(request, store.get_tags(collab_id, project_id, participant_id))


@router.post(_TAGS, name="tags", status_code=201, response_model=OneTags, responses=created_responses(TagsPublic))
@router.post(_TAGS_ALIAS, name="tags", status_code=201, response_model=OneTags, include_in_schema=False)
def create_tags(
    request: Request,
    response: Response,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    participant_id: ParticipantId,
    body: TagsCreate,
) -> dict[str, Any]:
    details = agree_with_url(request, body.model_dump(mode="json"))
    return created(request, response, store.create_tags(collab_id, project_id, participant_id, details))


@router.put(_TAGS, name="tags", response_model=OneTags)
@router.put(_TAGS_ALIAS, name="tags", response_model=OneTags, include_in_schema=False)
def update_tags(
    request: Request,
    store: StoreDep,
    collab_id: CollabId,
    project_id: ProjectId,
    participant_id: ParticipantId,
    body: TagsUpdate,
) -> dict[str, Any]:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        return recheck(TagsCreate, merged, {})

    return answer(request, store.update_tags(collab_id, project_id, participant_id, changes, validate))


@router.delete(_TAGS, name="tags", response_model=OneTags)
@router.delete(_TAGS_ALIAS, name="tags", response_model=OneTags, include_in_schema=False)
def delete_tags(
    request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, participant_id: ParticipantId
) -> dict[str, Any]:
    return answer(request, store.delete_tags(collab_id, project_id, participant_id))
