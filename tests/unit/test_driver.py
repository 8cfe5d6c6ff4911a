"""The Driver SDK against an in-memory server (httpx.MockTransport): routes, bodies, errors, progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    import synergos_driver
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    import synergos_driver

from synergos_driver import (
    Conflict,
    ConnectionFailed,
    Driver,
    Forbidden,
    JobFailed,
    NotFound,
    RequestInvalid,
    ResponseError,
    ServerError,
    SynergosError,
    WaitTimeout,
    _progress,
    _session,
    _wait,
)

HOST, PORT = "0.0.0.0", 15000
C, P, E, R = "collaboration_1", "project_1", "experiment_1", "run_1"
STATUS = "/ttp/status/jobs"

Handler = Callable[[httpx.Request], httpx.Response]


def envelope(request: httpx.Request, data: Any = None, status: int = 200) -> httpx.Response:
    body = {
        "apiVersion": "0.1.0",
        "success": 1,
        "status": status,
        "method": "test." + request.method.lower(),
        "params": {},
        "data": data,
    }
    return httpx.Response(status, json=body)


def error(status: int, code: str, detail: str, fields: list | None = None) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        err = {"code": code, "title": code.split(".")[-1], "detail": detail}
        if fields is not None:
            err["fields"] = fields
        body = {
            "apiVersion": "0.1.0",
            "success": 0,
            "status": status,
            "method": "x",
            "params": {},
            "data": None,
            "error": err,
        }
        return httpx.Response(status, json=body)

    return answer


class FakeServer:
    """Records every request; answers from `routes[(method, path)]`, else echoes the body as data.
    The job-status route answers 404 unless a test sets it (so progress stays silent)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Handler] = {("GET", STATUS): error(404, "route.not_found", "no route")}
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        if handler is not None:
            return handler(request)
        data = json.loads(request.content) if request.content else []
        return envelope(request, data, 201 if request.method == "POST" else 200)

    def calls(self, *, status: bool = False) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests if status or r.url.path != STATUS]

    def last(self) -> httpx.Request:
        return [r for r in self.requests if r.url.path != STATUS][-1]

    def last_body(self) -> dict[str, Any]:
        return json.loads(self.last().content)


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_session.Session, "backoff", 0.0)
    monkeypatch.setattr(_progress.JobProgress, "interval", 0.05)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def driver(server: FakeServer) -> Driver:
    return Driver(HOST, PORT, transport=httpx.MockTransport(server))


# ---- the Driver object ----


def test_address_and_fresh_tasks(driver: Driver) -> None:
    assert driver.address == "http://0.0.0.0:15000"
    assert Driver("example.org", 443, is_secured=True).address == "https://example.org:443"
    assert Driver("::1", 5000).address == "http://[::1]:5000"
    names = [
        "collaborations",
        "projects",
        "experiments",
        "runs",
        "participants",
        "registrations",
        "tags",
        "alignments",
        "models",
        "optimizations",
        "validations",
        "predictions",
    ]
    for name in names:
        assert getattr(driver, name) is not getattr(driver, name)
        assert getattr(driver, name).address == driver.address


def test_every_call_returns_the_envelope(driver: Driver) -> None:
    result = driver.collaborations.read_all()
    assert set(result) >= {"apiVersion", "success", "status", "method", "params", "data"}
    assert result["success"] == 1


# ---- the deployment guide's script, unchanged apart from host and port ----

SEARCH_SPACE = {
    "algorithm": "FedProx",
    "rounds": {"_type": "choice", "_value": [1, 2]},
    "epochs": 1,
    "lr": 0.001,
    "weight_decay": 0.0,
    "lr_decay": 0.1,
    "mu": 0.1,
    "l1_lambda": 0.0,
    "l2_lambda": 0.0,
    "optimizer": "SGD",
    "criterion": "MSELoss",
    "lr_scheduler": "CyclicLR",
    "delta": 0.0,
    "patience": 10,
    "seed": 42,
    "is_snn": False,
    "precision_fractional": 5,
    "base_lr": 0.0005,
    "max_lr": 0.005,
}


def run_guide_script(driver: Driver) -> None:
    collab_task = driver.collaborations
    collab_task.configure_mq(host="172.19.152.151", port=5672)
    collab_task.create("collaboration_1")
    driver.projects.create(
        collab_id="collaboration_1",
        project_id="project_1",
        action="classify",
        incentives={"tier_1": [], "tier_2": [], "tier_3": []},
    )
    driver.experiments.create(
        collab_id="collaboration_1",
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
    driver.runs.create(
        collab_id="collaboration_1",
        project_id="project_1",
        expt_id="experiment_1",
        run_id="run_1",
        rounds=2,
        epochs=1,
        base_lr=0.0005,
        max_lr=0.005,
        criterion="L1Loss",
        optimizer="SGD",
        lr_scheduler="CyclicLR",
    )
    driver.participants.create(participant_id="participant_1")
    driver.participants.create(participant_id="participant_2")
    registration_task = driver.registrations
    registration_task.add_node(host="172.19.152.154", port=8020, f_port=5000, log_msgs=True, verbose=True)
    registration_task.create(
        collab_id="collaboration_1", project_id="project_1", participant_id="participant_1", role="guest"
    )
    registration_task.add_node(host="172.19.152.155", port=8020, f_port=5000, log_msgs=True, verbose=True)
    registration_task.create(
        collab_id="collaboration_1", project_id="project_1", participant_id="participant_2", role="host"
    )
    driver.tags.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id="participant_1",
        train=[["train"]],
        evaluate=[["evaluate"]],
        predict=[["predict"]],
    )
    driver.tags.create(
        collab_id="collaboration_1",
        project_id="project_1",
        participant_id="participant_2",
        train=[["train"]],
        evaluate=[["evaluate"]],
        predict=[["predict"]],
    )
    driver.alignments.create(collab_id="collaboration_1", project_id="project_1")
    driver.optimizations.create(
        collab_id="collaboration_1",
        project_id="project_1",
        expt_id="experiment_1",
        tuner=None,
        metric=None,
        optimize_mode=None,
        search_space=SEARCH_SPACE,
        n_samples=3,
    )
    driver.models.create(collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1")
    driver.validations.create(
        collab_id="collaboration_1", project_id="project_1", expt_id="experiment_1", run_id="run_1"
    )
    driver.predictions.create(
        collab_id="collaboration_1",
        tags={"project_1": [["predict"]]},
        participant_id="participant_1",
        project_id="project_1",
        expt_id="experiment_1",
        run_id="run_1",
    )


def test_guide_script_routes_and_bodies(server: FakeServer, driver: Driver) -> None:
    reg = "/ttp/connect/collaborations/collaboration_1/projects/project_1/participants/{}/registration"
    server.routes[("DELETE", reg.format("participant_1"))] = error(404, "registration.not_found", "none")
    run_guide_script(driver)
    proj = "/ttp/connect/collaborations/collaboration_1/projects/project_1"
    train = "/ttp/train/collaborations/collaboration_1/projects/project_1"
    assert server.calls() == [
        ("POST", "/ttp/connect/collaborations"),
        ("POST", "/ttp/connect/collaborations/collaboration_1/projects"),
        ("POST", f"{proj}/experiments"),
        ("POST", f"{proj}/experiments/experiment_1/runs"),
        ("POST", "/ttp/connect/participants"),
        ("POST", "/ttp/connect/participants"),
        ("DELETE", reg.format("participant_1")),
        ("POST", reg.format("participant_1")),
        ("DELETE", reg.format("participant_2")),
        ("POST", reg.format("participant_2")),
        ("POST", reg.format("participant_1") + "/tags"),
        ("POST", reg.format("participant_2") + "/tags"),
        ("POST", f"{train}/alignments"),
        ("POST", f"{train}/models/experiment_1/optimizations"),
        ("POST", f"{train}/models/experiment_1/run_1"),
        ("POST", "/ttp/evaluate/collaborations/collaboration_1/projects/project_1/validations/experiment_1/run_1"),
        (
            "POST",
            "/ttp/evaluate/participants/participant_1/collaborations/collaboration_1/predictions"
            "/project_1/experiment_1/run_1",
        ),
    ]
    bodies = {(r.method, r.url.path): json.loads(r.content) for r in server.requests if r.method == "POST"}
    assert bodies[("POST", "/ttp/connect/collaborations")] == {
        "collab_id": "collaboration_1",
        "mq": {"host": "172.19.152.151", "ports": {"main": 5672, "ui": 0}, "secure": False},
    }
    assert bodies[("POST", reg.format("participant_2"))] == {
        "role": "host",
        "n_count": 1,
        "node_0": {"host": "172.19.152.155", "port": 8020, "f_port": 5000, "log_msgs": True, "verbose": True},
    }
    assert bodies[("POST", f"{train}/models/experiment_1/optimizations")] == {
        "search_space": SEARCH_SPACE,
        "n_samples": 3,
        "max_exec_duration": "1h",
    }
    assert bodies[("POST", f"{train}/models/experiment_1/run_1")] == {
        "auto_align": True,
        "dockerised": True,
        "verbose": True,
        "log_msgs": True,
    }
    predictions = next(body for (method, path), body in bodies.items() if "/predictions" in path)
    assert predictions == {
        "tags": {"project_1": [["predict"]]},
        "auto_align": True,
        "dockerised": True,
        "verbose": False,
        "log_msgs": False,
    }


# ---- phase 1 ----


def test_configure_mq_is_sent_once(server: FakeServer, driver: Driver) -> None:
    task = driver.collaborations
    section = task.configure_mq(host="172.19.152.151", port=5672)
    assert section == {"host": "172.19.152.151", "ports": {"main": 5672, "ui": 0}, "secure": False}
    task.create("collaboration_1")
    assert server.last_body()["mq"] == section
    task.create("collaboration_2")
    assert server.last_body() == {"collab_id": "collaboration_2"}


def test_configure_sections_and_update(server: FakeServer, driver: Driver) -> None:
    task = driver.collaborations
    task.configure_logger(
        "10.0.0.1", 9000, sysmetrics_port=9100, director_port=9200, ttp_port=9300, worker_port=9400, ui_port=9001
    )
    task.configure_mlops("10.0.0.2", 5500, ui_port=5501, secure=True)
    task.configure_catalogue("10.0.0.3", 1)
    task.configure_meter("10.0.0.4", 2)
    task.update(C, extra=1)
    assert server.last().method == "PUT" and server.last().url.path == f"/ttp/connect/collaborations/{C}"
    body = server.last_body()
    assert body["logs"] == {
        "host": "10.0.0.1",
        "secure": False,
        "ports": {"main": 9000, "ui": 9001, "sysmetrics": 9100, "director": 9200, "ttp": 9300, "worker": 9400},
    }
    assert body["mlops"] == {"host": "10.0.0.2", "ports": {"main": 5500, "ui": 5501}, "secure": True}
    assert set(body) == {"logs", "mlops", "catalogue", "meter", "extra"}
    task.update(C, extra=2)
    assert server.last_body() == {"extra": 2}


def test_sections_survive_a_failed_create(server: FakeServer, driver: Driver) -> None:
    server.routes[("POST", "/ttp/connect/collaborations")] = error(409, "collaboration.exists", "exists")
    task = driver.collaborations
    task.configure_mq("mq", 5672)
    with pytest.raises(Conflict):
        task.create(C)
    del server.routes[("POST", "/ttp/connect/collaborations")]
    task.create(C)
    assert "mq" in server.last_body()


def test_runs_create_defaults_and_passthrough(server: FakeServer, driver: Driver) -> None:
    driver.runs.create(
        collab_id=C,
        project_id=P,
        expt_id=E,
        run_id=R,
        rounds=2,
        epochs=1,
        base_lr=0.0005,
        max_lr=0.005,
        criterion="L1Loss",
    )
    assert server.last().url.path == f"/ttp/connect/collaborations/{C}/projects/{P}/experiments/{E}/runs"
    assert server.last_body() == {
        "run_id": R,
        "algorithm": "FedProx",
        "rounds": 2,
        "epochs": 1,
        "lr": 0.001,
        "weight_decay": 0.0,
        "lr_decay": 0.1,
        "mu": 0.1,
        "l1_lambda": 0.0,
        "l2_lambda": 0.0,
        "optimizer": "SGD",
        "criterion": "L1Loss",
        "lr_scheduler": "CyclicLR",
        "delta": 0.0,
        "patience": 10,
        "seed": 42,
        "is_snn": False,
        "precision_fractional": 5,
        "base_lr": 0.0005,
        "max_lr": 0.005,
    }
    driver.runs.create(C, P, E, "run_2", batch_size=32, is_condensed=False, momentum=None)
    body = server.last_body()
    assert body["batch_size"] == 32
    assert "is_condensed" not in body and "momentum" not in body


def test_participant_body_uses_id(server: FakeServer, driver: Driver) -> None:
    driver.participants.create(participant_id="participant_1")
    assert server.last_body() == {"id": "participant_1"}
    driver.participants.create("participant_2", category=["bank"], email="a@b.c", socials={"x": "y"})
    assert server.last_body() == {"id": "participant_2", "category": ["bank"], "email": "a@b.c", "socials": {"x": "y"}}


def test_registration_nodes_are_stateful(server: FakeServer, driver: Driver) -> None:
    task = driver.registrations
    assert task.add_node("10.0.0.1", 8020, 5000) == "node_0"
    assert task.add_node("10.0.0.2", 8020, 5000, log_msgs=True) == "node_1"
    assert task.add_node("10.0.0.1", 8020, 5000) == "node_0"  # the same node is not added twice
    assert task.add_node("10.0.0.3", 8020, 5000) == "node_2"
    assert task.count_nodes() == 3
    removed = task.remove_node("node_1")
    assert removed["host"] == "10.0.0.2"
    assert task.list_nodes() == {
        "node_0": {"host": "10.0.0.1", "port": 8020, "f_port": 5000, "log_msgs": False, "verbose": False},
        "node_1": {"host": "10.0.0.3", "port": 8020, "f_port": 5000, "log_msgs": False, "verbose": False},
    }
    with pytest.raises(KeyError, match="node_7"):
        task.remove_node("node_7")
    task.remove_node("node_1")
    assert task.count_nodes() == 1
    assert server.requests == []  # the node list is local


def test_registration_create(server: FakeServer, driver: Driver) -> None:
    path = f"/ttp/connect/collaborations/{C}/projects/{P}/participants/participant_1/registration"
    server.routes[("DELETE", path)] = error(404, "registration.not_found", "no registration")
    task = driver.registrations
    task.add_node(host="172.19.152.154", port=8020, f_port=5000, log_msgs=True, verbose=True)
    task.create(collab_id=C, project_id=P, participant_id="participant_1", role="guest")
    assert server.calls() == [("DELETE", path), ("POST", path)]
    assert server.last_body() == {
        "role": "guest",
        "n_count": 1,
        "node_0": {"host": "172.19.152.154", "port": 8020, "f_port": 5000, "log_msgs": True, "verbose": True},
    }
    assert task.count_nodes() == 0
    with pytest.raises(ValueError, match="add_node"):
        task.create(C, P, "participant_1", "guest")
    assert len(server.calls()) == 2  # nothing was deleted or sent


def test_registration_create_stops_on_other_delete_errors(server: FakeServer, driver: Driver) -> None:
    path = f"/ttp/connect/collaborations/{C}/projects/{P}/participants/participant_1/registration"
    server.routes[("DELETE", path)] = error(403, "registration.forbidden", "locked")
    task = driver.registrations
    task.add_node("h", 8020, 5000)
    with pytest.raises(Forbidden):
        task.create(C, P, "participant_1", "host")
    assert task.count_nodes() == 1


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ({"participant_id": "p1"}, "/ttp/connect/participants/p1/registrations"),
        ({"collab_id": C}, f"/ttp/connect/collaborations/{C}/registrations"),
        ({"collab_id": C, "participant_id": "p1"}, f"/ttp/connect/collaborations/{C}/participants/p1/registrations"),
        ({"collab_id": C, "project_id": P}, f"/ttp/connect/collaborations/{C}/projects/{P}/registrations"),
        (
            {"collab_id": C, "project_id": P, "participant_id": "p1"},
            f"/ttp/connect/collaborations/{C}/projects/{P}/participants/p1/registration",
        ),
    ],
)
def test_registration_listings(server: FakeServer, driver: Driver, keys: dict, path: str) -> None:
    driver.registrations.read_all(**keys)
    assert server.calls() == [("GET", path)]


def test_registration_listing_needs_keys(driver: Driver) -> None:
    with pytest.raises(ValueError):
        driver.registrations.read_all()
    with pytest.raises(ValueError, match="collab_id"):
        driver.registrations.read_all(project_id=P)


def test_tags_create_keywords(server: FakeServer, driver: Driver) -> None:
    driver.tags.create(
        collab_id=C,
        project_id=P,
        participant_id="participant_1",
        train=[["train"]],
        evaluate=[["evaluate"]],
        predict=[["predict"]],
    )
    assert (
        server.last().url.path
        == f"/ttp/connect/collaborations/{C}/projects/{P}/participants/participant_1/registration/tags"
    )
    assert server.last_body() == {"train": [["train"]], "evaluate": [["evaluate"]], "predict": [["predict"]]}
    driver.tags.create(C, P, "participant_2", [("data1", "train")])
    assert server.last_body() == {"train": [["data1", "train"]], "evaluate": [], "predict": []}


# ---- every route ----

CONNECT = f"/ttp/connect/collaborations/{C}"
PROJ = f"{CONNECT}/projects/{P}"
TRAIN = f"/ttp/train/collaborations/{C}/projects/{P}"
EVAL = f"/ttp/evaluate/collaborations/{C}/projects/{P}"
PRED = f"/ttp/evaluate/participants/p1/collaborations/{C}"


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda d: d.collaborations.read_all(), "GET", "/ttp/connect/collaborations"),
        (lambda d: d.collaborations.read(C), "GET", CONNECT),
        (lambda d: d.collaborations.delete(C), "DELETE", CONNECT),
        (lambda d: d.projects.read_all(C), "GET", f"{CONNECT}/projects"),
        (lambda d: d.projects.read(C, P), "GET", PROJ),
        (lambda d: d.projects.update(C, P, action="regress"), "PUT", PROJ),
        (lambda d: d.projects.delete(C, P), "DELETE", PROJ),
        (lambda d: d.experiments.read_all(C, P), "GET", f"{PROJ}/experiments"),
        (lambda d: d.experiments.read(C, P, E), "GET", f"{PROJ}/experiments/{E}"),
        (lambda d: d.experiments.update(C, P, E, model=[]), "PUT", f"{PROJ}/experiments/{E}"),
        (lambda d: d.experiments.delete(C, P, E), "DELETE", f"{PROJ}/experiments/{E}"),
        (lambda d: d.runs.read_all(C, P, E), "GET", f"{PROJ}/experiments/{E}/runs"),
        (lambda d: d.runs.read(C, P, E, R), "GET", f"{PROJ}/experiments/{E}/runs/{R}"),
        (lambda d: d.runs.update(C, P, E, R, rounds=3), "PUT", f"{PROJ}/experiments/{E}/runs/{R}"),
        (lambda d: d.runs.delete(C, P, E, R), "DELETE", f"{PROJ}/experiments/{E}/runs/{R}"),
        (lambda d: d.participants.read_all(), "GET", "/ttp/connect/participants"),
        (lambda d: d.participants.read("p1"), "GET", "/ttp/connect/participants/p1"),
        (lambda d: d.participants.update("p1", summary="s"), "PUT", "/ttp/connect/participants/p1"),
        (lambda d: d.participants.delete("p1"), "DELETE", "/ttp/connect/participants/p1"),
        (lambda d: d.registrations.read(C, P, "p1"), "GET", f"{PROJ}/participants/p1/registration"),
        (lambda d: d.registrations.update(C, P, "p1", role="host"), "PUT", f"{PROJ}/participants/p1/registration"),
        (lambda d: d.registrations.delete(C, P, "p1"), "DELETE", f"{PROJ}/participants/p1/registration"),
        (lambda d: d.tags.read(C, P, "p1"), "GET", f"{PROJ}/participants/p1/registration/tags"),
        (lambda d: d.tags.update(C, P, "p1", train=[["a"]]), "PUT", f"{PROJ}/participants/p1/registration/tags"),
        (lambda d: d.tags.delete(C, P, "p1"), "DELETE", f"{PROJ}/participants/p1/registration/tags"),
        (lambda d: d.alignments.read(C, P), "GET", f"{TRAIN}/alignments"),
        (lambda d: d.models.create(C, P), "POST", f"{TRAIN}/models"),
        (lambda d: d.models.create(C, P, E), "POST", f"{TRAIN}/models/{E}"),
        (lambda d: d.models.read(C, P), "GET", f"{TRAIN}/models"),
        (lambda d: d.models.read(C, P, E, R), "GET", f"{TRAIN}/models/{E}/{R}"),
        (lambda d: d.optimizations.read(C, P, E), "GET", f"{TRAIN}/models/{E}/optimizations"),
        (lambda d: d.validations.create(C, P), "POST", f"{EVAL}/validations"),
        (lambda d: d.validations.create(C, P, E, R, "p1"), "POST", f"{EVAL}/validations/{E}/{R}/p1"),
        (lambda d: d.validations.read(C, P, E), "GET", f"{EVAL}/validations/{E}"),
        (lambda d: d.validations.read(C, P, E, R, "p1"), "GET", f"{EVAL}/validations/{E}/{R}/p1"),
        (lambda d: d.predictions.create({P: [["predict"]]}, "p1", C), "POST", f"{PRED}/predictions"),
        (lambda d: d.predictions.read("p1", C), "GET", f"{PRED}/predictions"),
        (lambda d: d.predictions.read("p1", C, P, E, R), "GET", f"{PRED}/predictions/{P}/{E}/{R}"),
    ],
)
def test_routes(server: FakeServer, driver: Driver, call: Callable, method: str, path: str) -> None:
    call(driver)
    assert server.calls() == [(method, path)]


def test_project_and_experiment_bodies(server: FakeServer, driver: Driver) -> None:
    driver.projects.create(C, P, "classify", {"tier_1": []})
    assert server.last_body() == {"project_id": P, "action": "classify", "incentives": {"tier_1": []}}
    layer = {
        "l_type": "Linear",
        "structure": {"in_features": 2, "out_features": 1},
        "activation": None,
        "is_input": True,
    }
    driver.experiments.create(C, P, E, [layer])
    assert server.last_body() == {"expt_id": E, "model": [layer]}


def test_alignment_and_validation_bodies(server: FakeServer, driver: Driver) -> None:
    driver.alignments.create(C, P)
    assert server.last_body() == {"auto_align": True, "auto_fix": True}
    driver.alignments.create(C, P, auto_fix=False)
    assert server.last_body() == {"auto_align": True, "auto_fix": False}
    driver.validations.create(C, P, E, R, log_msg=False)  # notebooks' misspelt keyword passes through
    assert server.last_body() == {
        "auto_align": True,
        "dockerised": True,
        "verbose": False,
        "log_msgs": False,
        "log_msg": False,
    }


def test_optimization_longer_spellings(server: FakeServer, driver: Driver) -> None:
    space = {"rounds": {"_type": "choice", "_value": [1, 2]}}
    driver.optimizations.create(
        C,
        P,
        E,
        space,
        metric="accuracy",
        optimize_mode="max",
        searcher="BasicVariant",
        max_trial_num=2,
        trial_concurrency=2,
        max_exec_duration="2h",
        backend="tune",
    )
    assert server.last().url.path == f"{TRAIN}/models/{E}/optimizations"
    assert server.last_body() == {
        "search_space": space,
        "tuner": "BasicVariant",
        "metric": "accuracy",
        "optimize_mode": "max",
        "n_samples": 2,
        "trial_concurrency": 2,
        "max_exec_duration": "2h",
        "backend": "tune",
    }
    with pytest.raises(ValueError, match="disagree"):
        driver.optimizations.create(C, P, E, space, tuner="a", searcher="b")


def test_ids_are_checked_and_encoded(server: FakeServer, driver: Driver) -> None:
    with pytest.raises(ValueError, match="expt_id"):
        driver.models.create(C, P, run_id=R)
    with pytest.raises(ValueError, match="collab_id is required"):
        driver.collaborations.read("")
    with pytest.raises(ValueError, match="run_id is required"):  # None is never read as "all runs"
        driver.runs.delete(C, P, E, None)
    with pytest.raises(ValueError, match="project_id is required"):
        driver.experiments.read_all(C, None)
    assert server.requests == []
    driver.collaborations.read("a/../b")
    assert server.last().url.raw_path == b"/ttp/connect/collaborations/a%2F..%2Fb"


# ---- errors ----


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "request.invalid", RequestInvalid),
        (403, "optimization.forbidden", Forbidden),
        (404, "run.not_found", NotFound),
        (409, "run.exists", Conflict),
        (422, "request.invalid", RequestInvalid),
        (500, "internal.error", ServerError),
        (502, "worker.unreachable", ServerError),
        (418, "teapot.refused", ResponseError),
    ],
)
def test_typed_errors(server: FakeServer, driver: Driver, status: int, code: str, kind: type) -> None:
    path = f"{PROJ}/experiments/{E}/runs/run_9"
    server.routes[("DELETE", path)] = error(status, code, "run 'run_9' does not exist")
    with pytest.raises(kind) as caught:
        driver.runs.delete(C, P, E, "run_9")
    exc = caught.value
    assert isinstance(exc, SynergosError)
    assert (exc.status, exc.code, exc.detail) == (status, code, "run 'run_9' does not exist")
    assert str(exc) == f"{status} {code}: run 'run_9' does not exist"
    assert exc.response["success"] == 0


def test_not_found_reads_well(server: FakeServer, driver: Driver) -> None:
    server.routes[("GET", f"{PROJ}/experiments/{E}/runs/run_9")] = error(
        404, "run.not_found", "run 'run_9' does not exist"
    )
    with pytest.raises(NotFound, match=r"^404 run.not_found: run 'run_9' does not exist$"):
        driver.runs.read(C, P, E, "run_9")


def test_invalid_request_carries_fields(server: FakeServer, driver: Driver) -> None:
    fields = [{"path": "rounds", "message": "Input should be greater than or equal to 1"}]
    server.routes[("POST", f"{PROJ}/experiments/{E}/runs")] = error(422, "request.invalid", "rounds: too small", fields)
    with pytest.raises(RequestInvalid) as caught:
        driver.runs.create(C, P, E, R, rounds=0)
    assert caught.value.fields == fields
    assert caught.value.title == "invalid"


def test_success_zero_on_2xx_is_an_error(server: FakeServer, driver: Driver) -> None:
    server.routes[("GET", "/ttp/connect/participants")] = lambda request: httpx.Response(
        200, json={"success": 0, "status": 409, "error": {"code": "participant.conflict", "detail": "clash"}}
    )
    with pytest.raises(Conflict, match=r"409 participant\.conflict: clash"):
        driver.participants.read_all()


def test_answers_without_envelope(server: FakeServer, driver: Driver) -> None:
    server.routes[("GET", "/ttp/connect/participants")] = lambda request: httpx.Response(
        404, json={"message": "Participant not found"}
    )  # the original's abort
    with pytest.raises(NotFound, match=r"404 resource\.not_found: Participant not found"):
        driver.participants.read_all()
    server.routes[("POST", "/ttp/connect/participants")] = lambda request: httpx.Response(
        502, text="<html>Bad Gateway</html>"
    )
    with pytest.raises(ServerError) as caught:
        driver.participants.create("p1")
    assert caught.value.code == "server.error"
    server.routes[("GET", "/ttp/connect/participants/p1")] = lambda request: httpx.Response(200, text="hello")
    with pytest.raises(ResponseError, match=r"response\.invalid"):
        driver.participants.read("p1")


def refuse(counter: list) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        counter.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return handler


def test_errors_survive_pickling() -> None:
    import pickle

    for exc in (
        NotFound("gone", status=404, code="run.not_found", response={"success": 0}),
        ConnectionFailed("http://h:1", "refused", method="GET", url="/x"),
    ):
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc) and str(copy) == str(exc) and copy.__dict__ == exc.__dict__


def test_connection_failed_names_the_address() -> None:
    tried: list = []
    driver = Driver("10.9.8.7", 15000, transport=httpx.MockTransport(refuse(tried)))
    with pytest.raises(ConnectionFailed) as caught:
        driver.collaborations.read_all()
    exc = caught.value
    assert exc.address == "http://10.9.8.7:15000"
    assert "http://10.9.8.7:15000" in str(exc) and "Connection refused" in str(exc)
    assert exc.code == "connection.failed" and exc.status is None
    assert len(tried) == 3  # one try and two retries


def test_post_is_retried_only_when_nothing_was_sent() -> None:
    tried: list = []
    driver = Driver(HOST, PORT, transport=httpx.MockTransport(refuse(tried)))
    with pytest.raises(ConnectionFailed):
        driver.participants.create("p1")
    assert len(tried) == 3  # connection never opened: safe to try again

    sent: list = []

    def timeout(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    driver = Driver(HOST, PORT, transport=httpx.MockTransport(timeout))
    with pytest.raises(ConnectionFailed, match="ReadTimeout"):
        driver.participants.create("p1")
    assert len(sent) == 1  # the server may have acted on it: never re-sent
    with pytest.raises(ConnectionFailed):
        driver.participants.read_all()
    assert len(sent) == 4


def test_get_is_retried_on_5xx(server: FakeServer, driver: Driver) -> None:
    answers = iter([503, 502, 200])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 200:
            return envelope(request, ["ok"])
        return error(status, "server.busy", "try later")(request)

    server.routes[("GET", "/ttp/connect/participants")] = flaky
    assert driver.participants.read_all()["data"] == ["ok"]
    assert len(server.calls()) == 3

    server.routes[("POST", "/ttp/connect/participants")] = error(503, "server.busy", "try later")
    with pytest.raises(ServerError):
        driver.participants.create("p2")
    assert len(server.calls()) == 4  # a POST is not retried after it was answered


# ---- progress on stderr ----


def training_job(round_: int | None, state: str, loss: float | None = None) -> dict:
    return {
        "job_id": "job-1",
        "kind": "training",
        "keys": {"collab_id": C, "project_id": P, "expt_id": E, "run_id": R},
        "state": state,
        "round": round_,
        "rounds": 3,
        "detail": None,
        "metrics": {"evaluate_loss": loss} if loss is not None else None,
    }


def test_progress_lines_while_training(server: FakeServer, driver: Driver, capsys: pytest.CaptureFixture) -> None:
    done = threading.Event()
    polls: list[httpx.Request] = []
    old = {
        "job_id": "job-0",
        "kind": "alignment",
        "keys": {"collab_id": C, "project_id": P},
        "state": "completed",
        "round": None,
        "rounds": None,
        "detail": None,
        "metrics": None,
    }
    timeline = [
        training_job(None, "queued"),
        training_job(1, "running", 0.6),
        training_job(2, "running", 0.41234),
        training_job(3, "running", 0.3),
    ]

    def status(request: httpx.Request) -> httpx.Response:
        polls.append(request)
        if done.is_set():
            return envelope(request, [old, training_job(3, "completed", 0.3)])
        return envelope(request, [old, timeline[min(len(polls) - 1, len(timeline) - 1)]])

    def train(request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + 5
        while len(polls) < len(timeline) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        done.set()
        return envelope(request, [{"key": {"run_id": R}}], 200)

    server.routes[("GET", STATUS)] = status
    server.routes[("POST", f"{TRAIN}/models/{E}/{R}")] = train
    result = driver.models.create(collab_id=C, project_id=P, expt_id=E, run_id=R)
    assert result["data"] == [{"key": {"run_id": R}}]
    assert polls[0].url.params == httpx.QueryParams({"collab_id": C, "project_id": P})
    lines = capsys.readouterr().err.splitlines()
    scope = f"training {C}/{P}/{E}/{R}"
    assert lines == [
        f"{scope}: queued",
        f"{scope}: round 1/3 (evaluate loss 0.6000)",
        f"{scope}: round 2/3 (evaluate loss 0.4123)",
        f"{scope}: round 3/3 (evaluate loss 0.3000)",
        f"{scope}: completed at round 3/3 (evaluate loss 0.3000)",
    ]  # no line for the alignment that had finished before the request


def test_progress_stops_quietly_without_status_route(
    server: FakeServer, driver: Driver, capsys: pytest.CaptureFixture
) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)
        return envelope(request, [])

    server.routes[("POST", f"{EVAL}/validations/{E}/{R}")] = slow
    assert driver.validations.create(C, P, E, R)["success"] == 1
    assert server.calls(status=True).count(("GET", STATUS)) == 1  # 404 once, then silence
    assert capsys.readouterr().err == ""


def test_progress_can_be_turned_off(server: FakeServer, capsys: pytest.CaptureFixture) -> None:
    driver = Driver(HOST, PORT, transport=httpx.MockTransport(server), show_progress=False)
    driver.alignments.create(C, P)
    driver.predictions.create({P: [["predict"]]}, "p1", C, P)
    assert ("GET", STATUS) not in server.calls(status=True)
    assert capsys.readouterr().err == ""


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_the_line_on_a_terminal(server: FakeServer, driver: Driver) -> None:
    states = iter([training_job(1, "running", 0.5), training_job(2, "running", 0.4)])
    server.routes[("GET", STATUS)] = lambda request: envelope(request, [next(states, training_job(3, "completed"))])
    stream = FakeTTY()
    progress = _progress.JobProgress(driver._session, {"collab_id": C}, stream=stream)
    progress._poll()
    progress._poll()
    progress._poll()
    text = stream.getvalue()
    assert text.startswith("\r")
    assert text.count("\n") == 1 and text.endswith("completed at round 3/3\x1b[K\n")
    assert "round 2/3 (evaluate loss 0.4000)" in text


def test_format_job() -> None:
    job = {
        "kind": "validation",
        "keys": {"collab_id": C, "project_id": P},
        "state": "failed",
        "detail": "worker_1 unreachable",
    }
    assert _progress.format_job(job) == f"validation {C}/{P}: failed: worker_1 unreachable"
    assert _progress.format_job({"kind": "prediction", "state": "running"}) == "prediction: running"


# ---- the package ----


def test_public_names() -> None:
    import synergos
    from synergos import Driver as SynergosDriver

    assert SynergosDriver is Driver
    assert synergos_driver.__version__ == synergos.__version__ == "0.1.0"
    assert synergos.__all__ == synergos_driver.__all__
    for name in synergos_driver.__all__:
        assert hasattr(synergos_driver, name), name
        assert hasattr(synergos, name), name
    tasks = [name for name in synergos_driver.__all__ if name.endswith("Task")]
    assert len(tasks) == 13  # BaseTask and one per Driver property
    assert not any(
        name.startswith("_")
        for name in dir(synergos_driver)
        if name in synergos_driver.__all__ and name != "__version__"
    )


def test_import_stays_light() -> None:
    src = Path(synergos_driver.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    code = (
        "import synergos, sys; "
        "heavy = [m for m in ('torch', 'ray', 'pika', 'synergos_core', 'synergos_ttp', 'synergos_worker') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ---- waiting for queued work ----

VALIDATIONS = f"/ttp/evaluate/collaborations/{C}/projects/{P}/validations/{E}/{R}"


@pytest.fixture
def fast_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wait, "FIRST_INTERVAL_S", 0.01)
    monkeypatch.setattr(_wait, "MAX_INTERVAL_S", 0.02)


def validation_job(state: str, detail: str | None = None, at: str = "2026-01-01T00:00:01") -> dict:
    return {
        "job_id": "validation-1",
        "kind": "validation",
        "keys": {"collab_id": C, "project_id": P, "expt_id": E, "run_id": R},
        "state": state,
        "round": None,
        "rounds": None,
        "detail": detail,
        "metrics": None,
        "updated_at": at,
    }


def test_without_wait_an_empty_scope_reads_as_an_empty_list(server: FakeServer, driver: Driver) -> None:
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [])
    assert driver.validations.read(C, P, E, R)["data"] == []


def test_wait_returns_once_the_records_are_there_and_the_job_is_done(
    server: FakeServer, driver: Driver, fast_wait: None
) -> None:
    reads: list[int] = []

    def validations(request: httpx.Request) -> httpx.Response:
        reads.append(1)
        return envelope(request, [{"key": {"participant_id": "aggregate"}}] if len(reads) >= 4 else [])

    def status(request: httpx.Request) -> httpx.Response:
        return envelope(request, [validation_job("completed" if len(reads) >= 5 else "running")])

    server.routes[("GET", VALIDATIONS)] = validations
    server.routes[("GET", STATUS)] = status
    answer = driver.validations.read(C, P, E, R, wait=True, timeout=10)
    assert answer["data"] == [{"key": {"participant_id": "aggregate"}}]
    assert len(reads) == 5  # records at the 4th read, but the job was still running until the 5th


def test_wait_raises_the_reason_of_a_failed_job(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [])
    server.routes[("GET", STATUS)] = lambda request: envelope(
        request,
        [
            validation_job("completed", at="2026-01-01T00:00:01"),
            validation_job("failed", "participant_2's node at 10.0.0.2:5000 is unreachable", at="2026-01-01T00:00:09"),
        ],
    )
    with pytest.raises(JobFailed) as failed:
        driver.validations.read(C, P, E, R, wait=True, timeout=10)
    assert failed.value.reason == "participant_2's node at 10.0.0.2:5000 is unreachable"
    assert failed.value.job["kind"] == "validation" and "unreachable" in str(failed.value)


def test_wait_raises_for_a_job_its_service_interrupted(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    stopped = "the TTP stopped before this validation finished; request it again"
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [])
    server.routes[("GET", STATUS)] = lambda request: envelope(request, [validation_job("interrupted", stopped)])
    with pytest.raises(JobFailed, match="was interrupted: the TTP stopped") as failed:
        driver.validations.read(C, P, E, R, wait=True, timeout=10)
    assert failed.value.reason == stopped


def test_wait_times_out_naming_the_scope_and_the_open_jobs(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [])
    server.routes[("GET", STATUS)] = lambda request: envelope(request, [validation_job("queued")])
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timed_out:
        driver.validations.read(C, P, E, R, wait=True, timeout=0.2)
    assert time.monotonic() - started < 2
    assert f"validations of {C}/{P}/{E}/{R}" in str(timed_out.value)
    assert "1 job still open: validation" in str(timed_out.value) and "queued" in str(timed_out.value)
    assert timed_out.value.waited_for == f"validations of {C}/{P}/{E}/{R}" and len(timed_out.value.jobs) == 1


def test_wait_keeps_polling_an_old_servers_404_for_an_empty_scope_but_not_an_unknown_id(
    server: FakeServer, driver: Driver, fast_wait: None
) -> None:
    reads: list[int] = []

    def validations(request: httpx.Request) -> httpx.Response:
        reads.append(1)
        if len(reads) < 3:
            return error(404, "validation.not_found", "no validations in this scope yet")(request)
        return envelope(request, [{"key": {}}])

    server.routes[("GET", VALIDATIONS)] = validations
    assert driver.validations.read(C, P, E, R, wait=True, timeout=10)["data"] == [{"key": {}}]
    server.routes[("GET", VALIDATIONS)] = error(404, "run.not_found", "run 'run_1' does not exist")
    with pytest.raises(NotFound):
        driver.validations.read(C, P, E, R, wait=True, timeout=10)


def test_wait_times_out_saying_nothing_was_asked_for(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [])
    server.routes[("GET", STATUS)] = lambda request: envelope(request, [])
    with pytest.raises(WaitTimeout, match="no record yet, and no job is queued or running") as timed_out:
        driver.validations.read(C, P, E, R, wait=True, timeout=0.05)
    assert timed_out.value.jobs == [] and timed_out.value.code == "wait.timeout"


def test_wait_on_a_basic_ttp_returns_at_once(server: FakeServer, driver: Driver) -> None:
    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [{"key": {}}])
    server.routes[("GET", STATUS)] = lambda request: envelope(request, [validation_job("completed")])
    started = time.monotonic()
    assert driver.validations.read(C, P, E, R, wait=True, timeout=10)["data"] == [{"key": {}}]
    assert time.monotonic() - started < 0.4  # no sleep before the first answer
    assert server.calls().count(("GET", VALIDATIONS)) == 1


def test_wait_reads_a_failure_per_key_a_later_retry_supersedes_it(
    server: FakeServer, driver: Driver, fast_wait: None
) -> None:
    def training(run: str, state: str, detail: str | None = None, started: str = "1") -> dict:
        return {
            "job_id": f"training-{run}-{started}",
            "kind": "training",
            "keys": {"collab_id": C, "project_id": P, "expt_id": E, "run_id": run},
            "state": state,
            "detail": detail,
            "started_at": f"2026-01-01T00:00:0{started}",
        }

    models = f"/ttp/train/collaborations/{C}/projects/{P}/models"
    server.routes[("GET", models)] = lambda request: envelope(request, [{"key": {"run_id": "run_1"}}])
    # run_1 failed, then a retry completed: done
    server.routes[("GET", STATUS)] = lambda request: envelope(
        request, [training("run_1", "failed", "worker_1 unreachable", "1"), training("run_1", "completed", started="2")]
    )
    assert driver.models.read(C, P, wait=True, timeout=10)["data"]
    # run_2 failed, even though run_1 completed after it: the work of the scope failed
    server.routes[("GET", STATUS)] = lambda request: envelope(
        request,
        [
            training("run_2", "failed", "the loss became NaN at round 3", "1"),
            training("run_1", "completed", started="2"),
        ],
    )
    with pytest.raises(JobFailed, match="training for models of collaboration_1/project_1 failed: the loss") as failed:
        driver.models.read(C, P, wait=True, timeout=10)
    assert failed.value.job["keys"]["run_id"] == "run_2" and failed.value.code == "job.failed"
    # another kind, or another project's failure, is not this read's business
    server.routes[("GET", STATUS)] = lambda request: envelope(
        request,
        [
            {**training("run_2", "failed", "x"), "kind": "validation"},
            {
                **training("run_2", "failed", "x"),
                "keys": {"collab_id": C, "project_id": "project_2", "run_id": "run_2"},
            },
        ],
    )
    assert driver.models.read(C, P, wait=True, timeout=10)["data"]


def test_wait_rides_out_a_connection_that_drops_for_a_moment(
    server: FakeServer, driver: Driver, fast_wait: None
) -> None:
    reads: list[int] = []

    def validations(request: httpx.Request) -> httpx.Response:
        reads.append(1)
        if len(reads) <= 4:  # 2 polls of 1 + 2 retries each
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return envelope(request, [{"key": {}}])

    server.routes[("GET", VALIDATIONS)] = validations
    assert driver.validations.read(C, P, E, R, wait=True, timeout=10)["data"] == [{"key": {}}]

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    server.routes[("GET", VALIDATIONS)] = refused
    with pytest.raises(ConnectionFailed):  # still unreachable at the deadline: say so, not "timed out"
        driver.validations.read(C, P, E, R, wait=True, timeout=0.05)


def test_wait_bounds_each_poll(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    seen: dict[str, Any] = {}

    def validations(request: httpx.Request) -> httpx.Response:
        seen["records"] = request.extensions["timeout"]
        return envelope(request, [{"key": {}}])

    def status(request: httpx.Request) -> httpx.Response:
        seen["status"] = request.extensions["timeout"]
        return envelope(request, [])

    server.routes[("GET", VALIDATIONS)] = validations
    server.routes[("GET", STATUS)] = status
    unbounded = Driver(HOST, PORT, timeout=None, transport=httpx.MockTransport(server), show_progress=False)
    unbounded.validations.read(C, P, E, R, wait=True, timeout=10)
    assert seen["records"]["read"] == 30.0 and seen["status"]["read"] == 10.0


def test_wait_for_an_optimization_counts_only_its_trials(server: FakeServer, driver: Driver, fast_wait: None) -> None:
    path = f"/ttp/train/collaborations/{C}/projects/{P}/models/{E}/optimizations"
    trials: list[dict] = [{"key": {"run_id": "optim_run_a"}, "validation": None}]
    polls: list[int] = []

    def status(request: httpx.Request) -> httpx.Response:
        polls.append(1)
        keys = {"collab_id": C, "project_id": P, "expt_id": E}
        return envelope(
            request,
            [
                {"job_id": "t-1", "kind": "training", "keys": {**keys, "run_id": "run_1"}, "state": "running"},
                {
                    "job_id": "v-1",
                    "kind": "validation",
                    "keys": {**keys, "run_id": "optim_run_a"},
                    "state": "running" if len(polls) < 3 else "completed",
                },
            ],
        )

    def optimizations(request: httpx.Request) -> httpx.Response:
        if len(polls) >= 3:
            trials[0]["validation"] = {"overall_accuracy": 0.9}
        return envelope(request, trials)

    server.routes[("GET", path)] = optimizations
    server.routes[("GET", STATUS)] = status
    quiet = Driver(HOST, PORT, transport=httpx.MockTransport(server), show_progress=False)
    answer = quiet.optimizations.read(C, P, E, wait=True, timeout=10)  # run_1's training is not a trial
    assert answer["data"][0]["validation"] == {"overall_accuracy": 0.9}
    # the optimization's own job, if the server reports one, counts too
    server.routes[("GET", STATUS)] = lambda request: envelope(
        request,
        [
            {
                "job_id": "o-1",
                "kind": "optimization",
                "keys": {"collab_id": C, "project_id": P, "expt_id": E},
                "state": "running",
            }
        ],
    )
    with pytest.raises(WaitTimeout, match="1 job still open: optimization"):
        quiet.optimizations.read(C, P, E, wait=True, timeout=0.05)


def test_wait_shows_progress_like_long_calls(
    server: FakeServer, fast_wait: None, capsys: pytest.CaptureFixture[str]
) -> None:
    polls: list[int] = []

    def status(request: httpx.Request) -> httpx.Response:
        polls.append(1)
        job = {**validation_job("running"), "round": 1, "rounds": 2}
        return envelope(request, [job if len(polls) < 6 else {**job, "state": "completed", "round": 2}])

    server.routes[("GET", VALIDATIONS)] = lambda request: envelope(request, [{"key": {}}] if len(polls) >= 6 else [])
    server.routes[("GET", STATUS)] = status
    Driver(HOST, PORT, transport=httpx.MockTransport(server)).validations.read(C, P, E, R, wait=True, timeout=10)
    assert f"validation {C}/{P}/{E}/{R}: round 1/2" in capsys.readouterr().err
