"""The app both the TTP and the Director serve: metadata routes, phase 2 and 3 routes, job
progress and health, backed by the metadata store and the service's own orchestrator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request

from synergos_core.settings import ServiceSettings

from .auth import IdentityGate, authorize, contract_gate
from .envelope import API_VERSION, BodyLimitMiddleware, install_error_handlers
from .jobs import JobBoard
from .orchestration import Orchestrator
from .public import Envelope, HealthPublic, answer
from .routes import ROUTERS
from .serving import service_credentials
from .store import Store

OrchestratorFactory = Callable[[Store, JobBoard], Orchestrator]


def create_contract_app(
    settings: ServiceSettings,
    title: str,
    make_orchestrator: OrchestratorFactory,
    health: Callable[[], dict] | None = None,
    role: str = "ttp",
) -> FastAPI:
    """An app with its own metadata store (SQLite under `data_dir` unless `db_url` is given).

    The job board is kept in the store's jobs table (`GET /ttp/status/jobs` reads it). A TTP runs
    its jobs itself: those a previous process left queued or running are marked `interrupted`
    before any request is served. The Director's jobs go on while it is down (they are on the
    MQ): its orchestrator sets their states from its job journal as it starts."""
    credentials = service_credentials(settings, role)  # None only with --insecure
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]  # set by the CLI or the caller
    store = Store(settings.db_url or f"sqlite:///{settings.data_dir}/synergos.db")
    jobs = JobBoard(store=store)
    if role == "ttp":
        jobs.recover(role.upper())
    orchestrator = make_orchestrator(store, jobs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await orchestrator.aclose()
            store.close()

    app = FastAPI(title=title, version=API_VERSION, lifespan=lifespan, dependencies=[Depends(authorize)])
    app.state.settings = settings
    app.state.credentials = credentials
    app.state.store = store
    app.state.jobs = jobs
    app.state.orchestrator = orchestrator
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if credentials is not None:
        app.add_middleware(IdentityGate, admit=contract_gate)  # outermost: refused before anything else
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/health", name="health", response_model=Envelope[HealthPublic], tags=["health"])
    def read_health(request: Request) -> dict[str, Any]:
        return answer(request, {"id": settings.id, "status": "ok", **(health() if health else {})})

    return app
