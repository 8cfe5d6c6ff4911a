"""Synergos Cluster end to end against a real RabbitMQ (a dedicated test node): the Director,
two TTP grids, two parties with two nodes each, driven through the Driver."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
from synergos_mq.topology import DEAD_LETTER_QUEUE, JOBS_EXCHANGE

ROOT = Path(__file__).resolve().parents[2]
BLOCK = topology.loopback_block(ports=(5000, 5001, 8020, 8021))
DIRECTOR, TTP, W1, W2 = (f"{BLOCK}.{i}" for i in (1, 2, 3, 4))
BASE = f"https://{DIRECTOR}:5000"
# one collaboration CA for the module's services and its orchestrator user
IDENTITIES = topology.Identities(Path(tempfile.mkdtemp(prefix="synergos-cluster-ca-")))
USER = IDENTITIES.user()
HTTP = httpx.Client(verify=Credentials.load(USER).client_context(), timeout=60.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("cluster")
    roots = datasets.prepare_penguins(workspace)
    logs = workspace / "logs"
    with TestBroker() as broker, topology.Topology(IDENTITIES) as topo:
        mq_host, mq_port = broker.address.host, broker.address.port
        shared = workspace / "shared"
        director = topo.add(
            topology.director("director", DIRECTOR, 5000, shared, logs, ["--queue", "rabbitmq", mq_host, str(mq_port)])
        )
        ttps = [
            topo.add(topology.ttp(f"ttp_{g}", TTP, 5000 + g, shared, logs, topology.cluster_flags(mq_host, mq_port, g)))
            for g in (0, 1)
        ]
        for name, host in (("worker_1", W1), ("worker_2", W2)):
            for g in (0, 1):
                topo.add(
                    topology.worker(
                        f"{name}_{g}", host, 5000 + g, 8020 + g, roots[name], workspace / name / f"out_{g}", logs
                    )
                )
        topo.wait()
        yield {"broker": broker, "director": director, "ttps": ttps, "workspace": workspace, "mq": (mq_host, mq_port)}
        for service in topo.services:
            assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"
    HTTP.close()
    shutil.rmtree(IDENTITIES.root, ignore_errors=True)


def _wait_jobs(collab: str, timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = HTTP.get(f"{BASE}/ttp/status/jobs", params={"collab_id": collab}).json()["data"]
        if jobs and all(j["state"] in {"completed", "failed"} for j in jobs):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"jobs of {collab} did not finish: {jobs}")


def _completion_lines(director: topology.Service, kind: str = "VALIDATION") -> list[str]:
    return re.findall(rf"{kind} COMPLETED - \S+", director.log_path.read_text())


def _register(driver: Driver, collab: str, mq: tuple[str, int]) -> None:
    task = driver.collaborations
    task.configure_mq(host=mq[0], port=mq[1])
    task.create(collab)
    driver.projects.create(collab_id=collab, project_id="project_1", action="classify")
    driver.experiments.create(
        collab_id=collab,
        project_id="project_1",
        expt_id="experiment_1",
        model=[
            {
                "activation": "sigmoid",
                "is_input": True,
                "l_type": "Linear",
                "structure": {"bias": True, "in_features": 18, "out_features": 1},
            }
        ],
    )
    for i, host in ((1, W1), (2, W2)):
        pid = f"{collab}_p{i}"
        driver.participants.create(participant_id=pid)
        registration = driver.registrations
        for g in (0, 1):
            registration.add_node(host=host, port=8020 + g, f_port=5000 + g)
        registration.create(collab_id=collab, project_id="project_1", participant_id=pid, role="guest")
        driver.tags.create(
            collab_id=collab,
            project_id="project_1",
            participant_id=pid,
            train=[["train"]],
            evaluate=[["evaluate"]],
            predict=[["predict"]],
        )


def test_the_guides_cluster_script_runs_against_the_director(cluster):
    mq_host, mq_port = cluster["mq"]
    script = [
        sys.executable,
        str(ROOT / "examples" / "synergos_cluster.py"),
        "--host",
        DIRECTOR,
        "--port",
        "5000",
        "--mq",
        mq_host,
        "--mq_port",
        str(mq_port),
        "--worker",
        W1,
        "--worker",
        W2,
        "--n_samples",
        "3",
    ]
    result = subprocess.run(
        script,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "SYNERGOS_CREDENTIALS": str(USER)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = _wait_jobs("collaboration_1")
    assert all(j["state"] == "completed" for j in jobs), [j for j in jobs if j["state"] != "completed"]
    c = "/ttp/train/collaborations/collaboration_1/projects/project_1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        trials = HTTP.get(f"{BASE}{c}/models/experiment_1/optimizations").json().get("data") or []
        if len(trials) == 3 and all(t["validation"] for t in trials):
            break
        time.sleep(1)
    assert len(trials) == 3 and all(t["validation"] for t in trials), trials
    assert {t["rounds"] for t in trials} <= {1, 2}  # sampled from the guide's choice
    assert all(t["criterion"] == "MSELoss" and t["base_lr"] == 0.0005 for t in trials)  # fixed values pass through
    optim_lines = [line for line in _completion_lines(cluster["director"]) if "optim_run_" in line]
    assert sorted(optim_lines) == sorted(
        f"VALIDATION COMPLETED - project_1/experiment_1/{t['key']['run_id']}" for t in trials
    )
    model = HTTP.get(f"{BASE}{c}/models/experiment_1/run_1").json()["data"][0]
    assert model["rounds_completed"] == 10  # the script trains run_1 for 10 rounds
    validations = HTTP.get(
        f"{BASE}/ttp/evaluate/collaborations/collaboration_1/projects/project_1/validations/experiment_1/run_1"
    ).json()["data"]
    assert {v["key"]["participant_id"] for v in validations} == {"participant_1", "participant_2", "aggregate"}
    # the cluster TTP fitted the project's preprocessing on the parties' pooled train aggregates
    alignments = HTTP.get(f"{BASE}{c}/alignments").json()["data"]
    statistics = [a["preprocessing"]["statistics"] for a in alignments]
    assert len(alignments) == 2 and statistics[0] == statistics[1] and statistics[0]["rows"] > 0
    assert model["global"]["loss_history"]["evaluate_accuracy"]
    predictions = HTTP.get(
        f"{BASE}/ttp/evaluate/participants/participant_1/collaborations/collaboration_1/predictions"
    ).json()["data"]
    assert predictions and predictions[0]["predict"]["statistics"]["n_samples"] > 0


def test_four_trials_on_two_grids_each_archived_exactly_once(cluster):
    driver = Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER)
    collab = "trials"
    _register(driver, collab, cluster["mq"])
    driver.alignments.create(collab_id=collab, project_id="project_1")
    space = {
        "rounds": 1,
        "epochs": {"_type": "randint", "_value": [1, 3]},
        "lr": {"_type": "loguniform", "_value": [0.01, 0.5]},
        "mu": {"_type": "uniform", "_value": [0.0, 0.1]},
        "criterion": "BCELoss",
        "lr_scheduler": "none",
    }
    driver.optimizations.create(
        collab_id=collab,
        project_id="project_1",
        expt_id="experiment_1",
        search_space=space,
        metric="accuracy",
        optimize_mode="max",
        n_samples=4,
        tuner="OptunaSearch",
    )  # a searcher that learns from the reported metric
    deadline = time.monotonic() + 600
    trials: list = []
    while time.monotonic() < deadline:
        try:
            trials = driver.optimizations.read(collab_id=collab, project_id="project_1", expt_id="experiment_1")["data"]
        except Exception:  # noqa: BLE001 - the Director may not answer yet: poll again
            trials = []
        if len(trials) == 4 and all(t["validation"] for t in trials):
            break
        time.sleep(1)
    assert len(trials) == 4 and all(t["validation"] for t in trials)
    assert all(1 <= t["epochs"] < 3 and 0.01 <= t["lr"] <= 0.5 for t in trials)
    lines = [line for line in _completion_lines(cluster["director"]) if any(t["key"]["run_id"] in line for t in trials)]
    assert len(lines) == 4 and len(set(lines)) == 4  # one archive per trial, none twice
    # the best trial's registered model version is the champion, readable through the Driver
    best = max(trials, key=lambda t: sum(t["validation"]["accuracy"]) / len(t["validation"]["accuracy"]))
    deadline = time.monotonic() + 90
    champion = None
    while time.monotonic() < deadline and champion is None:
        try:
            champion = driver.optimizations.champion(collab_id=collab, project_id="project_1", expt_id="experiment_1")[
                "data"
            ]
        except Exception:  # noqa: BLE001 - no champion registered yet: poll again
            time.sleep(1)
    assert champion is not None and champion["run_id"] in {t["key"]["run_id"] for t in trials}
    best_score = sum(best["validation"]["accuracy"]) / len(best["validation"]["accuracy"])
    chosen = next(t for t in trials if t["key"]["run_id"] == champion["run_id"])
    assert sum(chosen["validation"]["accuracy"]) / len(chosen["validation"]["accuracy"]) == pytest.approx(best_score)
    # both grids trained trials
    trained_by = {
        ttp.name: sum(t["key"]["run_id"] in ttp.log_path.read_text() for t in trials) for ttp in cluster["ttps"]
    }
    assert all(count > 0 for count in trained_by.values()), trained_by


def test_a_poison_message_is_dead_lettered_with_its_reason_and_the_ttp_keeps_serving(cluster):
    broker = cluster["broker"]
    connection = pika.BlockingConnection(broker.address.parameters("poison-test"))
    channel = connection.channel()
    channel.basic_publish(JOBS_EXCHANGE, "train", b"{not json", pika.BasicProperties(delivery_mode=2))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and broker.queue_depth(DEAD_LETTER_QUEUE) == 0:
        time.sleep(0.5)
    _method, properties, body = channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=True)
    connection.close()
    assert body == b"{not json"
    assert "x-synergos-reason" in (properties.headers or {})
    # the TTPs still serve real work
    driver = Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER)
    _register(driver, "after_poison", cluster["mq"])
    driver.runs.create(
        collab_id="after_poison",
        project_id="project_1",
        expt_id="experiment_1",
        run_id="r",
        rounds=1,
        epochs=1,
        criterion="BCELoss",
        lr_scheduler="none",
    )
    driver.models.create(collab_id="after_poison", project_id="project_1", expt_id="experiment_1", run_id="r")
    assert all(j["state"] == "completed" for j in _wait_jobs("after_poison"))


def test_ttps_reconnect_when_the_broker_drops_them_and_finish_the_queue(cluster):
    driver = Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER)
    collab = "reconnect"
    _register(driver, collab, cluster["mq"])
    for i in range(4):
        driver.runs.create(
            collab_id=collab,
            project_id="project_1",
            expt_id="experiment_1",
            run_id=f"r{i}",
            rounds=2,
            epochs=20,
            criterion="BCELoss",
            lr_scheduler="none",
        )
    driver.models.create(collab_id=collab, project_id="project_1", expt_id="experiment_1")
    time.sleep(2)
    cluster["broker"].close_all_connections()
    jobs = _wait_jobs(collab)
    assert [j["state"] for j in jobs].count("completed") == len(jobs) == 5  # alignment and four trainings
    models = driver.models.read(collab_id=collab, project_id="project_1")["data"]
    assert sorted(m["key"]["run_id"] for m in models) == ["r0", "r1", "r2", "r3"]
    for ttp in cluster["ttps"]:
        assert HTTP.get(ttp.health_url).json()["data"]["status"] == "ok"
