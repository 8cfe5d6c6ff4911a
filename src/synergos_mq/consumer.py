"""Consume jobs (and completed events) at least once; see `loop.ConsumerLoop` for the loop itself.

JobConsumer        preprocess/train/evaluate -> handler(job) -> completed event -> ack
CompletedConsumer  completed -> handler(event) -> ack
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any

from synergos_core.errors import log_failure

from . import messages, topology
from .connection import BrokerAddress
from .errors import JobFailed, PoisonMessage, PublishError
from .loop import ConsumerLoop, _Delivery, _Run
from .retry import RetryPolicy

log = logging.getLogger(__name__)


class JobConsumer(ConsumerLoop):
    """Run jobs from the job queues with `handler(job) -> outcome` and publish each outcome.

    Per delivery: a job without `job_id`/`process`, not JSON, too deep, or refused by `check`
    (`check(job)` raises for a job that can never run: a wrong schema) is dead-lettered on its
    first delivery (a job refused by `check` is also reported failed); a job id seen before
    (bounded LRU) is not run again, its completed event is re-published; otherwise the handler
    runs on a worker thread, and the completed event
    `{job_id, process, keys, status, outcome | error, attempt, consumer}` is confirmed on
    `synergos.completed` before the delivery is acked. A failed job's `error` is the public error
    object (code, title, detail, correlation id); the failure itself is logged under that id. A
    handler that raises anything but `JobFailed`/`PoisonMessage` is retried as `retry` says (a
    `retrying` event tells the Director), then dead-lettered and reported failed.
    """

    _noun = "job"

    def __init__(
        self,
        address: BrokerAddress,
        handler: Callable[[dict], dict],
        queues: Iterable[str] = topology.JOB_QUEUES,
        *,
        name: str,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        check: Callable[[dict], None] | None = None,
        idle_log_s: float = 60.0,
        poll_s: float = 0.2,
        stop_grace_s: float = 30.0,
        remember: int = 10_000,
    ) -> None:
        queues = tuple(queues)
        if any(q not in topology.JOB_QUEUES for q in queues):
            raise ValueError(f"a JobConsumer consumes job queues only: {', '.join(topology.JOB_QUEUES)}")
        super().__init__(
            address,
            queues,
            name=name,
            max_attempts=max_attempts,
            idle_log_s=idle_log_s,
            poll_s=poll_s,
            stop_grace_s=stop_grace_s,
            retry=retry,
        )
        self.handler = handler
        self.check = check
        self.processed = messages.ProcessedJobs(remember)

    def _decode(self, body: bytes) -> dict[str, Any]:
        return messages.parse_job(body)

    def _check(self, payload: dict[str, Any]) -> None:
        if self.check is not None:
            self.check(copy.deepcopy(payload))

    def _refused(self, delivery: _Delivery, payload: dict[str, Any], exc: PoisonMessage) -> None:
        # the Director is waiting for this job: tell it, so it shows failed rather than queued
        log_failure(messages.failure_of(exc), log, f"{self.name}: job {self._describe(payload)} refused")
        event = messages.failed_event(payload, exc, attempt=delivery.attempt, consumer=self.name)
        self._publish_event(event)
        self.processed.remember(payload["job_id"], event)

    def _settle_without_running(self, delivery: _Delivery, payload: dict[str, Any]) -> bool:
        event = self.processed.get(payload["job_id"])
        if event is None:
            return False
        log.info("%s: job %s was already processed; re-publishing its completed event", self.name, payload["job_id"])
        self._publish_event(event)
        self._ack(delivery)
        return True

    def _call(self, payload: dict[str, Any]) -> Any:
        return self.handler(payload)

    def _finish(self, run: _Run) -> None:
        if run.error is None:
            try:
                messages.encode(
                    messages.completed_event(run.payload, run.result, attempt=run.delivery.attempt, consumer=self.name)
                )
            except PublishError as exc:
                # Deterministic: the same outcome would be refused again, so the job failed for good.
                run.error = JobFailed(f"the handler's outcome cannot be sent: {exc}")
        super()._finish(run)

    def _succeeded(self, run: _Run) -> None:
        event = messages.completed_event(run.payload, run.result, attempt=run.delivery.attempt, consumer=self.name)
        self._publish_event(event)
        self.processed.remember(run.payload["job_id"], event)

    def _gave_up(self, run: _Run, exc: BaseException) -> None:
        # the event carries the public error and its correlation id; the log, the failure itself
        log_failure(messages.failure_of(exc), log, f"{self.name}: job {self._describe(run.payload)}")
        event = messages.failed_event(run.payload, exc, attempt=run.delivery.attempt, consumer=self.name)
        self._publish_event(event)
        self.processed.remember(run.payload["job_id"], event)

    def _retrying(self, run: _Run, exc: BaseException, delay_s: float) -> None:
        log_failure(messages.failure_of(exc), log, f"{self.name}: job {self._describe(run.payload)} attempt failed")
        event = messages.retrying_event(
            run.payload,
            exc,
            attempt=run.delivery.attempt,
            max_attempts=self.max_attempts,
            delay_s=delay_s,
            consumer=self.name,
        )
        self._publish_event(event)

    def _publish_event(self, event: dict[str, Any]) -> None:
        props = messages.properties(event["job_id"], kind="synergos.completed")
        self._publish(topology.COMPLETED_EXCHANGE, "", messages.encode(event), props)


class CompletedConsumer(ConsumerLoop):
    """Hand each completed event to `handler(event)` (on a worker thread) and ack after it returns.

    Unparseable events are dead-lettered; a handler that raises is retried as `retry` says (after
    a delay, through the broker), then the event is dead-lettered. Handlers must be idempotent by
    `job_id`: delivery is at least once.
    """

    _noun = "event for job"

    def __init__(
        self,
        address: BrokerAddress,
        handler: Callable[[dict], None],
        *,
        name: str,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        idle_log_s: float = 60.0,
        poll_s: float = 0.2,
        stop_grace_s: float = 30.0,
    ) -> None:
        super().__init__(
            address,
            (topology.COMPLETED_QUEUE,),
            name=name,
            max_attempts=max_attempts,
            idle_log_s=idle_log_s,
            poll_s=poll_s,
            stop_grace_s=stop_grace_s,
            retry=retry,
        )
        self.handler = handler

    def _decode(self, body: bytes) -> dict[str, Any]:
        return messages.parse_event(body)

    def _call(self, payload: dict[str, Any]) -> Any:
        self.handler(payload)
