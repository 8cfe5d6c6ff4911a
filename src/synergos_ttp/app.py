"""The TTP's REST service in basic mode: `create_app(settings)` builds it; nothing at import time."""

from __future__ import annotations

from fastapi import FastAPI

from synergos_contract.app import create_contract_app
from synergos_core.settings import TTPSettings

from .orchestrator import Orchestrator


def create_app(settings: TTPSettings) -> FastAPI:
    settings.resolve_dirs("ttp")  # fills only what was not given
    return create_contract_app(
        settings, f"Synergos TTP ({settings.id})", lambda store, jobs: Orchestrator(store, settings, jobs)
    )
