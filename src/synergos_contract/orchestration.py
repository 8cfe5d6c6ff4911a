"""What the phase 2 and 3 routes ask of a service: the TTP carries requests out on its grid, the
Director queues them for the cluster's grids."""
from __future__ import annotations

from typing import Any, Protocol


class Orchestrator(Protocol):
    async def align(self, collab_id: str, project_id: str, auto_align: bool = True,
                    auto_fix: bool = True, preprocessing: dict[str, Any] | None = None) -> list[dict]: ...

    async def train(self, collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None,
                    auto_align: bool = True) -> list[dict]: ...

    async def validate(self, collab_id: str, project_id: str, expt_id: str | None = None,
                       run_id: str | None = None, participant_id: str | None = None) -> list[dict]: ...

    async def predict(self, participant_id: str, collab_id: str, tags: dict[str, list[list[str]]],
                      project_id: str | None = None, expt_id: str | None = None,
                      run_id: str | None = None) -> list[dict]: ...

    async def optimize(self, collab_id: str, project_id: str, expt_id: str, request: dict[str, Any]) -> list[dict]:
        ...

    async def aclose(self) -> None: ...
