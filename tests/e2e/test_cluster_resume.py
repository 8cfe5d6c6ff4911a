"""A Synergos Cluster whose TTP is killed (SIGKILL) mid-training: the job goes back to the queue,
the TTP started again shows it `interrupted` on its own `/ttp/status/jobs` until the MQ delivers it
again, then resumes it from the checkpoints it wrote on the shared volume (not from round 1) and
ends with the weights of an uninterrupted run of the same recipe. A second `models.create` of a
run whose training is queued or running answers that job and trains nothing twice. Real
RabbitMQ, Director, cluster TTP and Worker processes."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load_file

from synergos import Driver
from synergos_core.identity import Credentials
from synergos_local import datasets, topology
from synergos_local.broker import TestBroker

BLOCK = topology.loopback_block(ports=(5000, 8020))
DIRECTOR, TTP, W1, W2 = (f"{BLOCK}.{i}" for i in (1, 2, 3, 4))
IDENTITIES = topology.Identities(Path(tempfile.mkdtemp(prefix="synergos-resume-ca-")))
USER = IDENTITIES.user()
MLP = [
    {"activation": "relu", "is_input": True, "l_type": "Linear", "structure": {"in_features": 30, "out_features": 64}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"in_features": 64, "out_features": 1},
    },
]
ROUNDS = 6
RECIPE = {
    "rounds": ROUNDS,
    "epochs": 4,
    "batch_size": 16,
    "lr": 0.05,
    "optimizer": "SGD",
    "momentum": 0.9,
    "criterion": "BCELoss",
    "lr_scheduler": "CyclicLR",
    "base_lr": 0.005,
    "max_lr": 0.05,
    "step_size_up": 11,
    "patience": 0,
    "algorithm": "FedProx",
    "mu": 0.1,
}


class Cluster:
    def __init__(self, topo: topology.Topology, ttp: topology.Service, shared: Path) -> None:
        self.topo = topo
        self.ttp = ttp
        self.shared = shared
        self.http = httpx.Client(verify=Credentials.load(USER).client_context(), timeout=30.0)
        self.drivers: list[Driver] = []

    def driver(self) -> Driver:
        self.drivers.append(Driver(host=DIRECTOR, port=5000, show_progress=False, credentials=USER))
        return self.drivers[-1]

    def jobs(self, host: str, collab: str) -> list[dict[str, Any]]:
        """`/ttp/status/jobs` of the Director or of the cluster TTP."""
        answer = self.http.get(f"https://{host}:5000/ttp/status/jobs", params={"collab_id": collab})
        return answer.json()["data"]

    def trainings(self, host: str, collab: str, run_id: str = "r") -> list[dict[str, Any]]:
        return [j for j in self.jobs(host, collab) if j["kind"] == "training" and j["keys"]["run_id"] == run_id]

    def close(self) -> None:
        for client in (self.http, *self.drivers):
            client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("resume")
    roots, logs, shared = datasets.prepare_sklearn(workspace, "breast_cancer"), workspace / "logs", workspace / "shared"
    with TestBroker() as broker, topology.Topology(IDENTITIES) as topo:
        mq = (broker.address.host, broker.address.port)
        topo.add(topology.director("director", DIRECTOR, 5000, shared, logs, ["--queue", "rabbitmq", *map(str, mq)]))
        ttp = topo.add(topology.ttp("ttp_0", TTP, 5000, shared, logs, topology.cluster_flags(*mq, 0)))
        for name, host in (("worker_1", W1), ("worker_2", W2)):
            topo.add(topology.worker(name, host, 5000, 8020, roots[name], workspace / name / "out", logs))
        topo.wait()
        state = Cluster(topo, ttp, shared)
        try:
            yield state, mq
        finally:
            state.close()
        for service in topo.services:
            assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"
    shutil.rmtree(IDENTITIES.root, ignore_errors=True)


def _prepare(driver: Driver, mq: tuple[str, int], collab: str, runs: tuple[str, ...] = ("r",)) -> None:
    driver.collaborations.configure_mq(host=mq[0], port=mq[1])
    driver.collaborations.create(collab)
    driver.projects.create(collab_id=collab, project_id="p", action="classify")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MLP)
    for i, host in ((1, W1), (2, W2)):
        pid = f"{collab}_p{i}"
        driver.participants.create(participant_id=pid)
        registration = driver.registrations
        registration.add_node(host=host, port=8020, f_port=5000)
        registration.create(collab_id=collab, project_id="p", participant_id=pid, role="guest")
        driver.tags.create(
            collab_id=collab,
            project_id="p",
            participant_id=pid,
            train=[["breast_cancer", "train"]],
            evaluate=[["breast_cancer", "evaluate"]],
        )
    for run_id in runs:
        driver.runs.create(collab_id=collab, project_id="p", expt_id="e", run_id=run_id, **RECIPE)
    driver.alignments.create(collab_id=collab, project_id="p")
    driver.alignments.read(collab_id=collab, project_id="p", wait=True, timeout=120)


def _weights(cluster: Cluster, collab: str, run_id: str) -> dict[str, Any]:
    return load_file(cluster.shared / "outputs" / collab / "p" / "e" / run_id / "global_model.safetensors")


def test_a_cluster_ttp_killed_mid_training_resumes_the_redelivered_job_from_its_checkpoint(cluster):
    state, mq = cluster
    collab = "cluster_resume"
    driver = state.driver()
    _prepare(driver, mq, collab, runs=("reference", "r"))
    driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="reference")
    driver.models.read(collab_id=collab, project_id="p", expt_id="e", run_id="reference", wait=True, timeout=120)
    driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
    deadline = time.monotonic() + 120
    while True:  # kill the TTP once round 3 of the run is checkpointed
        jobs = state.trainings(TTP, collab)
        if jobs and (jobs[-1].get("rounds_checkpointed") or 0) >= 3:
            assert jobs[-1]["state"] == "running", f"the training ended before the kill could land: {jobs[-1]}"
            state.ttp.process.kill()
            state.ttp.process.wait(10)
            break
        assert time.monotonic() < deadline, f"round 3 of the run was never checkpointed: {jobs}"
        time.sleep(0.01)
    checkpointed = jobs[-1]["rounds_checkpointed"]
    state.ttp.start()
    state.ttp.wait_healthy(90)
    # until the MQ delivers it again the job shows interrupted; then it resumes and completes
    model = driver.models.read(collab_id=collab, project_id="p", expt_id="e", run_id="r", wait=True, timeout=120)
    (job,) = state.trainings(TTP, collab)  # the same job, taken up again
    assert job["state"] == "completed" and job["resumed_after"] >= checkpointed, job
    assert model["data"][0]["rounds_completed"] == ROUNDS
    assert len(model["data"][0]["global"]["loss_history"]["evaluate"]) == ROUNDS
    log = state.ttp.tail(400)
    assert f"job {job['job_id']} (training of {collab}/p/e/r) interrupted: the TTP stopped after round" in log
    assert f"resumes from its checkpoint of round {job['resumed_after']}" in log
    got, want = _weights(state, collab, "r"), _weights(state, collab, "reference")
    assert max(float((got[n].double() - want[n].double()).abs().max()) for n in want) <= 1e-6


def test_a_second_start_of_a_queued_or_running_training_answers_its_job_and_trains_once(cluster):
    state, mq = cluster
    collab = "cluster_twice"
    driver = state.driver()
    _prepare(driver, mq, collab)
    first = driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
    assert first["status"] == 202
    answers = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                state.driver().models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    (open_job,) = [j for j in state.trainings(DIRECTOR, collab) if j["state"] in ("queued", "running")]
    assert open_job["job_id"] == first["data"][0]["job_id"]  # the board names a job by the id the request answered
    for answer in answers:  # each answers the open job
        assert answer["status"] == 202 and [j["job_id"] for j in answer["data"]] == [open_job["job_id"]], answer
    driver.models.read(collab_id=collab, project_id="p", expt_id="e", run_id="r", wait=True, timeout=120)
    assert [j["state"] for j in state.trainings(DIRECTOR, collab)] == ["completed"]
    assert [j["state"] for j in state.trainings(TTP, collab)] == ["completed"]  # trained once
