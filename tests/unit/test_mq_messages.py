"""Wire rules: size limit, JSON only, attempts header, dead-letter reasons, job-id memory."""

from __future__ import annotations

import json

import pytest

from synergos_mq import JobFailed, PoisonMessage, PublishError, messages
from synergos_mq.messages import ATTEMPTS_HEADER, MAX_MESSAGE_BYTES, REASON_HEADER


def test_messages_up_to_8_mib_pass_and_larger_ones_are_refused() -> None:
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    assert len(messages.encode({"blob": "x" * (MAX_MESSAGE_BYTES - overhead)})) == MAX_MESSAGE_BYTES
    with pytest.raises(PublishError, match="references"):
        messages.encode({"blob": "x" * (MAX_MESSAGE_BYTES - overhead + 1)})
    assert MAX_MESSAGE_BYTES == 8 * 1024 * 1024


@pytest.mark.parametrize("message", [{"w": b"raw bytes"}, {"x": float("nan")}, {"s": {1, 2}}])
def test_only_plain_json_is_sent(message) -> None:
    with pytest.raises(PublishError):
        messages.encode(message)


def test_properties_are_persistent_json_with_the_job_id() -> None:
    props = messages.properties("job-1", {"a": 1}, "synergos.job")
    assert props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert props.message_id == "job-1"
    assert props.headers == {"a": 1}


@pytest.mark.parametrize(
    "headers, attempt",
    [
        (None, 1),
        ({}, 1),
        ({ATTEMPTS_HEADER: 2}, 2),
        ({ATTEMPTS_HEADER: "3"}, 3),
        ({ATTEMPTS_HEADER: b"4"}, 4),
        ({ATTEMPTS_HEADER: "garbage"}, 1),
        ({ATTEMPTS_HEADER: 0}, 1),
        ({ATTEMPTS_HEADER: -5}, 1),
    ],
)
def test_attempt_of(headers, attempt) -> None:
    assert messages.attempt_of(headers) == attempt


def test_retry_headers_increment_the_attempt_and_keep_the_rest() -> None:
    original = {"trace": "t-1", ATTEMPTS_HEADER: 2}
    assert messages.retry_headers(original) == {"trace": "t-1", ATTEMPTS_HEADER: 3}
    assert original == {"trace": "t-1", ATTEMPTS_HEADER: 2}
    assert messages.retry_headers(None) == {ATTEMPTS_HEADER: 2}


def test_when_a_failed_attempt_is_final() -> None:
    assert not messages.gives_up(RuntimeError("flaky"), attempt=1, max_attempts=3)
    assert not messages.gives_up(RuntimeError("flaky"), attempt=2, max_attempts=3)
    assert messages.gives_up(RuntimeError("flaky"), attempt=3, max_attempts=3)
    assert messages.gives_up(RuntimeError("flaky"), attempt=7, max_attempts=3)  # a header from an older policy
    assert messages.gives_up(PoisonMessage("bad"), attempt=1, max_attempts=3)
    assert messages.gives_up(JobFailed("gave up"), attempt=1, max_attempts=3)
    assert messages.gives_up(RuntimeError("x"), attempt=1, max_attempts=1)


def test_dead_letter_headers_say_why_and_how_often() -> None:
    headers = messages.dead_letter_headers({"trace": "t"}, ValueError("bad shape"), 3, "train")
    assert headers == {
        "trace": "t",
        REASON_HEADER: "ValueError: bad shape",
        ATTEMPTS_HEADER: 3,
        "x-synergos-queue": "train",
    }
    long = messages.reason_of(RuntimeError("x" * 5000))
    assert len(long) == messages.MAX_REASON_CHARS and long.endswith("...")
    assert messages.reason_of(KeyError()) == "KeyError"


@pytest.mark.parametrize(
    "body, why",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"process": "train"}', "job_id"),
        (b'{"job_id": "", "process": "train"}', "job_id"),
        (b'{"job_id": 7, "process": "train"}', "job_id"),
        (json.dumps({"job_id": "j" * 300, "process": "train"}).encode(), "longer"),
        (b'{"job_id": "j", "process": "mine_bitcoin"}', "process"),
        (b'{"job_id": "j"}', "process"),
    ],
)
def test_unusable_jobs_are_poison(body, why) -> None:
    with pytest.raises(PoisonMessage, match=why):
        messages.parse_job(body)


@pytest.mark.parametrize(
    "body, why",
    [
        (b"[" * 100_000, "nested deeper than 64"),  # RecursionError in the decoder
        (b'{"job_id": "j", "process": "train", "p": ' + b"[" * 37 + b"]" * 37 + b"}", None),
        (b'{"job_id": "j", "process": "train", "p": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than 64"),
        (b'{"job_id": "j", "process": "train", "keys": {"run_id": 7}}', "keys must be an object of strings"),
        (b'{"job_id": "j", "process": "train", "grids": {}}', "grids must be a list"),
        (b'{"job_id": "j", "process": "train", "parameters": []}', "parameters must be an object"),
    ],
)
def test_deep_or_misshapen_jobs_are_poison(body, why) -> None:
    if why is None:
        assert messages.parse_job(body)["job_id"] == "j"  # 38 levels: a real job nests about 8
        return
    with pytest.raises(PoisonMessage, match=why):
        messages.parse_job(body)


def test_depth_counts_lists_and_objects_without_recursing() -> None:
    assert messages.depth_of(1) == 0 and messages.depth_of({}) == 1 and messages.depth_of({"a": [1, {"b": []}]}) == 4
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert messages.depth_of(deep) > messages.MAX_DEPTH


def test_a_retrying_event_says_when_the_next_attempt_starts() -> None:
    job = {"job_id": "j", "process": "train", "keys": {"run_id": "r"}}
    event = messages.retrying_event(
        job, RuntimeError("node down"), attempt=1, max_attempts=4, delay_s=5, consumer="ttp"
    )
    assert (event["status"], event["attempt"], event["max_attempts"], event["retry_in_s"]) == ("retrying", 1, 4, 5)
    assert "node down" not in json.dumps(event)
    assert messages.parse_event(json.dumps(event).encode()) == event


def test_a_good_job_parses() -> None:
    job = {"job_id": "j-1", "process": "evaluate", "keys": {"project_id": "p"}}
    assert messages.parse_job(json.dumps(job).encode()) == job


def test_completed_and_failed_events() -> None:
    job = {"job_id": "j", "process": "train", "keys": {"run_id": "r"}, "parameters": {"secret": "not copied"}}
    assert messages.completed_event(job, {"m": 1}, attempt=2, consumer="ttp") == {
        "job_id": "j",
        "process": "train",
        "keys": {"run_id": "r"},
        "status": "completed",
        "outcome": {"m": 1},
        "attempt": 2,
        "consumer": "ttp",
    }
    failed = messages.failed_event(job, JobFailed("no"), attempt=1, consumer="ttp")
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal.error"
    assert failed["error"]["correlation_id"] in failed["error"]["detail"]
    assert messages.parse_event(json.dumps(failed).encode()) == failed
    with pytest.raises(PoisonMessage):
        messages.parse_event(b'{"job_id": "j", "status": "maybe"}')


def test_processed_jobs_forget_the_least_recently_used() -> None:
    seen = messages.ProcessedJobs(capacity=2)
    seen.remember("a", {"job_id": "a"})
    seen.remember("b", {"job_id": "b"})
    assert seen.get("a") == {"job_id": "a"}  # "a" is now the most recent
    seen.remember("c", {"job_id": "c"})
    assert "b" not in seen and "a" in seen and "c" in seen and len(seen) == 2
    with pytest.raises(ValueError):
        messages.ProcessedJobs(capacity=0)
