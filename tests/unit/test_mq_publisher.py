"""Publisher rules that need no broker: refusals happen before any connection, a lost connection
is retried once with the same message id, broker refusals are `PublishError`s."""

from __future__ import annotations

import json

import pika.exceptions
import pytest

from synergos_mq import BrokerAddress, BrokerUnavailable, Publisher, PublishError
from synergos_mq import publisher as publisher_module
from synergos_mq.messages import MAX_MESSAGE_BYTES


class FakeChannel:
    def __init__(self, fail_with: list[BaseException | None]) -> None:
        self.fail_with = fail_with
        self.published: list[tuple] = []
        self.is_open = True

    # topology.declare
    def exchange_declare(self, **kw):
        pass

    def queue_declare(self, **kw):
        pass

    def queue_bind(self, **kw):
        pass

    def confirm_delivery(self):
        pass

    def basic_publish(self, exchange, routing_key, body, properties, mandatory):
        assert mandatory is True
        error = self.fail_with.pop(0) if self.fail_with else None
        if error is not None:
            self.is_open = False
            raise error
        self.published.append((exchange, routing_key, json.loads(body), properties))


class FakeConnection:
    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel
        self.is_open = True

    def channel(self):
        return self._channel

    def process_data_events(self, time_limit=0):
        pass

    def close(self):
        self.is_open = False


@pytest.fixture()
def fake_broker(monkeypatch):
    """Each connect() hands out the next scripted channel; records how often it was called."""
    state = {"connects": 0, "channels": []}

    def connect(address, name):
        state["connects"] += 1
        if not state["channels"]:
            raise pika.exceptions.AMQPConnectionError("refused")
        return FakeConnection(state["channels"].pop(0))

    monkeypatch.setattr(publisher_module, "connect", connect)
    return state


ADDRESS = BrokerAddress(host="mq.invalid")


def test_oversized_and_invalid_jobs_are_refused_before_connecting(fake_broker) -> None:
    pub = Publisher(ADDRESS)
    with pytest.raises(PublishError, match="references"):
        pub.publish_job("train", {"job_id": "big", "weights": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(ValueError):
        pub.publish_job("mine_bitcoin", {"job_id": "j"})
    with pytest.raises(ValueError):
        pub.publish_job("train", {"keys": {}})
    with pytest.raises(ValueError):
        pub.publish_job("train", {"job_id": "j", "process": "evaluate"})
    with pytest.raises(ValueError):
        pub.publish_completed({"status": "completed"})
    assert fake_broker["connects"] == 0


def test_a_job_is_published_with_its_id_and_process(fake_broker) -> None:
    channel = FakeChannel([])
    fake_broker["channels"] = [channel]
    assert Publisher(ADDRESS).publish_job("evaluate", {"job_id": "j-9", "keys": {"run_id": "r"}}) == "j-9"
    [(exchange, key, body, props)] = channel.published
    assert (exchange, key) == ("synergos.jobs", "evaluate")
    assert body == {"job_id": "j-9", "keys": {"run_id": "r"}, "process": "evaluate"}
    assert (props.message_id, props.delivery_mode, props.content_type) == ("j-9", 2, "application/json")


def test_a_lost_connection_is_retried_once_with_the_same_message_id(fake_broker) -> None:
    first = FakeChannel([pika.exceptions.StreamLostError("reset")])
    second = FakeChannel([])
    fake_broker["channels"] = [first, second]
    Publisher(ADDRESS).publish_job("train", {"job_id": "j-1"})
    assert fake_broker["connects"] == 2
    assert [p[3].message_id for p in second.published] == ["j-1"]


def test_a_second_loss_is_broker_unavailable(fake_broker) -> None:
    fake_broker["channels"] = [
        FakeChannel([pika.exceptions.StreamLostError("reset")]),
        FakeChannel([pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED")]),
    ]
    with pytest.raises(BrokerUnavailable):
        Publisher(ADDRESS).publish_job("train", {"job_id": "j-1"})
    assert fake_broker["connects"] == 2


def test_an_unreachable_broker_is_broker_unavailable(fake_broker) -> None:
    with pytest.raises(BrokerUnavailable):
        Publisher(ADDRESS).publish_completed({"job_id": "j", "status": "completed"})
    assert fake_broker["connects"] == 2


@pytest.mark.parametrize("error", [pika.exceptions.UnroutableError([]), pika.exceptions.NackError([])])
def test_unroutable_or_nacked_is_publish_error_without_retry(fake_broker, error) -> None:
    fake_broker["channels"] = [FakeChannel([error]), FakeChannel([])]
    with pytest.raises(PublishError):
        Publisher(ADDRESS).publish_job("train", {"job_id": "j-1"})
    assert fake_broker["connects"] == 1


def test_a_blocked_broker_fails_fast_instead_of_blocking_twice(fake_broker) -> None:
    fake_broker["channels"] = [FakeChannel([pika.exceptions.ConnectionBlockedTimeout()]), FakeChannel([])]
    with pytest.raises(BrokerUnavailable, match="alarm"):
        Publisher(ADDRESS).publish_job("train", {"job_id": "j-1"})
    assert fake_broker["connects"] == 1


def test_a_closed_publisher_refuses(fake_broker) -> None:
    pub = Publisher(ADDRESS)
    pub.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        pub.publish_job("train", {"job_id": "j-1"})
