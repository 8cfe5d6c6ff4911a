"""The one place that names Synergos exchanges and queues."""

from __future__ import annotations

import pika.exceptions
import pytest

from synergos_mq import COMPLETED_QUEUE, DEAD_LETTER_QUEUE, JOB_QUEUES, TopologyConflict, topology


class RecordingChannel:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def exchange_declare(self, exchange, exchange_type, durable):
        self.calls.append(("exchange", exchange, exchange_type, durable))

    def queue_declare(self, queue, durable, arguments=None):
        if queue == self.fail_on:
            raise pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")
        self.calls.append(("queue", queue, durable, arguments))

    def queue_bind(self, queue, exchange, routing_key=None):
        self.calls.append(("bind", queue, exchange, routing_key))


def test_names() -> None:
    assert JOB_QUEUES == ("preprocess", "train", "evaluate")
    assert COMPLETED_QUEUE == "completed"
    assert DEAD_LETTER_QUEUE == "dead_letters"
    assert (topology.JOBS_EXCHANGE, topology.COMPLETED_EXCHANGE, topology.DEAD_LETTER_EXCHANGE) == (
        "synergos.jobs",
        "synergos.completed",
        "synergos.dead",
    )


def test_declare_builds_durable_exchanges_queues_and_bindings() -> None:
    channel = RecordingChannel()
    topology.declare(channel)
    calls = [c for c in channel.calls if c[0] != "queue"]
    assert ("exchange", "synergos.jobs", "topic", True) in calls
    assert ("exchange", "synergos.completed", "fanout", True) in calls
    assert ("exchange", "synergos.dead", "fanout", True) in calls
    for name in JOB_QUEUES:
        assert ("bind", name, "synergos.jobs", name) in calls
    assert ("bind", "completed", "synergos.completed", None) in calls
    assert ("bind", "dead_letters", "synergos.dead", None) in calls
    queues = {c[1]: c for c in channel.calls if c[0] == "queue"}
    assert set(queues) == {*JOB_QUEUES, "completed", "dead_letters"}
    assert all(q[2] is True for q in queues.values())
    for name in JOB_QUEUES:  # a job the broker rejects is kept, not dropped
        assert queues[name][3] == {"x-dead-letter-exchange": "synergos.dead"}
    # the dead-letter target exists before any queue that points at it
    assert channel.calls.index(("exchange", "synergos.dead", "fanout", True)) < channel.calls.index(queues["train"])


def test_declare_is_idempotent() -> None:
    first, second = RecordingChannel(), RecordingChannel()
    topology.declare(first)
    topology.declare(first)
    topology.declare(second)
    assert first.calls == second.calls * 2


def test_a_conflicting_queue_is_a_topology_conflict_not_a_retry() -> None:
    with pytest.raises(TopologyConflict, match="inequivalent"):
        topology.declare(RecordingChannel(fail_on="train"))


def test_each_queue_and_delay_has_its_own_delay_queue_that_returns_messages_to_the_queue() -> None:
    name, arguments = topology.delay_queue("evaluate", 80)
    assert name == "evaluate.retry.80000ms"
    assert arguments == {
        "x-message-ttl": 80_000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "evaluate",
        "x-expires": 220_000,  # longer than any message waits in it
    }
    assert topology.delay_queue("completed", 0.2)[0] == "completed.retry.200ms"
    with pytest.raises(ValueError):
        topology.delay_queue("dead_letters", 5)
    channel = RecordingChannel()
    assert topology.declare_delay(channel, "train", 5) == "train.retry.5000ms"
    assert channel.calls == [("queue", "train.retry.5000ms", True, topology.delay_queue("train", 5)[1])]
    with pytest.raises(TopologyConflict):
        topology.declare_delay(RecordingChannel(fail_on="train.retry.5000ms"), "train", 5)
