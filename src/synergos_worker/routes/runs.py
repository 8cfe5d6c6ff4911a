"""Run sessions: initialise (load aligned data, open the federation channel), terminate, results."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request

from synergos_contract.envelope import envelope
from synergos_core.federation import run_path
from synergos_core.schemas import ID_PATTERN, InitialiseRequest, TerminateRequest

from ..deps import RegistryDep

router = APIRouter(prefix="/worker")
Id = Annotated[str, Path(pattern=ID_PATTERN)]
RUN = "/{collab_id}/{project_id}/{expt_id}/{run_id}"


@router.post("/initialise" + RUN, name="initialise")
async def initialise(
    request: Request,
    body: InitialiseRequest,
    registry: RegistryDep,
    collab_id: Id,
    project_id: Id,
    expt_id: Id,
    run_id: Id,
) -> object:
    key = (collab_id, project_id, expt_id, run_id)
    session, created = await asyncio.to_thread(registry.open, key, body)
    data = {
        "participant_id": session.participant_id,
        "ws_path": run_path(*key),
        "counts": session.counts,
        "parameters": sum(t.numel() for t in session.trainer.state.values()),
    }
    return envelope(request, data, 201 if created else 200)


@router.post("/terminate" + RUN, name="terminate")
async def terminate(
    request: Request,
    registry: RegistryDep,
    collab_id: Id,
    project_id: Id,
    expt_id: Id,
    run_id: Id,
    body: TerminateRequest | None = None,
) -> object:
    # with the run's token, only the session it opened ends (never a newer one of the same run)
    session = registry.close((collab_id, project_id, expt_id, run_id), body.token if body else None)
    return envelope(request, {"participant_id": session.participant_id, "results": session.results})


@router.get("/predict" + RUN, name="predictions")
async def results(
    request: Request, registry: RegistryDep, collab_id: Id, project_id: Id, expt_id: Id, run_id: Id
) -> object:
    session = registry.get((collab_id, project_id, expt_id, run_id))
    return envelope(request, {"participant_id": session.participant_id, "results": session.results})
