"""The Director's REST service: the TTP's contract, with phase 2 and 3 work queued for the grids."""

from __future__ import annotations

from fastapi import FastAPI

from synergos_contract.app import create_contract_app
from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_core.settings import DirectorSettings

from .orchestrator import QueueOrchestrator


def create_app(settings: DirectorSettings) -> FastAPI:
    settings.resolve_dirs("director")  # fills only what was not given
    made: list[QueueOrchestrator] = []

    def orchestrator(store: Store, jobs: JobBoard) -> QueueOrchestrator:
        made.append(QueueOrchestrator(store, settings, jobs))
        return made[0]

    return create_contract_app(
        settings,
        f"Synergos Director ({settings.id})",
        orchestrator,
        health=lambda: made[0].health() if made else {},  # open jobs, MLflow tracking
        role="director",
    )
