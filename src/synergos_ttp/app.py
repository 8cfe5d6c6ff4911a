"""The TTP's REST service in basic mode: `create_app(settings)` builds it; nothing at import time."""

from __future__ import annotations

from fastapi import FastAPI

from synergos_contract.app import create_contract_app
from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_core.settings import TTPSettings

from .orchestrator import Orchestrator


def create_app(settings: TTPSettings) -> FastAPI:
    settings.resolve_dirs("ttp")  # fills only what was not given
    made: list[Orchestrator] = []

    def orchestrator(store: Store, jobs: JobBoard) -> Orchestrator:
        made.append(Orchestrator(store, settings, jobs))
        return made[0]

    # /health says whether MLflow tracking works, and if not why and what to do
    return create_contract_app(
        settings,
        f"Synergos TTP ({settings.id})",
        orchestrator,
        health=lambda: made[0].mlflow.health() if made else {},
    )
