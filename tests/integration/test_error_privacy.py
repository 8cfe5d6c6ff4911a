"""Internal failures against real processes: the client gets `internal.error`, the public text and
a correlation id, never the exception's text; the service's log has the rest under that id.

The grid's TTP has no internal failure a request can provoke on purpose, so a second TTP joins the
grid's workspace with a fault injected at start-up (a `sitecustomize` on its PYTHONPATH makes a
store read and `train_run` raise); its code is the real one, run as the real CLI.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from synergos_local import topology

from .conftest import BLOCK, REST, TTP_HOST, WORKER_HOSTS, WS, http

SECRET = "secret internal text: /srv/hospital/patients.csv"
FAULTY_HOST = f"{BLOCK}.4"
FAULTY = f"https://{FAULTY_HOST}:{REST}"
FAULTS = f"""
from synergos_contract.store import Store
from synergos_ttp import operations


def _broken(*args, **kwargs):
    raise RuntimeError({SECRET!r})


async def _train_run(*args, **kwargs):
    raise RuntimeError({SECRET!r})


Store.list_collaborations = _broken
operations.train_run = _train_run
"""
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]
CID = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def faulty_ttp(grid):
    faults = grid.workspace / "faults"
    faults.mkdir(exist_ok=True)
    (faults / "sitecustomize.py").write_text(FAULTS)
    service = topology.ttp("ttp_faulty", FAULTY_HOST, REST, grid.workspace / "ttp_faulty", grid.workspace / "logs")
    service.env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(faults), os.environ.get("PYTHONPATH")]))}
    with topology.Topology(grid.identities) as topo:
        topo.add(service)
        topo.wait()
        yield service
        assert service.process.poll() is None, f"the faulty TTP exited:\n{service.tail()}"


def _internal_error(response: httpx.Response) -> str:
    """Checks a 500 answer carries nothing internal; returns its correlation id."""
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "internal.error" and error["title"] == "Internal error"
    cid = error["correlation_id"]
    assert CID.fullmatch(cid) and response.headers["x-correlation-id"] == cid and cid in error["detail"]
    assert SECRET not in response.text and "RuntimeError" not in response.text and "Traceback" not in response.text
    return cid


def _logged(log_path: Path, cid: str, timeout: float = 10.0) -> str:
    """The log lines from the one naming `cid` on (its traceback follows it)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        if cid in text or time.monotonic() > deadline:
            return text[text.find(cid) :] if cid in text else ""
        time.sleep(0.1)


def test_an_internal_failure_answers_500_with_an_id_the_log_explains(faulty_ttp):
    response = http().get(f"{FAULTY}/ttp/connect/collaborations")
    cid = _internal_error(response)
    logged = _logged(faulty_ttp.log_path, cid)
    assert "RuntimeError" in logged and SECRET in logged  # the traceback, under the id the client got
    # and the service is still up and answering
    assert http().get(f"{FAULTY}/health").status_code == 200


def test_a_training_that_fails_internally_shows_an_id_not_its_text_on_the_job_board(faulty_ttp):
    c = f"{FAULTY}/ttp/connect/collaborations"
    p = f"{c}/privacy/projects"
    for url, body in [
        (c, {"collab_id": "privacy"}),
        (p, {"project_id": "p", "action": "classify", "incentives": {}}),
        (f"{p}/p/experiments", {"expt_id": "e", "model": MODEL}),
        (f"{p}/p/experiments/e/runs", {"run_id": "r", "rounds": 1, "criterion": "BCELoss", "lr_scheduler": "none"}),
    ]:
        assert http().post(url, json=body).status_code == 201
    for i, host in enumerate(WORKER_HOSTS.values(), start=1):
        pid = f"privacy_participant_{i}"
        assert http().post(f"{FAULTY}/ttp/connect/participants", json={"id": pid}).status_code == 201
        registration = f"{p}/p/participants/{pid}/registration"
        node = {"host": host, "port": WS, "f_port": REST}
        assert (
            http()
            .post(registration, json={"role": "host" if i == 1 else "guest", "n_count": 1, "node_0": node})
            .status_code
            == 201
        )
        assert http().post(f"{registration}/tags", json={"train": [["breast_cancer", "train"]]}).status_code == 201

    cid = _internal_error(
        http().post(
            f"{FAULTY}/ttp/train/collaborations/privacy/projects/p/models", json={"auto_align": False}, timeout=60
        )
    )
    jobs = http().get(f"{FAULTY}/ttp/status/jobs", params={"collab_id": "privacy"})
    (job,) = [j for j in jobs.json()["data"] if j["kind"] == "training"]
    assert job["state"] == "failed" and cid in job["detail"]  # the same id as the answer's
    assert SECRET not in jobs.text and "RuntimeError" not in jobs.text
    assert SECRET in _logged(faulty_ttp.log_path, cid)


def test_the_grids_own_errors_carry_an_id_its_log_names(grid):
    # a 5xx the grid's TTP raises itself (a registered node nobody listens on) is logged under its id
    ttp = f"https://{TTP_HOST}:{REST}"
    c = f"{ttp}/ttp/connect/collaborations"
    p = f"{c}/privacy_grid/projects"
    assert http().post(c, json={"collab_id": "privacy_grid"}).status_code == 201
    assert http().post(p, json={"project_id": "p", "action": "classify", "incentives": {}}).status_code == 201
    assert http().post(f"{ttp}/ttp/connect/participants", json={"id": "privacy_grid_u"}).status_code == 201
    registration = f"{p}/p/participants/privacy_grid_u/registration"
    node = {"host": f"{BLOCK}.9", "port": WS, "f_port": REST}
    assert http().post(registration, json={"role": "host", "n_count": 1, "node_0": node}).status_code == 201
    assert http().post(f"{registration}/tags", json={"train": [["breast_cancer", "train"]]}).status_code == 201
    response = http().post(f"{ttp}/ttp/train/collaborations/privacy_grid/projects/p/alignments", json={}, timeout=60)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "worker.unreachable" and CID.fullmatch(error["correlation_id"])
    assert response.headers["x-correlation-id"] == error["correlation_id"]
    assert "worker.unreachable" in _logged(grid.ttp.log_path, error["correlation_id"])
    # a 404 of an unknown route gets its id too
    missing = http().get(f"{ttp}/ttp/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "route.not_found"
    assert CID.fullmatch(missing.json()["error"]["correlation_id"])
