"""POST /worker/poll/{c}/{p}: headers, schemas, summary metadata and train-split aggregates of the
tagged data; never rows."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Annotated

from fastapi import APIRouter, Path, Request

from synergos_contract.envelope import envelope
from synergos_core.data import load_meta
from synergos_core.schemas import ID_PATTERN, METAS, PollRequest

from ..deps import SettingsDep

router = APIRouter(prefix="/worker")
Id = Annotated[str, Path(pattern=ID_PATTERN)]


def _describe(data_dir: pathlib.Path, body: PollRequest) -> dict:
    headers, schemas, metadata = {}, {}, {}
    statistics = None
    for meta in METAS:
        prepared = load_meta(data_dir, getattr(body.tags, meta), body.action)
        if prepared is None:
            continue
        headers[meta] = {"X": prepared.x_headers, "y": prepared.y_headers}
        schemas[meta] = prepared.schema
        metadata[meta] = prepared.metadata
        if meta == "train":  # aggregates of the train split only: the project's preprocessing is fitted on them
            statistics = prepared.statistics
    return {
        "headers": headers,
        "schemas": schemas,
        "metadata": metadata,
        "statistics": statistics.model_dump() if statistics is not None else None,
    }


@router.post("/poll/{collab_id}/{project_id}", name="poll")
async def poll(request: Request, body: PollRequest, settings: SettingsDep, collab_id: Id, project_id: Id) -> object:
    assert settings.data_dir is not None  # resolved when the service starts
    data = await asyncio.to_thread(_describe, settings.data_dir, body)
    return envelope(request, data)
