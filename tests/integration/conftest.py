"""A real grid for the integration tests: a TTP and two Workers as separate processes, each on
its own loopback address, with three datasets per party, every service with its own identity of
one collaboration CA (TLS both ways). Stopped at the end even on failure."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from synergos import Driver
from synergos_core.identity import Credentials
from synergos_local import datasets, topology

BLOCK = topology.loopback_block()
TTP_HOST = f"{BLOCK}.1"
WORKER_HOSTS = {"worker_1": f"{BLOCK}.2", "worker_2": f"{BLOCK}.3"}
REST, WS = 5000, 8020
# the session's collaboration CA: every service of the grid, and the users below, are issued from it
IDENTITIES = topology.Identities(Path(tempfile.mkdtemp(prefix="synergos-test-ca-")))
_CLIENTS: dict[str, httpx.Client] = {}


def tls(name: str = "orchestrator", role: str = "orchestrator") -> ssl.SSLContext:
    """A client TLS context holding `name`'s identity (issued on first use) and trusting the CA."""
    return Credentials.load(IDENTITIES.folder(name, role)).client_context()


def http(name: str = "orchestrator", role: str = "orchestrator") -> httpx.Client:
    """A client (kept for the session) that presents `name`'s certificate."""
    if name not in _CLIENTS:
        _CLIENTS[name] = httpx.Client(verify=tls(name, role), timeout=30.0)
    return _CLIENTS[name]


@dataclass
class Grid:
    ttp: topology.Service
    workers: dict[str, topology.Service]
    workspace: Path
    identities: topology.Identities

    def driver(self, user: str = "orchestrator") -> Driver:
        return Driver(host=TTP_HOST, port=REST, show_progress=False, credentials=self.identities.user(user))

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
    identities = IDENTITIES
    with topology.Topology(identities) as topo:
        ttp = topo.add(topology.ttp("ttp", TTP_HOST, REST, workspace / "ttp", logs))
        workers = {
            name: topo.add(topology.worker(name, host, REST, WS, roots[name], workspace / name / "outputs", logs))
            for name, host in WORKER_HOSTS.items()
        }
        topo.wait()
        yield Grid(ttp, workers, workspace, identities)
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()
        for service in topo.services:  # every service must still be up: no request may crash one
            assert service.process.poll() is None, f"{service.name} exited:\n{service.tail()}"
    shutil.rmtree(IDENTITIES.root, ignore_errors=True)


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
