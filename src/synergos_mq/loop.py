"""The one consume loop behind `JobConsumer` and `CompletedConsumer`: at least once, without ever
blocking the pika I/O thread, reconnecting with backoff, stopping on a flag.

    connect -> declare topology -> prefetch 1 -> consume
      -> process_data_events(poll) ...          heartbeats keep flowing, even during a long job
      -> a delivery: decode and check it (anything that fails, a RecursionError included, is
         poison -> dead-letter + ack, on its first delivery), else pause consuming and run the
         handler on a worker thread; when it is done, publish the outcome with confirms, ack,
         and consume again
      -> a lost connection: drop stale delivery tags, back off 0.5 s -> 10 s, reconnect
      -> the stop flag: stop consuming, let a running job finish (up to `stop_grace_s`), close

Consuming is paused while a handler runs, so with per-consumer prefetch 1 at most one job is
held at a time however many queues are consumed (global QoS is deprecated in RabbitMQ 4).

A failed attempt is republished with `x-synergos-attempts` + 1 to the delay queue of its queue
(`RetryPolicy`: by default 5 s, 20 s, then 80 s later, through the broker, so the consumer keeps
serving and answering heartbeats meanwhile) and then acked, so a failing job never loops forever
nor blocks the queue; the last attempt, `PoisonMessage` and `JobFailed` go to `synergos.dead`
with `x-synergos-reason`.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pika

from . import messages, topology
from .connection import RECOVERABLE_ERRORS, BrokerAddress, close_quietly, connect
from .errors import MQError, PoisonMessage, PublishError, TopologyConflict
from .publisher import confirm_publish
from .retry import RetryPolicy

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 10.0


@dataclass
class _Delivery:
    generation: int  # which connection delivered it; a tag is meaningless on any other
    queue: str
    tag: int
    props: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.props.headers or {})

    @property
    def attempt(self) -> int:
        return messages.attempt_of(self.props.headers)


@dataclass
class _Run:
    """A handler call on a worker thread; the I/O thread settles it once `done` is set."""

    delivery: _Delivery
    payload: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def next_backoff(current: float, initial: float = RECONNECT_INITIAL_S, cap: float = RECONNECT_MAX_S) -> float:
    """The wait before the next reconnect: doubled, between `initial` and `cap`."""
    return min(cap, max(initial, current * 2))


class ConsumerLoop:
    """The one reconnect / backoff / stop loop; subclasses say how to decode and settle messages."""

    _noun = "message"  # what log lines call a delivery

    def __init__(
        self,
        address: BrokerAddress,
        queues: Iterable[str],
        *,
        name: str,
        max_attempts: int | None,
        idle_log_s: float,
        poll_s: float,
        stop_grace_s: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.address = address
        self.queues = tuple(queues)
        unknown = [q for q in self.queues if q not in topology.ALL_QUEUES]
        if not self.queues or unknown:
            raise ValueError(f"queues must be among {', '.join(topology.ALL_QUEUES)} (got {list(self.queues)})")
        retry = retry if retry is not None else RetryPolicy()
        if max_attempts is not None:  # attempts in all: overrides the policy's retries
            if max_attempts < 1:
                raise ValueError("max_attempts must be at least 1")
            retry = retry.model_copy(update={"retries": max_attempts - 1})
        self.retry = retry
        self.name = name
        self.max_attempts = retry.max_attempts
        self.idle_log_s = idle_log_s
        self.poll_s = poll_s
        self.stop_grace_s = stop_grace_s
        self.ready = threading.Event()  # set while connected to the broker
        self.reconnects = 0
        self._stop = threading.Event()
        self._external_stop: threading.Event | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._publish_channel: Any = None
        self._generation = 0
        self._consumer_tags: dict[str, str] = {}
        self._pending: collections.deque[_Delivery] = collections.deque()
        self._running: _Run | None = None
        self._last_activity = time.monotonic()

    # --- public API -----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Consume until `stop` (or `self.stop()`) is set; blocks. Reconnects on its own with
        backoff; returns only when stopped, raises only `TopologyConflict` (needs an operator)."""
        self._external_stop = stop
        backoff = RECONNECT_INITIAL_S
        log.info(
            "%s: consuming %s from %s (failed attempts: %s)",
            self.name,
            ", ".join(self.queues),
            self.address,
            self.retry.describe(),
        )
        try:
            while not self._stopping():
                try:
                    self._connect()
                    backoff = RECONNECT_INITIAL_S
                    self._serve()
                except TopologyConflict:
                    raise
                except RECOVERABLE_ERRORS + (MQError,) as exc:
                    log.warning(
                        "%s: connection to %s lost (%s: %s); reconnecting in %.1f s",
                        self.name,
                        self.address,
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                except Exception:
                    log.exception("%s: unexpected error; reconnecting in %.1f s", self.name, backoff)
                finally:
                    self._disconnect()
                if self._stopping():
                    break
                self._sleep(backoff)
                backoff = next_backoff(backoff)
                self.reconnects += 1
        finally:
            self._disconnect()
            log.info("%s: stopped", self.name)

    def stop(self) -> None:
        """Ask `run` to return: consuming stops now, a running job may finish (`stop_grace_s`)."""
        self._stop.set()

    # --- hooks for subclasses -------------------------------------------------------------

    def _decode(self, body: bytes) -> dict[str, Any]:
        raise NotImplementedError

    def _check(self, payload: dict[str, Any]) -> None:
        """Raise (`PoisonMessage`, ideally) if a decoded message can never be handled."""

    def _refused(self, delivery: _Delivery, payload: dict[str, Any], exc: PoisonMessage) -> None:
        """Report a message that decoded but failed `_check` (I/O thread), before it is dead-lettered."""

    def _describe(self, payload: dict[str, Any]) -> str:
        """An id for log lines; never the body."""
        return str(payload.get("job_id"))

    def _settle_without_running(self, delivery: _Delivery, payload: dict[str, Any]) -> bool:
        """Settle a delivery that needs no handler call (a duplicate); True if it did."""
        return False

    def _call(self, payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _succeeded(self, run: _Run) -> None:
        """Publish what a successful run produced (I/O thread); the loop acks afterwards."""

    def _gave_up(self, run: _Run, exc: BaseException) -> None:
        """Report a run that failed for good (I/O thread), after it was dead-lettered."""

    def _retrying(self, run: _Run, exc: BaseException, delay_s: float) -> None:
        """Report a failed attempt that will be retried in `delay_s` (I/O thread)."""

    # --- the loop -------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._external_stop is not None and self._external_stop.is_set())

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            self._stop.wait(min(0.1, left))

    def _connect(self) -> None:
        connection = connect(self.address, self.name)
        try:
            channel = connection.channel()
            topology.declare(channel)
            channel.basic_qos(prefetch_count=1)
            publish_channel = connection.channel()
            publish_channel.confirm_delivery()
        except BaseException:
            close_quietly(connection)
            raise
        self._generation += 1
        self._connection, self._channel, self._publish_channel = connection, channel, publish_channel
        self._consumer_tags = {}
        self._pending.clear()
        if self._running is None:
            self._consume()
        self.ready.set()
        log.info(
            "%s: connected to %s%s",
            self.name,
            self.address,
            f" (reconnect {self.reconnects})" if self.reconnects else "",
        )

    def _disconnect(self) -> None:
        self.ready.clear()
        # Unacked deliveries go back to their queues when the connection closes; their tags
        # would be refused (PRECONDITION_FAILED) on any other connection, so forget them.
        self._pending.clear()
        self._consumer_tags = {}
        connection, self._connection = self._connection, None
        self._channel = self._publish_channel = None
        close_quietly(connection)

    def _consume(self) -> None:
        for queue in self.queues:
            tag = self._channel.basic_consume(
                queue=queue,
                auto_ack=False,
                on_message_callback=lambda ch, method, props, body, queue=queue: self._on_message(
                    queue, method, props, body
                ),
            )
            self._consumer_tags[tag] = queue

    def _pause(self) -> None:
        # pika rejects (requeue) anything delivered but not yet dispatched to us.
        for tag in list(self._consumer_tags):
            self._channel.basic_cancel(tag)
        self._consumer_tags = {}

    def _on_message(self, queue: str, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        # Runs inside pika's dispatch: only record it; the loop handles it outside the callback.
        self._pending.append(_Delivery(self._generation, queue, method.delivery_tag, props, body))

    def _serve(self) -> None:
        grace_deadline: float | None = None
        while True:
            if self._stopping():
                if grace_deadline is None:
                    grace_deadline = time.monotonic() + self.stop_grace_s
                    self._pause()
                    self._release_pending()
                    if self._running is not None:
                        log.info(
                            "%s: stopping; waiting up to %.0f s for %s %s",
                            self.name,
                            self.stop_grace_s,
                            self._noun,
                            self._describe(self._running.payload),
                        )
                if self._running is None:
                    return
                if time.monotonic() >= grace_deadline:
                    log.warning(
                        "%s: %s %s still running at stop; it returns to its queue",
                        self.name,
                        self._noun,
                        self._describe(self._running.payload),
                    )
                    return
            self._connection.process_data_events(time_limit=self.poll_s)  # type: ignore[union-attr]  # connected above
            self._step()
            self._log_if_idle()

    def _step(self) -> None:
        run = self._running
        if run is not None and run.done.is_set():
            self._finish(run)
            self._running = None
            self._last_activity = time.monotonic()
            if not self._stopping():
                self._consume()
        while self._pending:
            delivery = self._pending.popleft()
            self._last_activity = time.monotonic()
            try:
                payload = self._decode(delivery.body)
            except Exception as exc:  # noqa: BLE001 - whatever a body does to a decoder, it is that body's fault
                self._poison(delivery, as_poison(exc))
                continue
            try:
                self._check(payload)
            except Exception as exc:  # noqa: BLE001 - a message that cannot be handled, however it fails
                poison = as_poison(exc)
                try:
                    self._refused(delivery, payload, poison)
                except PublishError as err:
                    log.error("%s: could not report refused message %s: %s", self.name, self._describe(payload), err)
                self._poison(delivery, poison, self._describe(payload))
                continue
            if self._settle_without_running(delivery, payload):
                continue
            if self._running is not None or self._stopping():
                self._reject(delivery)  # a second queue delivered in the same instant; let it go back
                continue
            self._pause()
            self._start(delivery, payload)

    def _poison(self, delivery: _Delivery, exc: PoisonMessage, described: str | None = None) -> None:
        log.warning(
            "%s: message %s on %s is poison (%s); dead-lettering it",
            self.name,
            described or delivery.props.message_id or "<no id>",
            delivery.queue,
            exc,
        )
        self._dead_letter_and_ack(delivery, exc)

    def _start(self, delivery: _Delivery, payload: dict[str, Any]) -> None:
        run = _Run(delivery, payload)
        self._running = run
        log.info(
            "%s: %s %s from %s started (attempt %d)",
            self.name,
            self._noun,
            self._describe(payload),
            delivery.queue,
            delivery.attempt,
        )

        def work() -> None:
            try:
                # A copy: whatever the handler does to its job, the loop still knows the job's id.
                run.result = self._call(copy.deepcopy(payload))
            except BaseException as exc:  # noqa: BLE001 - every outcome is reported, none kills the loop
                run.error = exc
            finally:
                run.done.set()
                self._wake()

        threading.Thread(target=work, name=f"{self.name}-job", daemon=True).start()

    def _wake(self) -> None:
        # The only thread-safe pika call: it makes process_data_events return at once.
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)
            except Exception:  # noqa: BLE001 - closed meanwhile; the loop polls anyway
                pass

    def _finish(self, run: _Run) -> None:
        elapsed = time.monotonic() - run.started
        job = self._describe(run.payload)
        if run.error is None:
            self._succeeded(run)
            log.info("%s: %s %s done in %.1f s", self.name, self._noun, job, elapsed)
            self._ack(run.delivery)
            return
        exc, attempt = run.error, run.delivery.attempt
        if messages.gives_up(exc, attempt, self.max_attempts):
            log.warning(
                "%s: %s %s failed for good on attempt %d after %.1f s (%s); dead-lettering it",
                self.name,
                self._noun,
                job,
                attempt,
                elapsed,
                messages.reason_of(exc) if isinstance(exc, MQError) else type(exc).__name__,  # ours: no secrets
            )
            self._gave_up(run, exc)
            self._dead_letter_and_ack(run.delivery, exc)
        elif self._is_current(run.delivery):
            delay = self.retry.delay_s(attempt)
            log.warning(
                "%s: %s %s failed on attempt %d of %d (%s: %s); retrying in %g s",
                self.name,
                self._noun,
                job,
                attempt,
                self.max_attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            props = messages.properties(
                run.delivery.props.message_id, messages.retry_headers(run.delivery.headers), run.delivery.props.type
            )
            # declared on every retry: that also keeps an idle delay queue from expiring under it
            waiting = topology.declare_delay(self._publish_channel, run.delivery.queue, delay)
            confirm_publish(self._publish_channel, "", waiting, run.delivery.body, props)
            try:
                self._retrying(run, exc, delay)
            except PublishError as err:  # only news: the retry itself is queued
                log.warning("%s: could not report the retry of %s %s: %s", self.name, self._noun, job, err)
            self._ack(run.delivery)
        else:
            # The broker already requeued this delivery when the connection dropped: retrying
            # it is taken care of, and republishing too would run the job twice.
            log.warning(
                "%s: %s %s failed on attempt %d (%s); its delivery returned to the queue",
                self.name,
                self._noun,
                job,
                attempt,
                type(exc).__name__,
            )

    # --- settling deliveries (I/O thread only) --------------------------------------------

    def _is_current(self, delivery: _Delivery) -> bool:
        return delivery.generation == self._generation and self._channel is not None and self._channel.is_open

    def _ack(self, delivery: _Delivery) -> None:
        if self._is_current(delivery):
            self._channel.basic_ack(delivery.tag)

    def _reject(self, delivery: _Delivery) -> None:
        if self._is_current(delivery):
            self._channel.basic_reject(delivery.tag, requeue=True)

    def _publish(self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        confirm_publish(self._publish_channel, exchange, routing_key, body, props)

    def _dead_letter_and_ack(self, delivery: _Delivery, exc: BaseException) -> None:
        headers = messages.dead_letter_headers(delivery.headers, exc, delivery.attempt, delivery.queue)
        props = pika.BasicProperties(
            content_type=delivery.props.content_type,
            message_id=delivery.props.message_id,
            type=delivery.props.type,
            headers=headers,
            delivery_mode=pika.DeliveryMode.Persistent.value,
            timestamp=int(time.time()),
        )
        try:
            self._publish(topology.DEAD_LETTER_EXCHANGE, delivery.queue, delivery.body, props)
        except PublishError as err:
            # Never requeue poison: let the broker dead-letter it (job queues have a DLX) instead.
            log.error(
                "%s: could not dead-letter message %s (%s); rejecting it without requeue",
                self.name,
                delivery.props.message_id,
                err,
            )
            if self._is_current(delivery):
                self._channel.basic_reject(delivery.tag, requeue=False)
            return
        self._ack(delivery)

    def _release_pending(self) -> None:
        while self._pending:
            self._reject(self._pending.popleft())

    def _log_if_idle(self) -> None:
        if self._running is None and time.monotonic() - self._last_activity >= self.idle_log_s:
            log.info("%s: idle, waiting for messages on %s", self.name, ", ".join(self.queues))
            self._last_activity = time.monotonic()


def as_poison(exc: BaseException) -> PoisonMessage:
    """`exc` as the reason a message is dead-lettered: itself if poison already, else a
    PoisonMessage naming what went wrong (a RecursionError: nested too deeply)."""
    if isinstance(exc, PoisonMessage):
        return exc
    if isinstance(exc, RecursionError):
        return PoisonMessage("nested too deeply to decode")
    text = str(exc).strip()
    poison = PoisonMessage(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    poison.__cause__ = exc
    return poison
