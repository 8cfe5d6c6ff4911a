"""The TTP's REST routers, one module per resource. `create_app` includes every router in ROUTERS."""

from __future__ import annotations

from fastapi import APIRouter

from . import collaborations, evaluate, experiments, participants, projects, registrations, runs, status, train

ROUTERS: list[APIRouter] = [
    collaborations.router,
    projects.router,
    experiments.router,
    runs.router,
    participants.router,
    registrations.router,
    train.router,
    evaluate.router,
    status.router,
]
