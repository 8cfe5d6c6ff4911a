"""The Driver: the user's handle on one TTP (basic mode) or Director (cluster mode)."""

from __future__ import annotations

import os
from types import TracebackType

import httpx

from ._connect import CollaborationTask, ExperimentTask, ParticipantTask, ProjectTask, RunTask
from ._evaluate import PredictionTask, ValidationTask
from ._registration import RegistrationTask, TagTask
from ._session import Session
from ._tls import client_context, credentials_folder
from ._train import AlignmentTask, ModelTask, OptimizationTask
from ._version import __version__

DEFAULT_TIMEOUT = 30.0
DEFAULT_LIVENESS_TIMEOUT = 60.0  # a long call's server answering nothing for this long is given up


class Driver:
    """Talks to a TTP or Director at `host:port` over REST.

        driver = Driver(host="127.0.0.1", port=5000)
        driver.collaborations.create("collaboration_1")

    Each task property returns a new task object, so state kept on a task (`configure_*`
    sections, `add_node` nodes) lives as long as the object you hold. `timeout` bounds ordinary
    calls (seconds, or an `httpx.Timeout`); long work (alignments, models, validations,
    predictions, optimizations) has no read timeout and shows progress on stderr unless
    `show_progress=False`, but raises `ServerUnresponsive` once the server has answered neither
    the call nor a probe of its `/health` for `liveness_timeout` seconds (default 60; None waits
    without bound). Idempotent GETs are retried `retries` times on connection errors and
    5xx answers. `transport` replaces the network, e.g. with `httpx.MockTransport` in tests.

    The user's identity is a folder from `synergos-provision` (`ca.pem`, `cert.pem`, `key.pem`):
    `credentials=` or, without code changes, the `SYNERGOS_CREDENTIALS` environment variable.
    With credentials the Driver speaks HTTPS, presents the user's certificate and trusts only the
    collaboration CA; `is_secured=True` forces HTTPS, `is_secured=False` plain HTTP (for services
    started with `--insecure`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        is_secured: bool | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        *,
        show_progress: bool = True,
        retries: int = 2,
        credentials: str | os.PathLike[str] | None = None,
        liveness_timeout: float | None = DEFAULT_LIVENESS_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        folder = credentials_folder(credentials)
        # HTTPS when asked, or by default whenever the user holds credentials
        self.is_secured = bool(folder is not None) if is_secured is None else bool(is_secured)
        self.credentials = folder if self.is_secured else None
        scheme = "https" if self.is_secured else "http"
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host  # bare IPv6
        self._session = Session(
            f"{scheme}://{netloc}:{port}",
            timeout=timeout,
            transport=transport,
            verify=client_context(folder) if self.is_secured and folder is not None else True,
            retries=retries,
            show_progress=show_progress,
            user_agent=f"synergos-driver/{__version__}",
            liveness_timeout=liveness_timeout,
        )

    @property
    def address(self) -> str:
        """`http(s)://host:port`."""
        return self._session.address

    @property
    def show_progress(self) -> bool:
        return self._session.show_progress

    @show_progress.setter
    def show_progress(self, value: bool) -> None:
        self._session.show_progress = bool(value)

    def close(self) -> None:
        """Close the connection pool (also done by `with Driver(...) as driver:`)."""
        self._session.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Driver {self.address}>"

    # ---- phase 1: connect ----

    @property
    def collaborations(self) -> CollaborationTask:
        return CollaborationTask(self._session)

    @property
    def projects(self) -> ProjectTask:
        return ProjectTask(self._session)

    @property
    def experiments(self) -> ExperimentTask:
        return ExperimentTask(self._session)

    @property
    def runs(self) -> RunTask:
        return RunTask(self._session)

    @property
    def participants(self) -> ParticipantTask:
        return ParticipantTask(self._session)

    @property
    def registrations(self) -> RegistrationTask:
        return RegistrationTask(self._session)

    @property
    def tags(self) -> TagTask:
        return TagTask(self._session)

    # ---- phase 2: train ----

    @property
    def alignments(self) -> AlignmentTask:
        return AlignmentTask(self._session)

    @property
    def models(self) -> ModelTask:
        return ModelTask(self._session)

    @property
    def optimizations(self) -> OptimizationTask:
        return OptimizationTask(self._session)

    # ---- phase 3: evaluate ----

    @property
    def validations(self) -> ValidationTask:
        return ValidationTask(self._session)

    @property
    def predictions(self) -> PredictionTask:
        return PredictionTask(self._session)
