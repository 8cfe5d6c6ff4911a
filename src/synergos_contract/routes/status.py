"""GET /ttp/status/jobs: progress of long work, polled by the Driver while it waits."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ..deps import ContractRouter
from ..public import Envelope, JobPublic, answer

router = ContractRouter(prefix="/ttp/status", tags=["status"])


@router.get("/jobs", name="jobs", response_model=Envelope[list[JobPublic]])
async def list_jobs(request: Request, collab_id: str | None = None, project_id: str | None = None) -> dict[str, Any]:
    return answer(request, request.app.state.jobs.list(collab_id=collab_id, project_id=project_id))
