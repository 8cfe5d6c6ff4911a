"""The cluster TTP's process: a job consumer on its own thread, and a health/status endpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from synergos_contract.auth import IdentityGate, roles_and_names
from synergos_contract.envelope import API_VERSION, envelope, install_error_handlers
from synergos_contract.jobs import JobBoard
from synergos_contract.store import Store
from synergos_core.errors import SynergosError
from synergos_core.identity import ORCHESTRATING_ROLES
from synergos_core.settings import TTPSettings
from synergos_mq.connection import parse_queue_flag
from synergos_mq.consumer import JobConsumer
from synergos_mq.errors import JobFailed

from .cluster import JobRunner, check_job, permanent

log = logging.getLogger(__name__)


def create_cluster_app(settings: TTPSettings) -> FastAPI:
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]  # set by the CLI
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]  # set by the CLI
    # its jobs only, in a file of its own: the data directory may be the Director's, shared
    store = Store(settings.db_url or f"sqlite:///{settings.data_dir}/ttp_{settings.id}_jobs.db")
    jobs = JobBoard(store=store)
    jobs.recover()  # what this TTP was running when it stopped: interrupted, until delivered again
    runner = JobRunner(settings, jobs)

    def handle(job: dict) -> dict:
        try:
            return runner(job)
        except SynergosError as exc:
            if permanent(exc):
                raise JobFailed(f"{exc.code}: {exc.detail}") from exc
            raise

    assert settings.queue is not None  # a cluster TTP is started with --queue
    queue = settings.queue
    # a job that cannot run is refused on its first delivery; one whose grid is unreachable is
    # retried after SYNERGOS_MQ_RETRY_DELAY_S, … (synergos_mq.retry), then reported failed
    consumer = JobConsumer(parse_queue_flag(queue), handle, name=settings.id, check=check_job)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), name="job-consumer", daemon=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread.start()
        log.info("consuming jobs for grid %d from %s:%s", settings.grid, queue[1], queue[2])
        try:
            yield
        finally:
            stop.set()
            consumer.stop()
            thread.join(timeout=30)
            store.close()

    app = FastAPI(title=f"Synergos cluster TTP ({settings.id})", version=API_VERSION, lifespan=lifespan)
    install_error_handlers(app)
    if runner.credentials is not None:
        app.add_middleware(IdentityGate, admit=roles_and_names(ORCHESTRATING_ROLES))

    @app.get("/health", name="health")
    def health(request: Request) -> JSONResponse:
        alive = thread.is_alive()
        return envelope(
            request,
            {
                "id": settings.id,
                "status": "ok" if alive else "stopped",
                **runner.status(),
                "mq": {"connected": consumer.ready.is_set(), "reconnects": consumer.reconnects},
            },
            200 if alive else 503,
        )

    @app.get("/ttp/status/jobs", name="jobs")
    def list_jobs(request: Request, collab_id: str | None = None, project_id: str | None = None) -> JSONResponse:
        """The jobs this TTP ran or runs, as a basic TTP's `/ttp/status/jobs` shows them."""
        return envelope(request, jobs.list(collab_id=collab_id, project_id=project_id))

    return app
