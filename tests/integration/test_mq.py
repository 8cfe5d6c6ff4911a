"""The Synergos MQ against a real RabbitMQ node of its own (`TestBroker`: private node name,
ports, epmd and data; stopped at the end of the session even on failure)."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from synergos_local.broker import TestBroker
from synergos_mq import (
    COMPLETED_QUEUE,
    DEAD_LETTER_QUEUE,
    JOB_QUEUES,
    BrokerAddress,
    BrokerUnavailable,
    CompletedConsumer,
    JobConsumer,
    JobFailed,
    PoisonMessage,
    Publisher,
    PublishError,
    topology,
)
from synergos_mq.messages import ATTEMPTS_HEADER, ORIGIN_HEADER, REASON_HEADER
from synergos_mq.retry import RetryPolicy

pytestmark = pytest.mark.integration

ALL_QUEUES = (*JOB_QUEUES, COMPLETED_QUEUE, DEAD_LETTER_QUEUE)
FAST_RETRY = RetryPolicy(retries=2, retry_delay_s=0.3, retry_factor=2)  # 0.3 s, then 0.6 s


@pytest.fixture(scope="session")
def broker() -> Iterator[TestBroker]:
    with TestBroker() as node:
        connection = pika.BlockingConnection(node.address.parameters("synergos-test-setup"))
        topology.declare(connection.channel())
        connection.close()
        yield node


@pytest.fixture()
def mq(broker: TestBroker) -> Iterator[TestBroker]:
    broker.purge(*ALL_QUEUES)
    yield broker


@pytest.fixture()
def publisher(mq: TestBroker) -> Iterator[Publisher]:
    with Publisher(mq.address, name="test-director") as pub:
        yield pub


@contextlib.contextmanager
def running(*consumers: JobConsumer | CompletedConsumer) -> Iterator[None]:
    """Run consumers on their own threads; stop and join them on exit."""
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    try:
        for consumer in consumers:
            assert consumer.ready.wait(15), f"{consumer.name} never connected"
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive(), "a consumer did not stop"


class Events:
    """Completed events gathered by a real CompletedConsumer."""

    def __init__(self, broker: TestBroker) -> None:
        self.items: list[dict] = []
        self._cond = threading.Condition()
        self.consumer = CompletedConsumer(broker.address, self._add, name="test-archiver", poll_s=0.05)

    def _add(self, event: dict) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 20) -> list[dict]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), timeout), f"events so far: {self.items}"
            return list(self.items)

    def ids(self) -> set[str]:
        with self._cond:
            return {e["job_id"] for e in self.items}

    def final(self) -> dict[str, dict]:
        """The completed or failed event of each job (a `retrying` one is not final)."""
        with self._cond:
            return {e["job_id"]: e for e in self.items if e["status"] != "retrying"}


def drain(broker: TestBroker, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message from `queue` (acking them)."""
    connection = pika.BlockingConnection(broker.address.parameters("synergos-test-drain"))
    out = []
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        connection.close()


def publish_raw(broker: TestBroker, routing_key: str, body: bytes) -> None:
    connection = pika.BlockingConnection(broker.address.parameters("synergos-test-raw"))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            topology.JOBS_EXCHANGE, routing_key, body, pika.BasicProperties(delivery_mode=2), mandatory=True
        )
    finally:
        connection.close()


def job(job_id: str, process: str = "train", **extra: Any) -> dict:
    return {
        "job_id": job_id,
        "process": process,
        "keys": {"project_id": "p", "expt_id": "e", "run_id": job_id},
        "grids": [],
        "parameters": {},
        **extra,
    }


def test_job_is_run_once_its_event_published_and_its_delivery_acked(mq: TestBroker, publisher: Publisher) -> None:
    calls: collections.Counter[str] = collections.Counter()

    def handler(j: dict) -> dict:
        calls[j["job_id"]] += 1
        return {"model": f"ref://{j['job_id']}"}

    consumer = JobConsumer(mq.address, handler, name="ttp-1", poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        assert publisher.publish_job("train", job("j-1")) == "j-1"
        got = events.wait_for(lambda e: len(e) >= 1)
    assert got == [
        {
            "job_id": "j-1",
            "process": "train",
            "keys": job("j-1")["keys"],
            "status": "completed",
            "outcome": {"model": "ref://j-1"},
            "attempt": 1,
            "consumer": "ttp-1",
        }
    ]
    assert calls == {"j-1": 1}
    # The consumers are closed: an unacked delivery would be back in its queue by now.
    assert [mq.queue_depth(q) for q in (*JOB_QUEUES, COMPLETED_QUEUE, DEAD_LETTER_QUEUE)] == [0, 0, 0, 0, 0]
    assert consumer.reconnects == 0


def test_poison_and_failing_jobs_are_dead_lettered_and_good_jobs_still_served(
    mq: TestBroker, publisher: Publisher
) -> None:
    calls: collections.Counter[str] = collections.Counter()

    def handler(j: dict) -> dict:
        calls[j["job_id"]] += 1
        if j["job_id"] == "flaky":
            raise RuntimeError("worker_1 unreachable")
        if j["job_id"] == "gave-up":
            raise JobFailed("alignment impossible")
        if j["job_id"] == "unknown-project":
            raise PoisonMessage("no such project")
        return {"ok": True}

    publish_raw(mq, "train", b"{not json")
    publish_raw(mq, "train", json.dumps({"process": "train"}).encode())  # no job_id
    for job_id in ("flaky", "gave-up", "unknown-project", "good"):
        publisher.publish_job("train", job(job_id))

    consumer = JobConsumer(mq.address, handler, name="ttp-1", retry=FAST_RETRY, poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        events.wait_for(
            lambda e: (
                {"flaky", "gave-up", "unknown-project", "good"} <= {x["job_id"] for x in e if x["status"] != "retrying"}
            )
        )

    by_id = events.final()
    retries = [e for e in events.items if e["status"] == "retrying"]
    assert [(e["job_id"], e["attempt"], e["retry_in_s"]) for e in retries] == [("flaky", 1, 0.3), ("flaky", 2, 0.6)]
    assert by_id["good"]["status"] == "completed"
    assert by_id["flaky"]["status"] == "failed" and by_id["flaky"]["attempt"] == 3
    flaky_error = by_id["flaky"]["error"]
    assert flaky_error["code"] == "internal.error" and flaky_error["correlation_id"] in flaky_error["detail"]
    assert "worker_1 unreachable" not in json.dumps(flaky_error)  # internal text stays in the log
    assert by_id["gave-up"]["status"] == "failed" and by_id["gave-up"]["attempt"] == 1
    assert calls == {"flaky": 3, "gave-up": 1, "unknown-project": 1, "good": 1}

    dead = drain(mq, DEAD_LETTER_QUEUE)
    reasons = sorted((p.headers[REASON_HEADER], p.headers[ATTEMPTS_HEADER]) for p, _ in dead)
    assert reasons == [
        ("JobFailed: alignment impossible", 1),
        ("PoisonMessage: a job needs a non-empty string job_id", 1),
        ("PoisonMessage: body is not JSON (JSONDecodeError)", 1),
        ("PoisonMessage: no such project", 1),
        ("RuntimeError: worker_1 unreachable", 3),
    ]
    assert b"{not json" in [body for _, body in dead]  # the original body is kept for inspection
    assert mq.queue_depth("train") == 0
    assert consumer.reconnects == 0


def test_a_job_whose_handler_fails_is_retried_after_growing_delays_while_the_consumer_serves_others(
    mq: TestBroker, publisher: Publisher
) -> None:
    attempts: list[tuple[str, float]] = []

    def handler(j: dict) -> dict:
        attempts.append((j["job_id"], time.monotonic()))
        if j["job_id"] == "down":
            raise RuntimeError("worker_1 unreachable")
        return {}

    policy = RetryPolicy(retries=2, retry_delay_s=1.0, retry_factor=2)  # 1 s, then 2 s
    address = BrokerAddress(host=mq.address.host, port=mq.address.port, heartbeat=1)
    consumer = JobConsumer(address, handler, name="ttp-1", retry=policy, poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        publisher.publish_job("train", job("down"))
        wait_until(lambda: len(attempts) >= 1)
        publisher.publish_job("train", job("other"))  # served while "down" waits for its retry
        events.wait_for(lambda e: {"down", "other"} <= set(events.final()), timeout=30)
    times = [t for job_id, t in attempts if job_id == "down"]
    assert len(times) == 3
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    assert 1.0 <= first_wait < 2.5 and 2.0 <= second_wait < 3.5, (first_wait, second_wait)
    assert [job_id for job_id, _ in attempts].index("other") == 1  # it ran during the first wait
    assert events.final()["down"]["status"] == "failed" and events.final()["down"]["attempt"] == 3
    [(props, _body)] = drain(mq, DEAD_LETTER_QUEUE)
    assert props.headers[REASON_HEADER] == "RuntimeError: worker_1 unreachable"
    assert props.headers[ATTEMPTS_HEADER] == 3 and props.headers[ORIGIN_HEADER] == "train"
    # heartbeats every second flowed throughout: the waiting was the broker's, not a sleeping consumer's
    assert consumer.reconnects == 0
    assert mq.queue_depth("train") == 0


def test_deeply_nested_non_json_and_misshapen_jobs_are_dead_lettered_on_the_first_delivery(
    mq: TestBroker, publisher: Publisher
) -> None:
    calls: list[str] = []
    consumer = JobConsumer(mq.address, lambda j: calls.append(j["job_id"]) or {}, name="ttp-1", poll_s=0.05)
    events = Events(mq)
    publish_raw(mq, "train", b"[" * 100_000)  # once made every consumer reconnect every 0.5 s, forever
    publish_raw(mq, "train", b"\x00\x01 not json")
    publish_raw(mq, "evaluate", json.dumps({"job_id": "bad-keys", "process": "evaluate", "keys": [1, 2]}).encode())
    with running(consumer, events.consumer):
        publisher.publish_job("train", job("after"))
        events.wait_for(lambda e: "after" in events.final())
        time.sleep(1.5)  # long enough for a reconnect storm to show
    dead = drain(mq, DEAD_LETTER_QUEUE)
    assert sorted((p.headers[REASON_HEADER], p.headers[ATTEMPTS_HEADER]) for p, _ in dead) == [
        ("PoisonMessage: body is JSON nested deeper than 64 levels", 1),
        ("PoisonMessage: body is not JSON (UnicodeDecodeError)", 1),
        ("PoisonMessage: keys must be an object of strings", 1),
    ]
    assert calls == ["after"] and consumer.reconnects == 0
    assert [mq.queue_depth(q) for q in JOB_QUEUES] == [0, 0, 0]


def test_unparseable_completed_event_is_dead_lettered(mq: TestBroker) -> None:
    connection = pika.BlockingConnection(mq.address.parameters("synergos-test-raw"))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(topology.COMPLETED_EXCHANGE, "", b"\xff\xfe", pika.BasicProperties(delivery_mode=2))
    connection.close()
    events = Events(mq)
    with running(events.consumer):
        deadline = time.monotonic() + 10
        while mq.queue_depth(DEAD_LETTER_QUEUE) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    dead = drain(mq, DEAD_LETTER_QUEUE)
    assert [p.headers[REASON_HEADER] for p, _ in dead] == ["PoisonMessage: body is not JSON (JSONDecodeError)"]
    assert events.items == [] and mq.queue_depth(COMPLETED_QUEUE) == 0


def test_redelivered_job_id_is_not_run_twice(mq: TestBroker, publisher: Publisher) -> None:
    calls: collections.Counter[str] = collections.Counter()

    def handler(j: dict) -> dict:
        calls[j["job_id"]] += 1
        return {"n": calls[j["job_id"]]}

    publisher.publish_job("evaluate", job("dup", "evaluate"))
    publisher.publish_job("evaluate", job("dup", "evaluate"))  # e.g. the Director retried after a lost confirm
    consumer = JobConsumer(mq.address, handler, name="ttp-1", poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        got = events.wait_for(lambda e: len(e) >= 2)
    assert calls == {"dup": 1}
    assert [e["outcome"] for e in got] == [{"n": 1}, {"n": 1}]  # the second is the first, re-published
    assert mq.queue_depth("evaluate") == 0


def test_consumers_reconnect_after_forced_disconnects_and_lose_no_job(mq: TestBroker, publisher: Publisher) -> None:
    calls: collections.Counter[str] = collections.Counter()
    started = threading.Event()

    def handler(j: dict) -> dict:
        calls[j["job_id"]] += 1
        started.set()
        time.sleep(1.0)
        return {"done": j["job_id"]}

    consumer = JobConsumer(mq.address, handler, name="ttp-1", poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        publisher.publish_job("preprocess", job("warm-up", "preprocess"))  # the publisher is connected now
        events.wait_for(lambda e: "warm-up" in {x["job_id"] for x in e})

        mq.close_all_connections()  # everyone idle, the publisher included
        wait_until(lambda: consumer.reconnects >= 1 and consumer.ready.is_set() and events.consumer.ready.is_set())

        ids = [f"job-{i}" for i in range(4)]
        started.clear()
        for job_id in ids:
            publisher.publish_job("preprocess", job(job_id, "preprocess"))  # reconnects once on its own
        assert started.wait(10)
        mq.close_all_connections()  # a job is running on the worker thread
        events.wait_for(lambda e: set(ids) <= {x["job_id"] for x in e}, timeout=30)
        # the interrupted job's redelivery may come back behind the others: it is settled too
        wait_until(lambda: mq.queue_depth("preprocess") == 0)

    assert consumer.reconnects >= 2 and events.consumer.reconnects >= 2
    assert set(calls) == {"warm-up", *ids}
    # At least once; with one consumer the interrupted job is not even re-run: its redelivery
    # finds its id among the processed ones and only re-publishes the event.
    assert all(n == 1 for n in calls.values()), calls
    assert mq.queue_depth("preprocess") == 0


def test_heartbeats_flow_while_a_job_runs_longer_than_the_heartbeat_timeout(
    mq: TestBroker, publisher: Publisher
) -> None:
    address = BrokerAddress(host=mq.address.host, port=mq.address.port, heartbeat=1)

    def handler(j: dict) -> dict:
        # Long enough that a connection whose I/O thread is blocked this long is dropped by the
        # broker with heartbeat=1 (checked by hand: silent 3.5 s -> StreamLostError).
        time.sleep(4.0)
        return {}

    consumer = JobConsumer(address, handler, name="ttp-slow", poll_s=0.05)
    events = Events(mq)
    with running(consumer, events.consumer):
        publisher.publish_job("train", job("long"))
        events.wait_for(lambda e: len(e) >= 1, timeout=15)
    assert consumer.reconnects == 0


def test_unroutable_or_unknown_destinations_raise_publish_error(mq: TestBroker, publisher: Publisher) -> None:
    with pytest.raises(PublishError, match="unroutable"):
        publisher.publish(topology.JOBS_EXCHANGE, "no-such-process", {"job_id": "x"}, message_id="x")
    with pytest.raises(PublishError, match="does not exist"):
        publisher.publish("synergos.nowhere", "train", {"job_id": "x"}, message_id="x")
    with pytest.raises(ValueError):
        publisher.publish_job("no-such-process", job("x"))
    # The publisher is still usable after refusals.
    publisher.publish_job("train", job("after"))
    assert mq.queue_depth("train") == 1


def test_publisher_reports_an_unreachable_broker() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    with Publisher(BrokerAddress(host="127.0.0.1", port=port, connection_attempts=1, retry_delay=0)) as pub:
        with pytest.raises(BrokerUnavailable):
            pub.publish_job("train", job("nowhere"))


def test_stop_lets_a_running_job_finish_within_the_grace_period(mq: TestBroker, publisher: Publisher) -> None:
    started = threading.Event()

    def handler(j: dict) -> dict:
        started.set()
        time.sleep(1.0 if j["job_id"] == "short" else 3.0)
        return {}

    events = Events(mq)
    with running(events.consumer):
        for job_id, grace in (("short", 10.0), ("long", 0.3)):
            started.clear()
            consumer = JobConsumer(mq.address, handler, name="ttp-stopping", poll_s=0.05, stop_grace_s=grace)
            thread = threading.Thread(target=consumer.run, daemon=True)
            thread.start()
            publisher.publish_job("train", job(job_id))
            assert started.wait(10)
            consumer.stop()
            thread.join(15)
            assert not thread.is_alive()
        events.wait_for(lambda e: "short" in {x["job_id"] for x in e})
    # "short" finished inside its grace period and was acked; "long" did not, so it went back.
    assert {e["job_id"] for e in events.items} == {"short"}
    assert mq.queue_depth("train") == 1


def test_ensure_local_broker_uses_a_running_broker_and_never_stops_it(mq: TestBroker) -> None:
    from synergos_local.broker import amqp_answers, ensure_local_broker

    handle = ensure_local_broker(host=mq.address.host, port=mq.address.port)
    assert handle.started is False and handle.address.port == mq.address.port
    handle.stop()
    assert amqp_answers(mq.address.host, mq.address.port)


def wait_until(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
