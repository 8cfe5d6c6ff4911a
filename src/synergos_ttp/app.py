"""The TTP's REST service: `create_app(settings)` builds it; nothing is configured at import time."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from synergos_core.envelope import API_VERSION, BodyLimitMiddleware, envelope, install_error_handlers
from synergos_core.settings import TTPSettings

from .jobs import JobBoard
from .orchestrator import Orchestrator
from .routes import ROUTERS
from .storage import Store


def create_app(settings: TTPSettings) -> FastAPI:
    """A TTP app with its own metadata store (SQLite under `data_dir` unless `db_url` is given)."""
    if settings.data_dir is None:
        settings.resolve_dirs("ttp")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_url or f"sqlite:///{settings.data_dir}/synergos.db")

    jobs = JobBoard()
    orchestrator = Orchestrator(store, settings, jobs)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await orchestrator.aclose()
            store.close()

    app = FastAPI(title=f"Synergos TTP ({settings.id})", version=API_VERSION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.jobs = jobs
    app.state.orchestrator = orchestrator
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/health", name="health")
    def health(request: Request) -> JSONResponse:
        return envelope(request, {"id": settings.id, "status": "ok"})

    return app
