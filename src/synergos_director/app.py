"""The Director's REST service: the TTP's contract, with phase 2 and 3 work queued for the grids."""

from __future__ import annotations

from fastapi import FastAPI

from synergos_contract.app import create_contract_app
from synergos_core.settings import DirectorSettings

from .orchestrator import QueueOrchestrator


def create_app(settings: DirectorSettings) -> FastAPI:
    settings.resolve_dirs("director")  # fills only what was not given
    return create_contract_app(
        settings,
        f"Synergos Director ({settings.id})",
        lambda store, jobs: QueueOrchestrator(store, settings, jobs),
        role="director",
    )
