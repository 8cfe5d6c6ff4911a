"""Synergos cluster mode over RabbitMQ: the Director publishes jobs, TTPs consume them, and the
Director archives their completed events. Delivery is at least once (persistent messages,
publisher confirms, manual acks after the outcome is published, prefetch 1, heartbeats); a
poison message is dead-lettered, never requeued forever; consumers dedupe by job id.

    topology    the one place that names exchanges and queues, `declare(channel)`
    connection  `BrokerAddress`, `parse_queue_flag`
    publisher   `Publisher` (thread-safe, confirms, mandatory)
    consumer    `JobConsumer`, `CompletedConsumer` (reconnect with backoff, stop flag)
    errors      `MQError` > `BrokerUnavailable` | `PublishError` | `TopologyConflict` |
                `PoisonMessage` | `JobFailed`
"""

from __future__ import annotations

from .connection import BrokerAddress, parse_queue_flag
from .consumer import CompletedConsumer, JobConsumer
from .errors import BrokerUnavailable, JobFailed, MQError, PoisonMessage, PublishError, TopologyConflict
from .messages import MAX_MESSAGE_BYTES
from .publisher import Publisher
from .topology import COMPLETED_QUEUE, DEAD_LETTER_QUEUE, JOB_QUEUES, declare

__all__ = [
    "BrokerAddress",
    "parse_queue_flag",
    "Publisher",
    "JobConsumer",
    "CompletedConsumer",
    "MQError",
    "BrokerUnavailable",
    "PublishError",
    "TopologyConflict",
    "PoisonMessage",
    "JobFailed",
    "JOB_QUEUES",
    "COMPLETED_QUEUE",
    "DEAD_LETTER_QUEUE",
    "MAX_MESSAGE_BYTES",
    "declare",
]
