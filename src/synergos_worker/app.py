"""Worker app factory: REST commands on the f_port, federation WebSocket on the port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from synergos_contract.auth import IdentityGate
from synergos_contract.envelope import API_VERSION, BodyLimitMiddleware, envelope, install_error_handlers
from synergos_contract.serving import service_credentials
from synergos_core.settings import WorkerSettings

from .federation import FederationServer
from .routes import ROUTERS
from .sessions import SessionRegistry
from .trust import WorkerTrust


def create_app(settings: WorkerSettings, *, federation: bool = True) -> FastAPI:
    assert settings.data_dir is not None and settings.outputs_dir is not None  # resolved by the CLI
    registry = SessionRegistry(settings.data_dir)
    credentials = service_credentials(settings, "worker")  # None only with --insecure
    trust = WorkerTrust.of(credentials, settings.trust, settings.collaborations) if credentials else None
    server = FederationServer(registry, settings.federation, settings.outputs_dir, credentials, trust)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if federation:
            await server.start(settings.host, settings.ws_port)
        try:
            yield
        finally:
            registry.close_all()
            await server.stop()

    app = FastAPI(title=f"Synergos Worker {settings.id}", version=API_VERSION, lifespan=lifespan)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.registry = registry
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/health", name="health")
    async def health(request: Request) -> object:
        return envelope(request, {"id": settings.id, "status": "ok", "sessions": registry.count()})

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if trust is not None:
        app.add_middleware(IdentityGate, admit=trust.admit)  # outermost: refused before anything else
    app.state.credentials = credentials
    return app
