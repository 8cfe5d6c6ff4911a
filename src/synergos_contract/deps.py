"""What every TTP route needs: the store and settings of its app, ids in URLs, and a router whose
routes answer with and without a trailing slash (the Driver calls collections without it)."""
from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from synergos_core.errors import InvalidRequest
from synergos_core.schemas import ID_PATTERN
from synergos_core.settings import TTPSettings

from .envelope import envelope
from .store import Store, created_status

ID_FIELDS = ("collab_id", "project_id", "expt_id", "run_id", "participant_id")
RESERVED_FIELDS = ("key", "created_at", "relations")


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> TTPSettings:
    return request.app.state.settings


def created(request: Request, record: dict) -> JSONResponse:
    """A create's answer: 201 with the new record, or 200 with the same one already there."""
    return envelope(request, record, created_status(record))


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[TTPSettings, Depends(get_settings)]

_ID_HELP = "letters, digits, '_', '-', '.'; at most 128"
CollabId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ProjectId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ExptId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
RunId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]
ParticipantId = Annotated[str, Path(pattern=ID_PATTERN, description=_ID_HELP)]


class SlashRouter(APIRouter):
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
            fields.append({"path": name, "message": f"{name!r} is reserved for the record envelope",
                           "type": "reserved"})
        elif url_name in ID_FIELDS and url_name in params:
            if value != params[url_name]:
                fields.append({"path": name, "message": f"{name} {value!r} disagrees with the URL's "
                                                       f"{url_name} {params[url_name]!r}", "type": "id_mismatch"})
        else:
            kept[name] = value
    if fields:
        raise InvalidRequest("; ".join(f"{f['path']}: {f['message']}" for f in fields), "request.invalid",
                             fields=fields)
    return kept
