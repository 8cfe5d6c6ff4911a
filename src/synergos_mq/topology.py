"""The one place that names Synergos exchanges and queues, and declares them.

    synergos.jobs       topic,  durable  --preprocess/train/evaluate-->  queues of those names
    synergos.completed  fanout, durable  -->  completed
    synergos.dead       fanout, durable  -->  dead_letters

Job queues dead-letter to `synergos.dead` (`x-dead-letter-exchange`), so a message the broker
itself rejects (reject without requeue, expiry) is kept, not dropped.

    <queue>.retry.<ms>ms  durable, declared when first needed: a failed message waits here for
                          its retry (`x-message-ttl`), then the broker dead-letters it back to
                          <queue> through the default exchange (see `retry`)
"""

from __future__ import annotations

from typing import Any

import pika.exceptions

from .errors import TopologyConflict

JOBS_EXCHANGE = "synergos.jobs"
COMPLETED_EXCHANGE = "synergos.completed"
DEAD_LETTER_EXCHANGE = "synergos.dead"

JOB_QUEUES: tuple[str, ...] = ("preprocess", "train", "evaluate")
COMPLETED_QUEUE = "completed"
DEAD_LETTER_QUEUE = "dead_letters"
ALL_QUEUES: tuple[str, ...] = (*JOB_QUEUES, COMPLETED_QUEUE, DEAD_LETTER_QUEUE)

JOB_QUEUE_ARGUMENTS: dict[str, Any] = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}


def declare(channel: Any) -> None:
    """Declare every exchange, queue and binding (durable). Idempotent: safe on every connect.

    Raises `TopologyConflict` when something exists with other arguments (the broker closes the
    channel with 406 PRECONDITION_FAILED); that needs an operator, not a retry.
    """
    try:
        channel.exchange_declare(exchange=DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
        channel.queue_declare(queue=DEAD_LETTER_QUEUE, durable=True)
        channel.queue_bind(queue=DEAD_LETTER_QUEUE, exchange=DEAD_LETTER_EXCHANGE)

        channel.exchange_declare(exchange=JOBS_EXCHANGE, exchange_type="topic", durable=True)
        for name in JOB_QUEUES:
            channel.queue_declare(queue=name, durable=True, arguments=dict(JOB_QUEUE_ARGUMENTS))
            channel.queue_bind(queue=name, exchange=JOBS_EXCHANGE, routing_key=name)

        channel.exchange_declare(exchange=COMPLETED_EXCHANGE, exchange_type="fanout", durable=True)
        channel.queue_declare(queue=COMPLETED_QUEUE, durable=True)
        channel.queue_bind(queue=COMPLETED_QUEUE, exchange=COMPLETED_EXCHANGE)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyConflict(f"broker topology differs from Synergos's: {exc.reply_text}") from exc
        raise


def delay_queue(queue: str, delay_s: float) -> tuple[str, dict[str, Any]]:
    """The name and arguments of the queue where a message of `queue` waits `delay_s` before it
    returns there. One queue per delay, so every message in it expires in arrival order; unused
    for a while longer than its delay (`x-expires`), the broker deletes it."""
    if queue not in ALL_QUEUES or queue == DEAD_LETTER_QUEUE:
        raise ValueError(f"no retries for queue {queue!r}")
    ms = max(1, round(delay_s * 1000))
    arguments = {
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",  # the default exchange: straight back to `queue`
        "x-dead-letter-routing-key": queue,
        "x-expires": 2 * ms + 60_000,
    }
    return f"{queue}.retry.{ms}ms", arguments


def declare_delay(channel: Any, queue: str, delay_s: float) -> str:
    """Declare (again: it resets the queue's expiry) the delay queue of `queue` for `delay_s`."""
    name, arguments = delay_queue(queue, delay_s)
    try:
        channel.queue_declare(queue=name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyConflict(f"delay queue {name} exists with other arguments: {exc.reply_text}") from exc
        raise
    return name
