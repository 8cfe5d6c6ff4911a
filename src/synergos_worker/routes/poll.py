"""POST /worker/poll/{c}/{p}: headers, schemas and summary metadata of the tagged data; never rows."""
from __future__ import annotations

from typing import Annotated

import asyncio

from fastapi import APIRouter, Path, Request

from synergos_core.data import load_meta
from synergos_core.envelope import envelope
from synergos_core.schemas import ID_PATTERN, METAS, PollRequest

from ..deps import SettingsDep

router = APIRouter(prefix="/worker")
Id = Annotated[str, Path(pattern=ID_PATTERN)]


def _describe(data_dir, body: PollRequest) -> dict:  # type: ignore[no-untyped-def]
    headers, schemas, metadata = {}, {}, {}
    for meta in METAS:
        prepared = load_meta(data_dir, getattr(body.tags, meta), body.action)
        if prepared is None:
            continue
        headers[meta] = {"X": prepared.x_headers, "y": prepared.y_headers}
        schemas[meta] = prepared.schema
        metadata[meta] = prepared.metadata
    return {"headers": headers, "schemas": schemas, "metadata": metadata}


@router.post("/poll/{collab_id}/{project_id}", name="poll")
async def poll(request: Request, body: PollRequest, settings: SettingsDep,
               collab_id: Id, project_id: Id) -> object:
    data = await asyncio.to_thread(_describe, settings.data_dir, body)
    return envelope(request, data)
