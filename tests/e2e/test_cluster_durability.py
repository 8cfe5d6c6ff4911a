"""Synergos Cluster when things go wrong, against real processes and a real RabbitMQ: the Director
killed while jobs wait for their dependencies (they are journaled, shown, republished and
completed), poison messages (dead-lettered on the first delivery, no reconnect storm), and a grid
that cannot be reached (retried with backoff through the broker, then dead-lettered and shown
failed). The TTP and Director retry after 0.5 s and 1 s here (SYNERGOS_MQ_RETRY_*)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pika
import pytest

from synergos import Driver
from synergos_core.identity import Credentials
from synergos_local import datasets, topology
from synergos_local.broker import TestBroker
from synergos_mq.messages import ATTEMPTS_HEADER, ORIGIN_HEADER, REASON_HEADER
from synergos_mq.topology import DEAD_LETTER_QUEUE, JOBS_EXCHANGE

BLOCK = topology.loopback_block(ports=(5000, 5001, 8020))
DIRECTOR, TTP, W1, W2, NOBODY = (f"{BLOCK}.{i}" for i in (1, 2, 3, 4, 9))
BASE = f"https://{DIRECTOR}:5000"
IDENTITIES = topology.Identities(Path(tempfile.mkdtemp(prefix="synergos-durable-ca-")))
USER = IDENTITIES.user()
HTTP = httpx.Client(verify=Credentials.load(USER).client_context(), timeout=60.0)
FAST_RETRY = {"SYNERGOS_MQ_RETRIES": "2", "SYNERGOS_MQ_RETRY_DELAY_S": "0.5", "SYNERGOS_MQ_RETRY_FACTOR": "2"}
MODEL = [
    {"activation": "sigmoid", "is_input": True, "l_type": "Linear", "structure": {"in_features": 18, "out_features": 1}}
]
RUN = {"rounds": 1, "epochs": 1, "criterion": "BCELoss", "lr_scheduler": "none"}
DRIVERS: list[Driver] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("durable")
    roots, logs, shared = datasets.prepare_penguins(workspace), workspace / "logs", workspace / "shared"
    with TestBroker() as broker, topology.Topology(IDENTITIES) as topo:
        mq = (broker.address.host, broker.address.port)
        director = topology.director("director", DIRECTOR, 5000, shared, logs, ["--queue", "rabbitmq", *map(str, mq)])
        ttp = topology.ttp("ttp_0", TTP, 5000, shared, logs, topology.cluster_flags(*mq, 0))
        director.env = ttp.env = dict(FAST_RETRY)
        topo.add(director)
        topo.add(ttp)
        for name, host in (("worker_1", W1), ("worker_2", W2)):
            topo.add(topology.worker(name, host, 5000, 8020, roots[name], workspace / name / "out", logs))
        topo.wait()
        yield {"broker": broker, "director": director, "ttp": ttp, "mq": mq}
        for client in (HTTP, *DRIVERS):  # no kept-alive connection for the services to wait on as they stop
            client.close()
        for service in topo.services:
            assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"
    shutil.rmtree(IDENTITIES.root, ignore_errors=True)


def _driver() -> Driver:
    DRIVERS.append(Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER))
    return DRIVERS[-1]


def _register(collab: str, mq: tuple[str, int], second_node: str = W2) -> Driver:
    driver = _driver()
    driver.collaborations.configure_mq(host=mq[0], port=mq[1])
    driver.collaborations.create(collab)
    driver.projects.create(collab_id=collab, project_id="p", action="classify")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MODEL)
    for i, host in ((1, W1), (2, second_node)):
        pid = f"{collab}_p{i}"
        driver.participants.create(participant_id=pid)
        registration = driver.registrations
        registration.add_node(host=host, port=8020, f_port=5000)
        registration.create(collab_id=collab, project_id="p", participant_id=pid, role="guest")
        driver.tags.create(
            collab_id=collab, project_id="p", participant_id=pid, train=[["train"]], evaluate=[["evaluate"]]
        )
    driver.runs.create(collab_id=collab, project_id="p", expt_id="e", run_id="r", **RUN)
    return driver


def _jobs(collab: str) -> list[dict]:
    return HTTP.get(f"{BASE}/ttp/status/jobs", params={"collab_id": collab}).json()["data"]


def _wait_jobs(collab: str, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _jobs(collab)
        if jobs and all(j["state"] in {"completed", "failed"} for j in jobs):
            return jobs
        time.sleep(0.3)
    raise AssertionError(f"jobs of {collab} did not finish: {jobs}")


def _restart(service: topology.Service, *, kill: bool) -> None:
    """Stop `service` (SIGKILL: a crash, nothing flushed) and start it again with the same flags."""
    assert service.process is not None
    if kill:
        service.process.kill()
        service.process.wait(10)
    else:
        service.stop()
    service.start()
    service.wait_healthy(90)


def _dead_letters(broker: TestBroker, origin: str) -> list[tuple[dict, bytes]]:
    connection = pika.BlockingConnection(broker.address.parameters("durable-test-dead"))
    kept, taken = [], []
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
            if method is None:
                break
            (kept if props.headers.get(ORIGIN_HEADER) == origin else taken).append((dict(props.headers), body))
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    return kept


def _reconnects(service: topology.Service) -> int:
    log = service.log_path.read_text()
    return len(re.findall(r"connection to \S+ lost|\(reconnect \d+\)", log))


def test_jobs_waiting_on_a_dependency_survive_director_crashes_and_complete(cluster) -> None:
    director, ttp = cluster["director"], cluster["ttp"]
    ttp.stop()  # nobody takes the alignment yet: the training and validation must wait for it
    try:
        driver = _register("durable", cluster["mq"])
        driver.models.create(collab_id="durable", project_id="p", expt_id="e", run_id="r")  # aligns first
        driver.validations.create(collab_id="durable", project_id="p", expt_id="e", run_id="r")
        before = _jobs("durable")
        assert [(j["kind"], j["state"]) for j in before] == [
            ("alignment", "queued"),
            ("training", "queued"),
            ("validation", "queued"),
        ]
        align_id = before[0]["detail"].removeprefix("job ")
        assert before[1]["detail"].endswith(f"waiting for job {align_id}")

        _restart(director, kill=True)
        after = _jobs("durable")  # the board is not empty: every job is there, still waiting
        assert [(j["kind"], j["state"], j["detail"]) for j in after] == [
            (j["kind"], j["state"], j["detail"]) for j in before
        ]
        health = HTTP.get(director.health_url).json()["data"]
        assert health["jobs"] == {"open": 3, "waiting": 2}
        assert "job journal: 3 jobs restored (3 open, 0 of them to publish now)" in director.log_path.read_text()

        # down again; meanwhile the TTP runs the alignment and reports it to nobody
        director.process.kill()
        director.process.wait(10)
        ttp.start()
        ttp.wait_healthy(90)
        deadline = time.monotonic() + 60
        while HTTP.get(ttp.health_url).json()["data"]["jobs_done"] < 1:
            assert time.monotonic() < deadline, "the TTP never ran the alignment"
            time.sleep(0.3)
    finally:
        if director.process.poll() is not None:
            director.start()
            director.wait_healthy(90)
        if ttp.process.poll() is not None:
            ttp.start()
            ttp.wait_healthy(90)
    # back up, the Director archives the alignment, then publishes what waited for it, in order
    jobs = _wait_jobs("durable")
    assert [(j["kind"], j["state"]) for j in jobs] == [
        ("alignment", "completed"),
        ("training", "completed"),
        ("validation", "completed"),
    ]
    validations = driver.validations.read(collab_id="durable", project_id="p", expt_id="e", run_id="r")["data"]
    assert {v["key"]["participant_id"] for v in validations} == {"durable_p1", "durable_p2", "aggregate"}


def test_poison_messages_are_dead_lettered_on_the_first_delivery_and_the_ttp_keeps_serving(cluster) -> None:
    broker, ttp = cluster["broker"], cluster["ttp"]
    reconnects = _reconnects(ttp)
    poison = {
        b"[" * 100_000: "PoisonMessage: body is JSON nested deeper than 64 levels",
        b"{not json": "PoisonMessage: body is not JSON (JSONDecodeError)",
        json.dumps({"job_id": "misshapen", "process": "train", "keys": {"run_id": "r"}, "parameters": {}}).encode(): (
            "PoisonMessage: the job cannot run: grids: Field required"
        ),
    }
    connection = pika.BlockingConnection(broker.address.parameters("durable-test-poison"))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in poison:
            channel.basic_publish(JOBS_EXCHANGE, "train", body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()
    deadline = time.monotonic() + 30
    dead: list[tuple[dict, bytes]] = []
    while len(dead) < 3 and time.monotonic() < deadline:
        dead += _dead_letters(broker, "train")
        time.sleep(0.3)
    assert {body: headers[REASON_HEADER] for headers, body in dead} == poison
    assert all(headers[ATTEMPTS_HEADER] == 1 for headers, _ in dead)  # the first delivery, not after retries
    time.sleep(2)  # a storm reconnected every 0.5 s
    assert _reconnects(ttp) == reconnects and HTTP.get(ttp.health_url).json()["data"]["mq"]["reconnects"] == 0
    driver = _register("after_poison", cluster["mq"])
    driver.models.create(collab_id="after_poison", project_id="p", expt_id="e", run_id="r")
    assert [j["state"] for j in _wait_jobs("after_poison")] == ["completed", "completed"]


def test_a_grid_that_cannot_be_reached_is_retried_with_backoff_then_dead_lettered_and_shown_failed(cluster) -> None:
    broker, director, ttp = cluster["broker"], cluster["director"], cluster["ttp"]
    _dead_letters(broker, "preprocess")  # nothing of earlier tests
    driver = _register("unreachable", cluster["mq"], second_node=NOBODY)  # party 2's node: nothing listens
    started = time.monotonic()
    driver.models.create(collab_id="unreachable", project_id="p", expt_id="e", run_id="r")
    saw_retrying = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = _jobs("unreachable")
        saw_retrying |= any("retrying in" in (j["detail"] or "") for j in jobs)
        if jobs and all(j["state"] == "failed" for j in jobs):
            break
        time.sleep(0.1)
    took = time.monotonic() - started
    alignment, training = _jobs("unreachable")
    assert alignment["state"] == training["state"] == "failed"
    assert f"unreachable_p2's node at {NOBODY}:5000 is unreachable" in alignment["detail"]
    assert alignment["detail"].endswith("(gave up after 3 attempts)")
    assert training["detail"].startswith("a job it depended on failed")
    assert saw_retrying  # the board said so while it waited
    assert took >= 1.5  # 0.5 s, then 1 s between the three attempts
    [(headers, body)] = _dead_letters(broker, "preprocess")
    assert headers[ATTEMPTS_HEADER] == 3 and "is unreachable" in headers[REASON_HEADER]
    assert json.loads(body)["keys"] == {"collab_id": "unreachable", "project_id": "p"}
    log = ttp.log_path.read_text()
    assert re.search(r"failed on attempt 1 of 3 \(UpstreamError: .*\); retrying in 0\.5 s", log)
    assert re.search(r"failed on attempt 2 of 3 \(UpstreamError: .*\); retrying in 1 s", log)
    assert "failed for good on attempt 3" in log
    assert len(re.findall(r"PREPROCESS RETRYING - unreachable/p", director.log_path.read_text())) == 2
