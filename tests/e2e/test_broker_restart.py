"""Synergos Cluster end to end when the RabbitMQ broker restarts in the middle of a hyper-parameter
optimization: the node (a dedicated test node) is stopped and started again on the same port with
its data kept while the first trial trains; the Director and the TTPs reconnect, and the
optimization completes with every trial trained, validated and archived once."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from synergos import Driver
from synergos_core.identity import Credentials
from synergos_local import datasets, topology
from synergos_local.broker import TestBroker

BLOCK = topology.loopback_block(ports=(5000, 5001, 8020, 8021))
DIRECTOR, TTP, W1, W2 = (f"{BLOCK}.{i}" for i in (1, 2, 3, 4))
BASE = f"https://{DIRECTOR}:5000"
IDENTITIES = topology.Identities(Path(tempfile.mkdtemp(prefix="synergos-restart-ca-")))
USER = IDENTITIES.user()
HTTP = httpx.Client(verify=Credentials.load(USER).client_context(), timeout=60.0)
FAST_RETRY = {"SYNERGOS_MQ_RETRY_DELAY_S": "0.5", "SYNERGOS_MQ_RETRY_FACTOR": "2"}
MODEL = [
    {"activation": "sigmoid", "is_input": True, "l_type": "Linear", "structure": {"in_features": 18, "out_features": 1}}
]
COLLAB, PROJECT, EXPT = "restart", "p", "e"
DRIVERS: list[Driver] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("broker_restart")
    roots, logs, shared = datasets.prepare_penguins(workspace), workspace / "logs", workspace / "shared"
    try:
        with TestBroker() as broker, topology.Topology(IDENTITIES) as topo:
            mq = (broker.address.host, broker.address.port)
            director = topology.director(
                "director", DIRECTOR, 5000, shared, logs, ["--queue", "rabbitmq", *map(str, mq)]
            )
            director.env = dict(FAST_RETRY)
            topo.add(director)
            ttps = []
            for g in (0, 1):
                ttp = topology.ttp(f"ttp_{g}", TTP, 5000 + g, shared, logs, topology.cluster_flags(*mq, g))
                ttp.env = dict(FAST_RETRY)
                ttps.append(topo.add(ttp))
            for name, host in (("worker_1", W1), ("worker_2", W2)):
                for g in (0, 1):
                    topo.add(
                        topology.worker(
                            f"{name}_{g}", host, 5000 + g, 8020 + g, roots[name], workspace / name / f"out_{g}", logs
                        )
                    )
            topo.wait()
            yield {"broker": broker, "director": director, "ttps": ttps, "mq": mq}
            for client in (HTTP, *DRIVERS):  # no kept-alive connection for the services to wait on as they stop
                client.close()
            for service in topo.services:
                assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"
    finally:
        HTTP.close()
        shutil.rmtree(IDENTITIES.root, ignore_errors=True)


def _driver() -> Driver:
    DRIVERS.append(Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER))
    return DRIVERS[-1]


def _register(driver: Driver, mq: tuple[str, int]) -> None:
    driver.collaborations.configure_mq(host=mq[0], port=mq[1])
    driver.collaborations.create(COLLAB)
    driver.projects.create(collab_id=COLLAB, project_id=PROJECT, action="classify")
    driver.experiments.create(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT, model=MODEL)
    for i, host in ((1, W1), (2, W2)):
        pid = f"{COLLAB}_p{i}"
        driver.participants.create(participant_id=pid)
        registration = driver.registrations
        for g in (0, 1):
            registration.add_node(host=host, port=8020 + g, f_port=5000 + g)
        registration.create(collab_id=COLLAB, project_id=PROJECT, participant_id=pid, role="guest")
        driver.tags.create(
            collab_id=COLLAB, project_id=PROJECT, participant_id=pid, train=[["train"]], evaluate=[["evaluate"]]
        )


def _jobs(base: str = BASE) -> list[dict]:
    return HTTP.get(f"{base}/ttp/status/jobs", params={"collab_id": COLLAB}).json()["data"]


def _trial_training_running(job: dict) -> bool:
    return job["kind"] == "training" and job["state"] == "running" and "optim_run_" in job["keys"].get("run_id", "")


def _trials(driver: Driver) -> list[dict]:
    try:
        return driver.optimizations.read(collab_id=COLLAB, project_id=PROJECT, expt_id=EXPT)["data"] or []
    except Exception:  # noqa: BLE001 - the Director may not answer yet: poll again
        return []


def test_an_optimization_survives_a_broker_restart_while_its_first_trial_trains(cluster) -> None:
    broker, director, ttps = cluster["broker"], cluster["director"], cluster["ttps"]
    driver = _driver()
    _register(driver, cluster["mq"])
    driver.alignments.create(collab_id=COLLAB, project_id=PROJECT)
    space = {
        "rounds": {"_type": "choice", "_value": [1, 2]},
        "epochs": {"_type": "randint", "_value": [20, 30]},  # long enough to still be training at the restart
        "lr": {"_type": "loguniform", "_value": [0.01, 0.5]},
        "criterion": "BCELoss",
        "lr_scheduler": "none",
    }
    driver.optimizations.create(
        collab_id=COLLAB,
        project_id=PROJECT,
        expt_id=EXPT,
        search_space=space,
        metric="accuracy",
        optimize_mode="max",
        n_samples=2,
    )

    # The Director's board shows a published trial training as queued until a TTP reports it done;
    # the TTP that took it shows it running on its own board.
    deadline = time.monotonic() + 60
    running = None
    while running is None:
        assert time.monotonic() < deadline, f"no trial's training ever ran: {_jobs()}"
        queued = [j for j in _jobs() if j["kind"] == "training" and j["state"] == "queued"]
        if queued:
            running = next(
                (j for g in (0, 1) for j in _jobs(f"https://{TTP}:{5000 + g}") if _trial_training_running(j)), None
            )
        time.sleep(0.1)
    broker.restart(downtime=1.0)

    deadline = time.monotonic() + 90
    trials: list[dict] = []
    while time.monotonic() < deadline:
        trials = _trials(driver)
        if len(trials) == 2 and all(t["validation"] for t in trials):
            break
        time.sleep(0.5)
    assert len(trials) == 2 and all(t["validation"] for t in trials), (trials, _jobs(), director.tail(60))
    run_ids = {t["key"]["run_id"] for t in trials}
    assert running["keys"]["run_id"] in run_ids

    # the board settles: nothing left queued or running, every trial's training and validation completed
    deadline = time.monotonic() + 30
    jobs = _jobs()
    while time.monotonic() < deadline and any(j["state"] in {"queued", "running"} for j in jobs):
        time.sleep(0.3)
        jobs = _jobs()
    assert not [j for j in jobs if j["state"] in {"queued", "running"}], jobs
    for run_id in run_ids:
        for kind in ("training", "validation"):
            states = [j["state"] for j in jobs if j["kind"] == kind and j["keys"].get("run_id") == run_id]
            assert states and all(s == "completed" for s in states), (run_id, kind, jobs)

    # each trial archived once, however often the broker redelivered its jobs
    log = director.log_path.read_text()
    for kind in ("TRAINING", "VALIDATION"):
        lines = re.findall(rf"{kind} COMPLETED - \S+", log)
        for run_id in run_ids:
            assert sum(line.endswith(f"/{run_id}") for line in lines) == 1, (kind, run_id, lines)

    # everyone lost the broker, came back through the restart and is healthy
    for service in (director, *ttps):
        assert re.search(r"connection to \S+ lost|\(reconnect \d+\)", service.log_path.read_text()), service.name
        assert service.process.poll() is None, service.tail()
        assert HTTP.get(service.health_url).json()["data"]["status"] == "ok", service.name
