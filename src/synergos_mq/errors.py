"""The MQ error tree: what a caller may retry and what it may not.

    MQError                  base of every error raised by synergos_mq
    ├── BrokerUnavailable    recoverable: the broker cannot be reached or dropped us (retry later)
    ├── PublishError         a publish was nacked, unroutable, unconfirmed or refused (too large)
    ├── TopologyConflict     fatal: an exchange or queue exists with other arguments (fix the broker)
    ├── PoisonMessage        fatal for one message: it is dead-lettered, never requeued
    └── JobFailed            a job's handler failed permanently: dead-lettered, reported as failed

A handler raises `PoisonMessage` when the job itself can never succeed (unknown project, schema
mismatch) and `JobFailed` when it tried and gave up; any other exception is retried up to the
consumer's `max_attempts`.
"""

from __future__ import annotations


class MQError(Exception):
    """Base of every error raised by synergos_mq."""


class BrokerUnavailable(MQError):
    """The broker could not be reached, or the connection was lost and one reconnect failed."""


class PublishError(MQError):
    """A message was refused: nacked or returned (unroutable) by the broker, or too large to send."""


class TopologyConflict(MQError):
    """An exchange or queue already exists with different arguments; redeclaring cannot fix it."""


class PoisonMessage(MQError):
    """This message can never be processed; it goes to the dead-letter queue, never back to its queue."""


class JobFailed(MQError):
    """A job's handler failed for good; it is dead-lettered and reported with status "failed"."""
