"""Every error code in one catalogue, the error tree shared by every service, and what a
transport may send of a failure.

    ErrorCode                the catalogue: each member is a stable dotted code (a `str`) with
                             its HTTP `.status` and public `.public_title`
    ServiceError             code, status, title, detail (public text only)
    ├── InvalidRequest       422  request.invalid / <thing>.invalid
    ├── NotFound             404  <thing>.not_found
    ├── Conflict             409  <thing>.exists / <thing>.conflict
    ├── Forbidden            403  <thing>.forbidden
    └── UpstreamError        502  worker.unreachable / worker.failed
        └── FederationError  502  federation.*
            └── RefusedUpdate     one party's reply refused, the channel still in step
                └── PartyDropped  one party gone from a round (channel closed, deadline passed)

An error's status is its class's; the catalogue's status for a code agrees with the class it is
raised with (tests/unit/test_error_catalogue.py checks every raise site). The base class, which
has no status of its own, takes the code's. A code relayed from elsewhere (a Worker's code inside
the TTP's `UpstreamError`) keeps the class's status on purpose: a Worker's 422 is the TTP's 502.

Internals are logged, never sent: `report(exc, log, context)` gives the public error object
`{code, title, detail, correlation_id}` of any exception and logs it under that id; an unexpected
exception becomes `internal.error`, its text and traceback only in the log. Every transport (the
REST translator, the job board, the MQ's failed events, the Worker's federation channel) sends
that object and nothing else of a failure.

`SynergosError` is the old name of `ServiceError`, kept while in-flight code moves over; the
Driver's `synergos.SynergosError` is a different class (the SDK's public error tree).
"""

from __future__ import annotations

import logging
import os
import uuid
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

STRICT_ENV = "SYNERGOS_STRICT_ERROR_CODES"
INTERNAL_DETAIL = "the service failed unexpectedly; its log holds the details under correlation id {cid}"


class ErrorCode(StrEnum):
    """Every code a Synergos service raises or sends, and those the Driver reports itself.

    Members compare equal to their strings (`ErrorCode.RUN_NOT_FOUND == "run.not_found"`); each
    carries the HTTP `status` it is answered with and a public `public_title`.
    """

    status: int
    public_title: str

    def __new__(cls, value: str, status: int, public_title: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.public_title = public_title
        return member

    # --- the request itself (REST edge) --------------------------------------------------
    REQUEST_ERROR = "request.error", 400, "Bad request"
    REQUEST_INVALID = "request.invalid", 422, "Invalid request"
    REQUEST_FORBIDDEN = "request.forbidden", 403, "Forbidden"
    AUTH_REQUIRED = "auth.required", 401, "Authentication required"
    AUTH_FORBIDDEN = "auth.forbidden", 403, "Not permitted for this identity"
    AUTH_WRONG_COLLABORATION = "auth.wrong_collaboration", 403, "Not served for this collaboration"
    CREDENTIALS_INVALID = "credentials.invalid", 400, "Invalid credentials"
    REQUEST_TOO_LARGE = "request.too_large", 413, "Request too large"
    ROUTE_NOT_FOUND = "route.not_found", 404, "No such route"
    METHOD_NOT_ALLOWED = "method.not_allowed", 405, "Method not allowed"
    RESOURCE_NOT_FOUND = "resource.not_found", 404, "Not found"
    RESOURCE_EXISTS = "resource.exists", 409, "Already exists"
    RESOURCE_CONFLICT = "resource.conflict", 409, "Conflict"
    INTERNAL_ERROR = "internal.error", 500, "Internal error"

    # --- records (the metadata store: `<kind>.not_found|exists|conflict`) ----------------
    COLLABORATION_NOT_FOUND = "collaboration.not_found", 404, "Collaboration not found"
    COLLABORATION_EXISTS = "collaboration.exists", 409, "Collaboration already exists"
    COLLABORATION_CONFLICT = "collaboration.conflict", 409, "Collaboration changed concurrently"
    PROJECT_NOT_FOUND = "project.not_found", 404, "Project not found"
    PROJECT_EXISTS = "project.exists", 409, "Project already exists"
    PROJECT_CONFLICT = "project.conflict", 409, "Project changed concurrently"
    PROJECT_NO_PARTICIPANTS = "project.no_participants", 422, "Project has no participants"
    EXPERIMENT_NOT_FOUND = "experiment.not_found", 404, "Experiment not found"
    EXPERIMENT_EXISTS = "experiment.exists", 409, "Experiment already exists"
    EXPERIMENT_CONFLICT = "experiment.conflict", 409, "Experiment changed concurrently"
    RUN_NOT_FOUND = "run.not_found", 404, "Run not found"
    RUN_EXISTS = "run.exists", 409, "Run already exists"
    RUN_CONFLICT = "run.conflict", 409, "Run changed concurrently"
    PARTICIPANT_NOT_FOUND = "participant.not_found", 404, "Participant not found"
    PARTICIPANT_EXISTS = "participant.exists", 409, "Participant already exists"
    PARTICIPANT_CONFLICT = "participant.conflict", 409, "Participant changed concurrently"
    REGISTRATION_NOT_FOUND = "registration.not_found", 404, "Registration not found"
    REGISTRATION_EXISTS = "registration.exists", 409, "Registration already exists"
    REGISTRATION_CONFLICT = "registration.conflict", 409, "Registration changed concurrently"
    TAG_NOT_FOUND = "tag.not_found", 404, "Tag not found"
    TAG_EXISTS = "tag.exists", 409, "Tags already exist"
    TAG_CONFLICT = "tag.conflict", 409, "Tags changed concurrently"
    TAG_INVALID = "tag.invalid", 422, "Invalid tag"
    ALIGNMENT_NOT_FOUND = "alignment.not_found", 404, "Alignment not found"
    ALIGNMENT_EXISTS = "alignment.exists", 409, "Alignment already exists"
    ALIGNMENT_CONFLICT = "alignment.conflict", 409, "Alignment changed concurrently"
    MODEL_NOT_FOUND = "model.not_found", 404, "Model not found"
    MODEL_EXISTS = "model.exists", 409, "Model already exists"
    MODEL_CONFLICT = "model.conflict", 409, "Model changed concurrently"
    VALIDATION_NOT_FOUND = "validation.not_found", 404, "Validation not found"
    VALIDATION_EXISTS = "validation.exists", 409, "Validation already exists"
    VALIDATION_CONFLICT = "validation.conflict", 409, "Validation changed concurrently"
    PREDICTION_NOT_FOUND = "prediction.not_found", 404, "Prediction not found"
    PREDICTION_EXISTS = "prediction.exists", 409, "Prediction already exists"
    PREDICTION_CONFLICT = "prediction.conflict", 409, "Prediction changed concurrently"
    CHAMPION_NOT_FOUND = "champion.not_found", 404, "No champion yet"
    OPTIMIZATION_NOT_FOUND = "optimization.not_found", 404, "Optimization not found"  # older servers
    SESSION_NOT_FOUND = "session.not_found", 404, "Federation session not found"
    SESSION_BUSY = "session.busy", 409, "Run already served by a live session"

    # --- data, alignment, prediction -----------------------------------------------------
    DATASET_INVALID = "dataset.invalid", 422, "Invalid dataset"
    DATASET_EMPTY = "dataset.empty", 422, "No data selected"
    DATASET_MIXED = "dataset.mixed", 422, "Datasets of mixed types"
    DATASET_UNSUPPORTED = "dataset.unsupported", 422, "Unsupported datatype"
    ALIGNMENT_INVALID = "alignment.invalid", 422, "Invalid alignment"
    ALIGNMENT_IMAGE_MISMATCH = "alignment.image_mismatch", 422, "Images do not align"
    ALIGNMENT_NO_DATA = "alignment.no_data", 422, "Nothing to align"
    METRICS_INVALID = "metrics.invalid", 422, "Invalid metric inputs"
    PREDICTION_FEATURE_DRIFT = "prediction.feature_drift", 422, "Prediction data has unknown features"
    PREDICTION_NO_DATA = "prediction.no_data", 422, "No prediction data"
    PREDICTION_NO_PROJECT = "prediction.no_project", 422, "No project to predict for"

    # --- models and runs -----------------------------------------------------------------
    MODEL_INVALID = "model.invalid", 422, "Invalid model"
    MODEL_EMPTY = "model.empty", 422, "Model has no layers"
    MODEL_TOO_LARGE = "model.too_large", 422, "Model too large"
    MODEL_UNKNOWN_LAYER = "model.unknown_layer", 422, "Unknown layer type"
    MODEL_UNKNOWN_ACTIVATION = "model.unknown_activation", 422, "Unknown activation"
    MODEL_INVALID_STRUCTURE = "model.invalid_structure", 422, "Invalid layer structure"
    MODEL_NOT_TRAINED = "model.not_trained", 422, "Model not trained yet"
    MODEL_UNSAFE_FORMAT = "model.unsafe_format", 422, "Model file is not valid safetensors"
    RUN_INVALID = "run.invalid", 422, "Invalid run"
    RUN_INVALID_COMBINATION = "run.invalid_combination", 422, "Run and model do not fit together"
    RUN_INVALID_CRITERION = "run.invalid_criterion", 422, "Invalid criterion"
    RUN_INVALID_OPTIMIZER = "run.invalid_optimizer", 422, "Invalid optimizer"
    RUN_INVALID_SCHEDULER = "run.invalid_scheduler", 422, "Invalid learning-rate scheduler"
    RUN_UNKNOWN_CRITERION = "run.unknown_criterion", 422, "Unknown criterion"
    RUN_UNKNOWN_OPTIMIZER = "run.unknown_optimizer", 422, "Unknown optimizer"
    RUN_UNKNOWN_SCHEDULER = "run.unknown_scheduler", 422, "Unknown learning-rate scheduler"
    RUN_UNKNOWN_PARAMETER = "run.unknown_parameter", 422, "Unknown run parameter"
    RUN_UNSUPPORTED_CRITERION = "run.unsupported_criterion", 422, "Criterion not supported"
    OPTIMIZATION_INVALID = "optimization.invalid", 422, "Invalid optimization"
    OPTIMIZATION_CLUSTER_ONLY = "optimization.cluster_only", 403, "Optimizations run on a cluster"

    # --- the cluster ---------------------------------------------------------------------
    MQ_NOT_CONFIGURED = "mq.not_configured", 422, "No message queue configured"
    MQ_UNAVAILABLE = "mq.unavailable", 502, "Message queue unavailable"

    # --- participants' nodes and federation ----------------------------------------------
    WORKER_FAILED = "worker.failed", 502, "A participant's node failed"
    WORKER_UNREACHABLE = "worker.unreachable", 502, "A participant's node is unreachable"
    WORKER_DISCONNECTED = "worker.disconnected", 502, "A participant's node disconnected"
    WORKER_BAD_STATISTICS = "worker.bad_statistics", 502, "A participant's node sent invalid statistics"
    WORKER_NO_TRAIN_DATA = "worker.no_train_data", 422, "A participant's node has no training data"
    FEDERATION_FAILED = "federation.failed", 502, "Federation failed"
    FEDERATION_BAD_UPDATE = "federation.bad_update", 502, "Invalid model update"
    FEDERATION_BAD_COUNT = "federation.bad_count", 502, "A participant reported a sample count it did not declare"
    FEDERATION_NON_FINITE = "federation.non_finite", 502, "A participant sent non-finite numbers"
    FEDERATION_TOO_FEW_UPDATES = "federation.too_few_updates", 502, "Too few valid updates to aggregate"
    FEDERATION_NO_QUORUM = "federation.no_quorum", 502, "Too few parties answered the round"
    FEDERATION_NO_SAMPLES = "federation.no_samples", 502, "No samples to aggregate"
    FEDERATION_PROTOCOL = "federation.protocol", 502, "Federation protocol violated"
    FEDERATION_PROTOCOL_MISMATCH = "federation.protocol_mismatch", 502, "Federation protocol versions differ"
    FEDERATION_REFUSED = "federation.refused", 502, "Federation channel refused"
    FEDERATION_REPLAY = "federation.replay", 502, "Replayed or unexpected federation message"
    FEDERATION_TIMEOUT = "federation.timeout", 502, "Federation timed out"
    FEDERATION_TOO_LARGE = "federation.too_large", 502, "Federation message too large"
    FEDERATION_WRONG_RUN = "federation.wrong_run", 502, "Federation message for another run"

    # --- reported by the Driver itself (no service sends these) --------------------------
    SYNERGOS_ERROR = "synergos.error", 500, "Synergos error"
    CONNECTION_FAILED = "connection.failed", 503, "Connection failed"
    CONNECTION_UNRESPONSIVE = "connection.unresponsive", 504, "Server unresponsive"
    RESPONSE_INVALID = "response.invalid", 502, "Invalid response"
    SERVER_ERROR = "server.error", 500, "Server error"
    JOB_FAILED = "job.failed", 500, "Job failed"
    WAIT_TIMEOUT = "wait.timeout", 504, "Timed out waiting"


def lookup(code: str) -> ErrorCode:
    """The catalogue entry of `code`; `ValueError` if the catalogue does not know it."""
    try:
        return ErrorCode(code)  # type: ignore[call-arg]  # a lookup by value, not a new member
    except ValueError:
        raise ValueError(f"error code {code!r} is not in the catalogue (synergos_core.errors.ErrorCode)") from None


def strict_codes() -> bool:
    """True when an uncatalogued code must raise at construction (tests); else it is logged."""
    return os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes")


class ServiceError(Exception):
    """A failure whose `detail` is public: safe to send to any client as it is."""

    status: int = 400
    code: ErrorCode = ErrorCode.REQUEST_ERROR
    title: str = ErrorCode.REQUEST_ERROR.public_title

    def __init__(self, detail: str, code: str | None = None, *, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields
        if code is not None:
            try:
                entry = lookup(code)
            except ValueError:
                if strict_codes():
                    raise
                # a failure path must never crash a service: fall back to the class's code
                log.warning("error code %r is not in the catalogue; sending %s instead", code, self.code)
            else:
                self.code = entry
                self.title = entry.public_title
                if type(self) is ServiceError:  # the base class has no status of its own
                    self.status = entry.status

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "title": self.title, "detail": self.detail}
        if self.fields:
            body["fields"] = self.fields
        return body


SynergosError = ServiceError  # deprecated: the old name; use ServiceError (the Driver has its own)


class InvalidRequest(ServiceError):
    status = 422
    code = ErrorCode.REQUEST_INVALID
    title = ErrorCode.REQUEST_INVALID.public_title


class NotFound(ServiceError):
    status = 404
    code = ErrorCode.RESOURCE_NOT_FOUND
    title = ErrorCode.RESOURCE_NOT_FOUND.public_title


class Conflict(ServiceError):
    status = 409
    code = ErrorCode.RESOURCE_EXISTS
    title = ErrorCode.RESOURCE_EXISTS.public_title


class Forbidden(ServiceError):
    status = 403
    code = ErrorCode.REQUEST_FORBIDDEN
    title = ErrorCode.REQUEST_FORBIDDEN.public_title


class UpstreamError(ServiceError):
    status = 502
    code = ErrorCode.WORKER_FAILED
    title = ErrorCode.WORKER_FAILED.public_title


class FederationError(UpstreamError):
    code = ErrorCode.FEDERATION_FAILED
    title = ErrorCode.FEDERATION_FAILED.public_title


class RefusedUpdate(FederationError):
    """A party's reply refused for what it holds (a count it did not declare, a non-finite number,
    a replayed nonce) while the channel stays in step: the TTP can leave the party out of the
    round instead of failing the run. `participant` names the party; `pending` is how many
    tensor frames the refused reply still announces (to be read and dropped), None if unknown."""

    def __init__(self, detail: str, code: str | None = None, *, participant: str = "", pending: int | None = 0) -> None:
        super().__init__(detail, code)
        self.participant = participant
        self.pending = pending


class PartyDropped(RefusedUpdate):
    """A party gone from a round: its channel closed (a killed process, a cut link), its keepalive
    failed (a frozen process) or it sent no reply by the round's deadline. Its channel is closed
    and nothing more is read from it; the run goes on without it while the run's quorum
    (`min_workers`) holds, and the TTP tries to re-admit it at the next rounds."""

    def __init__(self, detail: str, code: str | None = None, *, participant: str = "") -> None:
        super().__init__(detail, code, participant=participant, pending=0)


# --- what a transport may send of a failure ---------------------------------------------

_CID = "_synergos_correlation_id"
_LOGGED = "_synergos_logged"


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def correlation_id(exc: BaseException) -> str:
    """The id `exc` is known by in logs and responses; the same id however often it is asked for,
    so a failure reported by the job board and then by the REST translator has one id."""
    cid = getattr(exc, _CID, None)
    if isinstance(cid, str):
        return cid
    cid = new_correlation_id()
    try:
        setattr(exc, _CID, cid)
    except (AttributeError, TypeError):  # an exception type that refuses attributes
        pass
    return cid


def public_error(exc: BaseException) -> dict[str, Any]:
    """`{code, title, detail, correlation_id[, fields]}` of `exc`: a ServiceError's public text,
    for anything else `internal.error` and a detail that says nothing about the code."""
    cid = correlation_id(exc)
    if isinstance(exc, ServiceError):
        return {**exc.public(), "correlation_id": cid}
    code = ErrorCode.INTERNAL_ERROR
    return {
        "code": str(code),
        "title": code.public_title,
        "detail": INTERNAL_DETAIL.format(cid=cid),
        "correlation_id": cid,
    }


def log_failure(exc: BaseException, logger: logging.Logger, context: str) -> None:
    """Log `exc` under its correlation id: an unexpected exception with its traceback, a 5xx
    ServiceError with its detail, a 4xx one at debug level (the client was told already). An
    exception reported twice (by the job board, then by the REST translator) is logged in full
    once; the second line only names its id."""
    cid = correlation_id(exc)
    if isinstance(exc, ServiceError) and exc.status < 500:
        logger.debug("%s: %s [%s]", context, exc.code, cid)
        return
    if getattr(exc, _LOGGED, False):
        if isinstance(exc, ServiceError):
            logger.warning("%s: %s [%s] (logged above)", context, exc.code, cid)
        else:
            logger.error("%s: unexpected error [%s] (logged above)", context, cid)
        return
    if isinstance(exc, ServiceError):
        logger.warning("%s: %s: %s [%s]", context, exc.code, exc.detail, cid)
    else:
        logger.error("%s: unexpected error [%s]", context, cid, exc_info=(type(exc), exc, exc.__traceback__))
    try:
        setattr(exc, _LOGGED, True)
    except (AttributeError, TypeError):
        pass


def report(exc: BaseException, logger: logging.Logger, context: str) -> dict[str, Any]:
    """Log `exc` under its correlation id (`log_failure`) and return what may be sent of it
    (`public_error`): the one path from an exception to a client."""
    log_failure(exc, logger, context)
    return public_error(exc)
