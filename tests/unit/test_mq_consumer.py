"""How a JobConsumer settles each delivery, driven step by step against a scripted channel
(the reconnect loop itself is exercised against a real broker in tests/integration/test_mq.py)."""

from __future__ import annotations

import json
import threading

import pika
import pika.exceptions
import pytest

from synergos_mq import BrokerAddress, JobConsumer, JobFailed, PoisonMessage
from synergos_mq.loop import _Delivery, next_backoff
from synergos_mq.messages import ATTEMPTS_HEADER, MAX_MESSAGE_BYTES, REASON_HEADER
from synergos_mq.retry import RetryPolicy


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.nack_exchanges: set[str] = set()
        self._tags = 0

    def queue_declare(self, queue, durable, arguments=None):
        assert durable is True
        self.log.append(("declare", queue, arguments))

    def basic_publish(self, exchange, routing_key, body, properties, mandatory):
        assert mandatory is True
        if exchange in self.nack_exchanges:
            raise pika.exceptions.NackError([])
        self.log.append(("publish", exchange, routing_key, body, properties))

    def basic_ack(self, delivery_tag):
        self.log.append(("ack", delivery_tag))

    def basic_reject(self, delivery_tag, requeue):
        self.log.append(("reject", delivery_tag, requeue))

    def basic_consume(self, queue, auto_ack, on_message_callback):
        assert auto_ack is False
        self._tags += 1
        self.log.append(("consume", queue))
        return f"ctag-{self._tags}"

    def basic_cancel(self, tag):
        self.log.append(("cancel", tag))

    def published(self, exchange: str) -> list[tuple]:
        return [e for e in self.log if e[0] == "publish" and e[1] == exchange]

    def acks(self) -> list[int]:
        return [e[1] for e in self.log if e[0] == "ack"]


class FakeConnection:
    def add_callback_threadsafe(self, callback):
        pass


def make(handler, **kwargs) -> tuple[JobConsumer, FakeChannel]:
    consumer = JobConsumer(BrokerAddress(host="mq.invalid"), handler, name="ttp-1", **kwargs)
    channel = FakeChannel()
    consumer._connection, consumer._channel, consumer._publish_channel = FakeConnection(), channel, channel
    consumer._generation = 1
    consumer._consume()
    return consumer, channel


def deliver(
    consumer: JobConsumer,
    body: bytes | dict,
    *,
    tag: int = 1,
    attempt: int | None = None,
    queue: str = "train",
    before_finish=None,
    extra_headers: dict | None = None,
) -> None:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    job_id = body.get("job_id") if isinstance(body, dict) else None
    headers = {ATTEMPTS_HEADER: attempt} if attempt else None
    if extra_headers:
        headers = {**(headers or {}), **extra_headers}
    props = pika.BasicProperties(message_id=job_id, headers=headers, content_type="application/json")
    consumer._pending.append(_Delivery(consumer._generation, queue, tag, props, raw))
    consumer._step()
    if consumer._running is not None:
        assert consumer._running.done.wait(5)
        if before_finish:
            before_finish()
        consumer._step()


def job(job_id: str = "j-1", **extra) -> dict:
    return {"job_id": job_id, "process": "train", "keys": {"run_id": "r"}, **extra}


def test_the_handler_runs_off_the_io_thread_and_the_event_is_confirmed_before_the_ack() -> None:
    threads = []

    def handler(j):
        threads.append(threading.current_thread())
        return {"model": "ref://m"}

    consumer, channel = make(handler)
    deliver(consumer, job(), tag=7)
    assert threads and threads[0] is not threading.current_thread()
    [event] = channel.published("synergos.completed")
    assert json.loads(event[3]) == {
        "job_id": "j-1",
        "process": "train",
        "keys": {"run_id": "r"},
        "status": "completed",
        "outcome": {"model": "ref://m"},
        "attempt": 1,
        "consumer": "ttp-1",
    }
    assert event[4].message_id == "j-1" and event[4].delivery_mode == 2
    assert channel.log.index(event) < channel.log.index(("ack", 7))
    assert channel.acks() == [7]


def test_consuming_pauses_while_a_job_runs_and_resumes_after() -> None:
    consumer, channel = make(lambda j: {})
    channel.log.clear()
    deliver(consumer, job())
    kinds = [e[0] for e in channel.log]
    assert kinds[:3] == ["cancel"] * 3  # one consumer per job queue
    assert kinds[-3:] == ["consume"] * 3 and kinds.index("ack") < kinds.index("consume")


def test_a_failed_attempt_waits_in_a_delay_queue_with_the_next_attempt_then_is_acked() -> None:
    def handler(j):
        raise RuntimeError("worker_1 unreachable")

    consumer, channel = make(handler, max_attempts=3)
    # the broker's own history of an earlier delay is not carried into the next one
    deliver(consumer, job(), tag=3, attempt=2, extra_headers={"x-death": [{"count": 1}], "x-first-death-queue": "q"})
    [(_, queue, arguments)] = [e for e in channel.log if e[0] == "declare"]
    # 5 s after the first attempt, 20 s after the second: back to `train` when it expires
    assert queue == "train.retry.20000ms"
    assert arguments["x-message-ttl"] == 20_000 and arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "train" and arguments["x-expires"] > 20_000
    [(_, exchange, key, body, props)] = channel.published("")
    assert (exchange, key) == ("", "train.retry.20000ms")
    assert json.loads(body) == job() and props.message_id == "j-1"
    assert props.headers == {ATTEMPTS_HEADER: 3}
    # the Director hears of it: the attempt's public error, and when the next one starts
    [event] = [json.loads(e[3]) for e in channel.published("synergos.completed")]
    assert event["status"] == "retrying" and event["attempt"] == 2 and event["max_attempts"] == 3
    assert event["retry_in_s"] == 20.0 and event["error"]["code"] == "internal.error"
    assert "worker_1 unreachable" not in json.dumps(event)
    assert channel.acks() == [3]
    assert channel.log.index(("ack", 3)) > channel.log.index(next(e for e in channel.log if e[0] == "publish"))


def test_retry_delays_grow_as_the_policy_says_and_the_environment_sets_it(monkeypatch) -> None:
    default = RetryPolicy()
    assert (default.retries, default.max_attempts) == (3, 4)
    assert [default.delay_s(n) for n in (1, 2, 3)] == [5.0, 20.0, 80.0]
    assert default.describe() == "3 retries after 5 s, 20 s, 80 s"
    monkeypatch.setenv("SYNERGOS_MQ_RETRIES", "2")
    monkeypatch.setenv("SYNERGOS_MQ_RETRY_DELAY_S", "0.5")
    monkeypatch.setenv("SYNERGOS_MQ_RETRY_FACTOR", "2")
    consumer, _channel = make(lambda j: {})
    assert consumer.max_attempts == 3 and [consumer.retry.delay_s(n) for n in (1, 2)] == [0.5, 1.0]
    assert make(lambda j: {}, max_attempts=1)[0].retry.describe() == "no retries"


@pytest.mark.parametrize(
    "error, attempt, reason",
    [
        (RuntimeError("still down"), 3, "RuntimeError: still down"),
        (JobFailed("diverged"), 1, "JobFailed: diverged"),
        (PoisonMessage("unknown project"), 1, "PoisonMessage: unknown project"),
    ],
)
def test_a_final_failure_is_dead_lettered_reported_and_acked(error, attempt, reason) -> None:
    def handler(j):
        raise error

    consumer, channel = make(handler, max_attempts=3)
    deliver(consumer, job(), tag=4, attempt=attempt)
    [dead] = channel.published("synergos.dead")
    assert json.loads(dead[3]) == job()
    assert dead[4].headers[REASON_HEADER] == reason and dead[4].headers[ATTEMPTS_HEADER] == attempt
    [event] = channel.published("synergos.completed")
    assert json.loads(event[3])["status"] == "failed"
    error_sent = json.loads(event[3])["error"]
    # the handler's exception text stays in the dead-letter header and the log, never in the event
    assert error_sent["code"] == "internal.error" and error_sent["correlation_id"]
    assert str(error) not in json.dumps(error_sent)
    assert channel.acks() == [4]
    assert channel.published("") == []  # never requeued


def test_unparseable_messages_are_dead_lettered_without_running_anything() -> None:
    calls = []
    consumer, channel = make(calls.append)
    deliver(consumer, b"\x00not json", tag=1)
    deliver(consumer, {"process": "train"}, tag=2)
    deliver(consumer, b"[" * 100_000, tag=3)  # deep enough to exhaust the JSON decoder's recursion
    deliver(consumer, {"job_id": "j", "process": "train", "keys": ["not", "an", "object"]}, tag=4)
    assert calls == []
    reasons = [e[4].headers[REASON_HEADER] for e in channel.published("synergos.dead")]
    assert reasons == [
        "PoisonMessage: body is not JSON (UnicodeDecodeError)",
        "PoisonMessage: a job needs a non-empty string job_id",
        "PoisonMessage: body is JSON nested deeper than 64 levels",
        "PoisonMessage: keys must be an object of strings",
    ]
    assert channel.acks() == [1, 2, 3, 4]


def test_whatever_a_decoder_raises_the_message_is_dead_lettered_not_the_connection_dropped() -> None:
    consumer, channel = make(lambda j: {})

    def broken_decoder(body):
        raise RecursionError("maximum recursion depth exceeded")

    consumer._decode = broken_decoder
    deliver(consumer, job(), tag=5)  # raised out of the loop, this made every TTP reconnect forever
    [dead] = channel.published("synergos.dead")
    assert dead[4].headers[REASON_HEADER] == "PoisonMessage: nested too deeply to decode"
    assert channel.acks() == [5]


def test_a_job_its_check_refuses_is_dead_lettered_and_reported_failed_on_its_first_delivery() -> None:
    from synergos_core.errors import ErrorCode, InvalidRequest

    calls = []

    def check(j):
        if "grids" not in j:
            raise PoisonMessage("the job cannot run: grids: missing") from InvalidRequest(
                "the job cannot run: grids: missing", ErrorCode.REQUEST_INVALID
            )

    consumer, channel = make(calls.append, check=check)
    deliver(consumer, job(), tag=6)
    assert calls == []
    [dead] = channel.published("synergos.dead")
    assert dead[4].headers[REASON_HEADER] == "PoisonMessage: the job cannot run: grids: missing"
    [event] = [json.loads(e[3]) for e in channel.published("synergos.completed")]
    # the reason is public (a ServiceError's detail): the Director's board shows it
    assert event["status"] == "failed" and event["error"]["detail"] == "the job cannot run: grids: missing"
    assert channel.acks() == [6]
    deliver(consumer, job("j-2", grids=[]), tag=7)  # and a job it accepts runs
    assert len(calls) == 1


def test_a_known_job_id_is_not_run_again() -> None:
    calls = []
    consumer, channel = make(lambda j: calls.append(j["job_id"]) or {"n": len(calls)})
    deliver(consumer, job(), tag=1)
    deliver(consumer, job(), tag=2)
    assert calls == ["j-1"]
    first, second = channel.published("synergos.completed")
    assert first[3] == second[3]
    assert channel.acks() == [1, 2]


def test_an_outcome_too_large_to_send_is_a_permanent_failure() -> None:
    consumer, channel = make(lambda j: {"weights": "x" * MAX_MESSAGE_BYTES})
    deliver(consumer, job(), tag=1)
    [dead] = channel.published("synergos.dead")
    assert dead[4].headers[REASON_HEADER].startswith("JobFailed: the handler's outcome cannot be sent")
    assert json.loads(channel.published("synergos.completed")[0][3])["status"] == "failed"
    assert channel.acks() == [1]


def test_after_a_reconnect_a_stale_delivery_is_never_acked_nor_requeued_twice() -> None:
    def reconnect(consumer):
        consumer._generation += 1  # what _connect does: old delivery tags mean nothing now

    ok, ok_channel = make(lambda j: {"done": True})
    deliver(ok, job(), tag=1, before_finish=lambda: reconnect(ok))
    assert ok_channel.acks() == []
    assert len(ok_channel.published("synergos.completed")) == 1  # the outcome is not lost...
    assert ok.processed.get("j-1")["status"] == "completed"  # ...and its redelivery won't rerun it

    def flaky(j):
        raise RuntimeError("boom")

    bad, bad_channel = make(flaky)
    deliver(bad, job(), tag=1, before_finish=lambda: reconnect(bad))
    # the broker already requeued it: republishing as well would run the job twice
    assert [e for e in bad_channel.log if e[0] in ("publish", "ack")] == []


def test_if_the_dead_letter_exchange_refuses_the_broker_dead_letters_instead() -> None:
    consumer, channel = make(lambda j: {})
    channel.nack_exchanges.add("synergos.dead")
    deliver(consumer, b"garbage", tag=9)
    assert ("reject", 9, False) in channel.log and channel.acks() == []


def test_backoff_doubles_up_to_ten_seconds() -> None:
    delays, delay = [], 0.5
    for _ in range(7):
        delays.append(delay)
        delay = next_backoff(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_consumers_refuse_unknown_queues_and_zero_attempts() -> None:
    with pytest.raises(ValueError):
        JobConsumer(BrokerAddress(host="mq"), dict, queues=("completed",), name="x")
    with pytest.raises(ValueError):
        JobConsumer(BrokerAddress(host="mq"), dict, name="x", max_attempts=0)
