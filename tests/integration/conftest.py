"""A real grid for the integration tests: a TTP and two Workers as separate processes, each on
its own loopback address, with three datasets per party. Stopped at the end even on failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from synergos import Driver
from synergos_local import datasets, topology

BLOCK = topology.loopback_block()
TTP_HOST = f"{BLOCK}.1"
WORKER_HOSTS = {"worker_1": f"{BLOCK}.2", "worker_2": f"{BLOCK}.3"}
REST, WS = 5000, 8020


@dataclass
class Grid:
    ttp: topology.Service
    workers: dict[str, topology.Service]
    workspace: Path

    def driver(self) -> Driver:
        return Driver(host=TTP_HOST, port=REST, show_progress=False)

    @property
    def ttp_outputs(self) -> Path:
        return self.workspace / "ttp" / "outputs"


@pytest.fixture(scope="session")
def grid(tmp_path_factory: pytest.TempPathFactory):
    workspace = tmp_path_factory.mktemp("grid")
    roots = datasets.prepare_penguins(workspace)
    datasets.prepare_sklearn(workspace, "breast_cancer")
    datasets.prepare_sklearn(workspace, "diabetes")
    datasets.prepare_digits_images(workspace, binary=True)
    datasets.prepare_text_reviews(workspace)
    logs = workspace / "logs"
    with topology.Topology() as topo:
        ttp = topo.add(topology.ttp("ttp", TTP_HOST, REST, workspace / "ttp", logs))
        workers = {
            name: topo.add(topology.worker(name, host, REST, WS, roots[name], workspace / name / "outputs", logs))
            for name, host in WORKER_HOSTS.items()
        }
        topo.wait()
        yield Grid(ttp, workers, workspace)
        for service in topo.services:  # every service must still be up: no request may crash one
            assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"


def register_parties(
    driver: Driver, collab: str, project: str, dataset: str, action: str = "classify", create_collaboration: bool = True
) -> None:
    if create_collaboration:
        driver.collaborations.create(collab)
    driver.projects.create(
        collab_id=collab, project_id=project, action=action, incentives={"tier_1": [], "tier_2": [], "tier_3": []}
    )
    for i, host in enumerate(WORKER_HOSTS.values(), start=1):
        pid = f"{collab}_participant_{i}"
        driver.participants.create(participant_id=pid)
        task = driver.registrations
        task.add_node(host=host, port=WS, f_port=REST)
        task.create(collab_id=collab, project_id=project, participant_id=pid, role="host" if i == 1 else "guest")
        driver.tags.create(
            collab_id=collab,
            project_id=project,
            participant_id=pid,
            train=[[dataset, "train"]],
            evaluate=[[dataset, "evaluate"]],
            predict=[[dataset, "predict"]],
        )
