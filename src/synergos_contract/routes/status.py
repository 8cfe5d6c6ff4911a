"""GET /ttp/status/jobs: progress of long work, polled by the Driver while it waits."""
from __future__ import annotations

from fastapi import APIRouter, Request

from synergos_contract.envelope import envelope

router = APIRouter(prefix="/ttp/status")


@router.get("/jobs", name="jobs")
async def list_jobs(request: Request, collab_id: str | None = None, project_id: str | None = None) -> object:
    return envelope(request, request.app.state.jobs.list(collab_id=collab_id, project_id=project_id))
