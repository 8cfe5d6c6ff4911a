"""Publish jobs and completed events with confirms: a publish returns only once the broker has
the message on disk (persistent, durable queue), or raises.

    publish_job / publish_completed / publish
      -> PublishError        nacked, unroutable (mandatory), too large, or not JSON
      -> BrokerUnavailable   the connection was lost and one reconnect + retry failed too
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import pika
import pika.exceptions

from . import messages, topology
from .connection import RECOVERABLE_ERRORS, BrokerAddress, close_quietly, connect
from .errors import BrokerUnavailable, PublishError

log = logging.getLogger(__name__)


def confirm_publish(channel: Any, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
    """Publish on a channel in confirm mode with `mandatory=True`; `PublishError` unless the broker
    routed the message to a queue and acked it. Connection and channel errors propagate as pika's."""
    try:
        channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props, mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        raise PublishError(
            f"unroutable: no queue is bound to exchange {exchange!r} for routing key {routing_key!r}"
        ) from exc
    except pika.exceptions.NackError as exc:
        raise PublishError(f"the broker nacked the message for {exchange!r}/{routing_key!r}") from exc


class Publisher:
    """A thread-safe publisher: one connection and one confirm-mode channel, used under a lock.

    The topology is declared on every connect. A lost connection is retried once with the same
    message id (consumers dedupe by job id). While idle, a keep-alive thread answers heartbeats
    so the broker does not drop the connection between publishes.
    """

    def __init__(self, address: BrokerAddress, *, name: str = "synergos-publisher") -> None:
        self.address = address
        self.name = name
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._closed = threading.Event()
        self._keepalive: threading.Thread | None = None

    # --- public API -----------------------------------------------------------------------

    def publish_job(self, process: str, job: Mapping[str, Any]) -> str:
        """Queue `job` for `process` (one of `JOB_QUEUES`); returns its job id (the message id).

        `job` must hold a string `job_id`; its `process`, if present, must equal `process`.
        Raises `ValueError` for a bad job, `PublishError` or `BrokerUnavailable` as above.
        """
        if process not in topology.JOB_QUEUES:
            raise ValueError(f"process must be one of {', '.join(topology.JOB_QUEUES)} (got {process!r})")
        if not isinstance(job, Mapping):
            raise ValueError("a job must be a JSON object")
        job_id = messages.check_job_id(job.get("job_id"))
        if job.get("process", process) != process:
            raise ValueError(f"job process {job.get('process')!r} does not match {process!r}")
        self.publish(
            topology.JOBS_EXCHANGE, process, {**job, "process": process}, message_id=job_id, kind="synergos.job"
        )
        return job_id

    def publish_completed(self, event: Mapping[str, Any]) -> None:
        """Broadcast a completed event (it needs a `job_id`) on `synergos.completed`."""
        if not isinstance(event, Mapping):
            raise ValueError("an event must be a JSON object")
        job_id = messages.check_job_id(event.get("job_id"))
        self.publish(topology.COMPLETED_EXCHANGE, "", event, message_id=job_id, kind="synergos.completed")

    def publish(
        self,
        exchange: str,
        routing_key: str,
        message: Mapping[str, Any],
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
        kind: str | None = None,
    ) -> None:
        """Publish one JSON message, persistent and confirmed, to any exchange and routing key."""
        body = messages.encode(message)
        props = messages.properties(message_id, headers, kind)
        self._publish(exchange, routing_key, body, props)

    def close(self) -> None:
        """Close the connection; later publishes raise `BrokerUnavailable`."""
        self._closed.set()
        with self._lock:
            self._drop()
        if self._keepalive is not None and self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _publish(self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        with self._lock:
            for attempt in (1, 2):
                if self._closed.is_set():
                    raise BrokerUnavailable("the publisher is closed")
                try:
                    channel = self._ensure_channel()
                    confirm_publish(channel, exchange, routing_key, body, props)
                    return
                except PublishError:
                    raise
                except pika.exceptions.ConnectionBlockedTimeout as exc:
                    # A broker alarm (memory/disk) blocks publishing; retrying would block again.
                    self._drop()
                    raise BrokerUnavailable("the broker is blocking publishers (resource alarm); retry later") from exc
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._drop()
                    if exc.reply_code == 404:
                        raise PublishError(f"exchange {exchange!r} does not exist") from exc
                    if attempt == 2:
                        raise PublishError(f"the broker refused the publish: {exc.reply_text}") from exc
                    log.warning(
                        "%s: channel closed by the broker (%s); reopening and retrying message %s",
                        self.name,
                        exc.reply_code,
                        props.message_id,
                    )
                except RECOVERABLE_ERRORS as exc:
                    self._drop()
                    if attempt == 2:
                        raise BrokerUnavailable(f"broker {self.address} unavailable: {type(exc).__name__}") from exc
                    log.warning(
                        "%s: connection lost (%s); reconnecting and retrying message %s",
                        self.name,
                        type(exc).__name__,
                        props.message_id,
                    )

    def _ensure_channel(self) -> Any:
        if (
            self._channel is not None
            and self._channel.is_open
            and self._connection is not None
            and self._connection.is_open
        ):
            # Notice a connection the broker closed while we were idle before publishing on it.
            self._connection.process_data_events(0)
            if self._channel.is_open:
                return self._channel
        self._drop()
        connection = connect(self.address, self.name)
        try:
            channel = connection.channel()
            topology.declare(channel)
            channel.confirm_delivery()
        except BaseException:
            close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel
        log.info("%s: connected to %s", self.name, self.address)
        self._start_keepalive()
        return channel

    def _drop(self) -> None:
        close_quietly(self._connection)
        self._connection = self._channel = None

    def _start_keepalive(self) -> None:
        if self._keepalive is None or not self._keepalive.is_alive():
            self._keepalive = threading.Thread(target=self._keep_alive, name=f"{self.name}-keepalive", daemon=True)
            self._keepalive.start()

    def _keep_alive(self) -> None:
        interval = max(1.0, self.address.heartbeat / 2)
        while not self._closed.wait(interval):
            if not self._lock.acquire(blocking=False):
                continue  # a publish is running; it services the connection itself
            try:
                if self._connection is not None and self._connection.is_open:
                    self._connection.process_data_events(0)
            except Exception as exc:  # noqa: BLE001 - reconnect lazily at the next publish
                log.info(
                    "%s: idle connection lost (%s); will reconnect on the next publish", self.name, type(exc).__name__
                )
                self._drop()
            finally:
                self._lock.release()
