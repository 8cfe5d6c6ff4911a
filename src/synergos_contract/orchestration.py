"""What the phase 2 and 3 routes ask of a service: the TTP carries requests out on its grid, the
Director queues them for the cluster's grids. Both plan the work with `synergos_contract.planning`;
they differ only in how they run the jobs it makes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from synergos_core.records import Alignment, Model, OptimizationSummary, Prediction, QueuedJob, Validation

if TYPE_CHECKING:
    from .schemas import OptimizationRequest


class Orchestrator(Protocol):
    queued: bool
    """False: the work is done within the request and its records answer it (201, basic mode).
    True: it is queued and the jobs answer it (202, cluster mode); the records appear as they complete."""

    async def align(
        self,
        collab_id: str,
        project_id: str,
        auto_align: bool = True,
        auto_fix: bool = True,
        preprocessing: dict[str, Any] | None = None,
    ) -> Sequence[Alignment | QueuedJob]: ...

    async def train(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
    ) -> Sequence[Model | QueuedJob]: ...

    async def validate(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
    ) -> Sequence[Validation | QueuedJob]: ...

    async def predict(
        self,
        participant_id: str,
        collab_id: str,
        tags: dict[str, list[list[str]]],
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
    ) -> Sequence[Prediction | QueuedJob]: ...

    async def optimize(
        self, collab_id: str, project_id: str, expt_id: str, request: OptimizationRequest
    ) -> list[OptimizationSummary]: ...

    async def champion(self, collab_id: str, project_id: str, expt_id: str) -> dict[str, Any] | None:
        """The experiment's registered champion model version in MLflow, or None."""
        ...

    async def aclose(self) -> None: ...
