"""Phase 3: /ttp/evaluate/… validations and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from synergos_core.schemas import ID_PATTERN, check_tag

from ..deps import ContractRouter, JobsDep, OrchestratorDep, StoreDep
from ..public import Envelope, PredictionPublic, QueuedJobPublic, ValidationPublic, answer, queued_responses
from .train import accepted, start_once

router = ContractRouter(prefix="/ttp/evaluate", tags=["evaluate"])
Id = Annotated[str, Path(pattern=ID_PATTERN)]


class ValidationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    auto_align: bool = True


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tags: dict[str, list[list[str]]] = Field(default_factory=dict)
    auto_align: bool = True

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
        return {project: [check_tag(tag) for tag in tags] for project, tags in value.items()}


VALIDATION = "/collaborations/{collab_id}/projects/{project_id}/validations"
VALIDATION_PATHS = [
    VALIDATION,
    VALIDATION + "/",
    VALIDATION + "/{expt_id}",
    VALIDATION + "/{expt_id}/{run_id}",
    VALIDATION + "/{expt_id}/{run_id}/{participant_id}",
]


async def create_validations(
    request: Request,
    response: Response,
    body: ValidationRequest,
    orch: OrchestratorDep,
    store: StoreDep,
    jobs: JobsDep,
    collab_id: Id,
    project_id: Id,
    expt_id: str | None = None,
    run_id: str | None = None,
    participant_id: str | None = None,
) -> dict[str, Any]:
    """A run of the scope whose validation (of these parties) is queued or running is answered
    with that job (202) rather than validated again."""
    only = {"participant_id": participant_id} if participant_id else {}
    scopes = [
        {"collab_id": collab_id, "project_id": project_id, "expt_id": expt.expt_id, "run_id": run.run_id, **only}
        for expt, run in store.run_scope(collab_id, project_id, expt_id, run_id)
    ]

    async def validate_all() -> Sequence[Any]:
        return await orch.validate(collab_id, project_id, expt_id, run_id, participant_id)

    async def validate_one(scope: dict[str, str]) -> Sequence[Any]:
        return await orch.validate(collab_id, project_id, scope["expt_id"], scope["run_id"], participant_id)

    return await start_once(request, response, orch, jobs, "validation", scopes, validate_all, validate_one)


async def read_validations(
    request: Request,
    store: StoreDep,
    collab_id: Id,
    project_id: Id,
    expt_id: str | None = None,
    run_id: str | None = None,
    participant_id: str | None = None,
) -> dict[str, Any]:
    return answer(request, store.list_validations(collab_id, project_id, expt_id, run_id, participant_id))


PREDICTION = "/participants/{participant_id}/collaborations/{collab_id}/predictions"
PREDICTION_PATHS = [
    PREDICTION,
    PREDICTION + "/",
    PREDICTION + "/{project_id}",
    PREDICTION + "/{project_id}/{expt_id}",
    PREDICTION + "/{project_id}/{expt_id}/{run_id}",
]


async def create_predictions(
    request: Request,
    response: Response,
    body: PredictionRequest,
    orch: OrchestratorDep,
    participant_id: Id,
    collab_id: Id,
    project_id: str | None = None,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    records = await orch.predict(participant_id, collab_id, body.tags, project_id, expt_id, run_id)
    return answer(request, records, accepted(orch), response)


async def read_predictions(
    request: Request,
    store: StoreDep,
    participant_id: Id,
    collab_id: Id,
    project_id: str | None = None,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    return answer(request, store.list_predictions(participant_id, collab_id, project_id, expt_id, run_id))


for _path in VALIDATION_PATHS:
    router.add_api_route(
        _path,
        create_validations,
        methods=["POST"],
        name="validations",
        status_code=201,
        response_model=Envelope[list[ValidationPublic] | list[QueuedJobPublic]],
        responses=queued_responses(QueuedJobPublic),
    )
    router.add_api_route(
        _path, read_validations, methods=["GET"], name="validations", response_model=Envelope[list[ValidationPublic]]
    )
for _path in PREDICTION_PATHS:
    router.add_api_route(
        _path,
        create_predictions,
        methods=["POST"],
        name="predictions",
        status_code=201,
        response_model=Envelope[list[PredictionPublic] | list[QueuedJobPublic]],
        responses=queued_responses(QueuedJobPublic),
    )
    router.add_api_route(
        _path, read_predictions, methods=["GET"], name="predictions", response_model=Envelope[list[PredictionPublic]]
    )
