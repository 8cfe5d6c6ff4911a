"""What goes on the wire, and the pure rules around it (no broker needed, so unit-tested alone).

Every message is a JSON object, persistent, at most `MAX_MESSAGE_BYTES` and `MAX_DEPTH` levels
deep: jobs carry references (ids, URIs), never weights. A job is `{job_id, process, keys, grids,
parameters}`; a completed event is `{job_id, process, keys, status, outcome | error, attempt,
consumer}`, its `error` the public error object `{code, title, detail, correlation_id}`
(synergos_core.errors), never the text of an unexpected exception. Status `retrying` (with
`max_attempts` and `retry_in_s`) reports a failed attempt that will be retried.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import pika

from synergos_core.errors import ServiceError, public_error

from .errors import JobFailed, MQError, PoisonMessage, PublishError
from .topology import JOB_QUEUES

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_ID_LENGTH = 255  # AMQP message_id is a short string
ATTEMPTS_HEADER = "x-synergos-attempts"
REASON_HEADER = "x-synergos-reason"
ORIGIN_HEADER = "x-synergos-queue"
MAX_REASON_CHARS = 500
MAX_DEPTH = 64  # lists and objects; a real job nests about 8 deep
CONTENT_TYPE = "application/json"
# `retrying`: an attempt failed and the job waits for its next one (not final: the job stays open)
EVENT_STATUSES = ("completed", "failed", "retrying")


# --- encoding -------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """JSON bytes of `message`; `PublishError` if it is not JSON or over `MAX_MESSAGE_BYTES`."""
    try:
        body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PublishError(f"message is not plain JSON: {exc}") from exc
    check_size(body)
    return body


def check_size(body: bytes) -> None:
    if len(body) > MAX_MESSAGE_BYTES:
        raise PublishError(
            f"message is {len(body)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit: "
            "send references (ids, URIs), never weights or data"
        )


def properties(
    message_id: str | None, headers: Mapping[str, Any] | None = None, kind: str | None = None
) -> pika.BasicProperties:
    """Persistent JSON message properties; the message id is the job id (consumers dedupe on it)."""
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent.value,
        message_id=message_id,
        headers=dict(headers) if headers else None,
        timestamp=int(time.time()),
        type=kind,
        app_id="synergos",
    )


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not job_id.strip():
        raise ValueError("a job needs a non-empty string job_id")
    if len(job_id.encode("utf-8")) > MAX_ID_LENGTH:
        raise ValueError(f"job_id is longer than {MAX_ID_LENGTH} bytes")
    return job_id


# --- decoding -------------------------------------------------------------------------------


def parse_object(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`; `PoisonMessage` for anything else: not UTF-8 JSON, over
    `MAX_MESSAGE_BYTES`, nested deeper than `MAX_DEPTH` (`[[[[…` deep enough to exhaust the
    decoder's recursion is refused too, never raised as a RecursionError), not an object."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"body is {len(body)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        message = json.loads(body)
    except RecursionError as exc:
        raise PoisonMessage(f"body is JSON nested deeper than {MAX_DEPTH} levels") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonMessage(f"body is not JSON ({type(exc).__name__})") from exc
    if not isinstance(message, dict):
        raise PoisonMessage(f"body is JSON {type(message).__name__}, not an object")
    if depth_of(message) > MAX_DEPTH:
        raise PoisonMessage(f"body is JSON nested deeper than {MAX_DEPTH} levels")
    return message


def depth_of(value: Any) -> int:
    """How deeply `value` nests lists and objects (a scalar is 0), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_job(body: bytes) -> dict[str, Any]:
    """A job from a delivery body; `PoisonMessage` unless it has a job_id, a known process, and
    (where present) `keys` an object of strings, `grids` a list, `parameters` an object. What a
    job must hold beyond that is for its consumer to check (`JobConsumer(check=...)`)."""
    job = parse_object(body)
    try:
        check_job_id(job.get("job_id"))
    except ValueError as exc:
        raise PoisonMessage(str(exc)) from exc
    if job.get("process") not in JOB_QUEUES:
        raise PoisonMessage(f"process must be one of {', '.join(JOB_QUEUES)}")
    keys = job.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise PoisonMessage("keys must be an object of strings")
    if not isinstance(job.get("grids", []), list):
        raise PoisonMessage("grids must be a list")
    if not isinstance(job.get("parameters", {}), dict):
        raise PoisonMessage("parameters must be an object")
    return job


def parse_event(body: bytes) -> dict[str, Any]:
    """A completed event from a delivery body; `PoisonMessage` unless it has a job_id and status."""
    event = parse_object(body)
    try:
        check_job_id(event.get("job_id"))
    except ValueError as exc:
        raise PoisonMessage(str(exc)) from exc
    if event.get("status") not in EVENT_STATUSES:
        raise PoisonMessage(f"event status must be one of {', '.join(EVENT_STATUSES)}")
    return event


# --- attempts and dead-lettering ------------------------------------------------------------


def attempt_of(headers: Mapping[str, Any] | None) -> int:
    """Which delivery attempt this is (1 for a fresh message, or a malformed header)."""
    value = (headers or {}).get(ATTEMPTS_HEADER)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return max(1, int(value))  # type: ignore[arg-type]  # anything else raises below
    except (TypeError, ValueError):
        return 1


# what the broker adds when it dead-letters a message (a delay queue's expiry): its own to set
BROKER_HEADERS = frozenset(
    {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"}
    | {"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason"}
)


def retry_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers for republishing a failed message: the same, with the attempt counter incremented
    (and without the broker's dead-lettering history, which is the broker's to keep)."""
    out = {k: v for k, v in (headers or {}).items() if k not in BROKER_HEADERS}
    out[ATTEMPTS_HEADER] = attempt_of(headers) + 1
    return out


def reason_of(exc: BaseException) -> str:
    """`ClassName: message`, short enough for a header; never the message body."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def dead_letter_headers(
    headers: Mapping[str, Any] | None, exc: BaseException, attempt: int, queue: str
) -> dict[str, Any]:
    out = dict(headers or {})
    out[REASON_HEADER] = reason_of(exc)
    out[ATTEMPTS_HEADER] = attempt
    out[ORIGIN_HEADER] = queue
    return out


def gives_up(exc: BaseException, attempt: int, max_attempts: int) -> bool:
    """True when a failed attempt is final: a poison/permanent failure, or the last attempt."""
    return isinstance(exc, (PoisonMessage, JobFailed)) or attempt >= max_attempts


# --- completed events -----------------------------------------------------------------------


def completed_event(job: Mapping[str, Any], outcome: Any, *, attempt: int, consumer: str) -> dict[str, Any]:
    return {
        "job_id": job["job_id"],
        "process": job["process"],
        "keys": job.get("keys"),
        "status": "completed",
        "outcome": outcome,
        "attempt": attempt,
        "consumer": consumer,
    }


def failed_event(job: Mapping[str, Any], exc: BaseException, *, attempt: int, consumer: str) -> dict[str, Any]:
    """The completed event of a job that failed for good; its `error` is `public_error` of the failure."""
    return {
        "job_id": job["job_id"],
        "process": job["process"],
        "keys": job.get("keys"),
        "status": "failed",
        "error": public_error(failure_of(exc)),
        "attempt": attempt,
        "consumer": consumer,
    }


def retrying_event(
    job: Mapping[str, Any], exc: BaseException, *, attempt: int, max_attempts: int, delay_s: float, consumer: str
) -> dict[str, Any]:
    """What a consumer says when attempt `attempt` failed and the job is retried in `delay_s`:
    the public error of that attempt, and when the next one starts."""
    event = failed_event(job, exc, attempt=attempt, consumer=consumer)
    return {**event, "status": "retrying", "max_attempts": max_attempts, "retry_in_s": round(delay_s, 3)}


def failure_of(exc: BaseException) -> BaseException:
    """What a failed event reports: the handler's ServiceError when a `JobFailed` or `PoisonMessage`
    wraps one (`raise JobFailed(...) from exc`), else `exc` itself."""
    cause: BaseException | None = exc
    while isinstance(cause, MQError):
        cause = cause.__cause__
    return cause if isinstance(cause, ServiceError) else exc


class ProcessedJobs:
    """Bounded memory of finished job ids and their completed events (least recently used out).

    A redelivered job whose id is here is not run again: its event is re-published instead.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def remember(self, job_id: str, event: dict[str, Any]) -> None:
        self._events[job_id] = event
        self._events.move_to_end(job_id)
        while len(self._events) > self.capacity:
            self._events.popitem(last=False)

    def get(self, job_id: str) -> dict[str, Any] | None:
        event = self._events.get(job_id)
        if event is not None:
            self._events.move_to_end(job_id)
        return event

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._events

    def __len__(self) -> int:
        return len(self._events)
