"""What every TTP route needs: the store, settings and orchestrator of its app, ids in URLs, a
router that documents the error envelope and sends only the fields a record has, and one whose
routes answer with and without a trailing slash (the Driver calls collections without it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from synergos_core.errors import ErrorCode, InvalidRequest
from synergos_core.records import Record
from synergos_core.schemas import ID_PATTERN
from synergos_core.settings import TTPSettings

from .jobs import JobBoard
from .orchestration import Orchestrator
from .public import ERROR_RESPONSES, answer
from .store import Store, Written

ID_FIELDS = ("collab_id", "project_id", "expt_id", "run_id", "participant_id")
RESERVED_FIELDS = ("key", "created_at", "relations")


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> TTPSettings:
    return request.app.state.settings


def get_orchestrator(request: Request) -> Orchestrator:
    return request.app.state.orchestrator


def get_jobs(request: Request) -> JobBoard:
    return request.app.state.jobs


def created(request: Request, response: Response, written: Written[Record]) -> dict[str, Any]:
    """A create's answer: 201 with the new record, or 200 with the same one already there."""
    return answer(request, written.record, 201 if written.created else 200, response)


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[TTPSettings, Depends(get_settings)]
OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]
JobsDep = Annotated[JobBoard, Depends(get_jobs)]

_ID_HELP = "letters, digits, '_', '-', '.'; at most 128"
CollabId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ProjectId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ExptId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
RunId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ParticipantId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]


class ContractRouter(APIRouter):
    """Documents the error envelope on every route, and sends of a response model only the fields
    the answer holds (a record's details that were never given stay absent, as stored)."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        writes = bool({"POST", "PUT"} & set(kwargs.get("methods") or ()))
        errors = {status: entry for status, entry in ERROR_RESPONSES.items() if writes or status != 409}
        super().add_api_route(
            path,
            endpoint,
            **{
                **kwargs,
                "response_model_exclude_unset": True,
                "responses": {**errors, **(kwargs.get("responses") or {})},
            },
        )


class SlashRouter(ContractRouter):
    """Registers every route at `path` and at `path/`, so neither spelling needs a redirect."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        if path and not path.endswith("/"):
            super().add_api_route(path + "/", endpoint, **{**kwargs, "include_in_schema": False})


def agree_with_url(request: Request, body: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The body without the ids that repeat its URL; an id naming another record, or a field named
    like a record's envelope (`key`, `created_at`, `relations`), is a 422 and nothing is stored.

    `aliases` maps body names onto URL parameters (a participant body calls its id `id`).
    """
    params = request.path_params
    kept: dict[str, Any] = {}
    fields = []
    for name, value in body.items():
        url_name = (aliases or {}).get(name, name)
        if name in RESERVED_FIELDS:
            fields.append(
                {"path": name, "message": f"{name!r} is reserved for the record envelope", "type": "reserved"}
            )
        elif url_name in ID_FIELDS and url_name in params:
            if value != params[url_name]:
                fields.append(
                    {
                        "path": name,
                        "message": f"{name} {value!r} disagrees with the URL's {url_name} {params[url_name]!r}",
                        "type": "id_mismatch",
                    }
                )
        else:
            kept[name] = value
    if fields:
        raise InvalidRequest(
            "; ".join(f"{f['path']}: {f['message']}" for f in fields), ErrorCode.REQUEST_INVALID, fields=fields
        )
    return kept
