"""Failure detection against real processes: a TTP and two Workers of this module's own (never the
session's grid), started with every timeout small (`FAST`), whose Workers and TTP the tests kill
(SIGKILL) and freeze (SIGSTOP, always resumed with SIGCONT, even when a test fails).

A party that dies or freezes mid-run is noticed within the round's deadline or the channel's
keepalive; with `min_workers=1` the run completes from the survivor and records the dropout, and a
party that is back (resumed, or restarted and so re-initialised) is re-admitted; without a quorum
the run fails within the deadline plus seconds, naming the party. A Worker's session is a lease
that expires without TTP traffic; a second training of a running run is refused cleanly; a frozen
TTP makes a long Driver call raise `ServerUnresponsive` in bounded time."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from synergos import Conflict, Driver, ServerError, ServerUnresponsive
from synergos_core.identity import Credentials
from synergos_local import datasets, topology

from .conftest import IDENTITIES, REST, WS, register_parties

BLOCK = topology.loopback_block()
TTP_HOST = f"{BLOCK}.1"
WORKER_HOSTS = {"worker_1": f"{BLOCK}.2", "worker_2": f"{BLOCK}.3"}
# every bound small, so that each test takes seconds (yet not so small that a loaded machine trips
# them): keepalive 1 + 5 s, a round's deadline 10 s
FAST = {
    "SYNERGOS_FED_PING_INTERVAL_S": "1",
    "SYNERGOS_FED_PING_TIMEOUT_S": "5",
    "SYNERGOS_FED_ROUND_BASE_S": "10",
    "SYNERGOS_FED_ROUND_SAMPLE_EPOCH_S": "0",
    "SYNERGOS_FED_CLOSE_TIMEOUT_S": "1",
    "SYNERGOS_FED_TERMINATE_TIMEOUT_S": "2",
    "SYNERGOS_FED_OPEN_TIMEOUT_S": "3",
    "SYNERGOS_FED_REJOIN_INTERVAL_S": "0.5",
    "SYNERGOS_FED_SESSION_LEASE_S": "3",
    "SYNERGOS_HTTP_TIMEOUT_S": "15",
}
DEADLINE_S = 10.0  # SYNERGOS_FED_ROUND_BASE_S: no round here comes near it
KEEPALIVE_S = 6.0  # a frozen process is noticed within ping interval + timeout
SLACK_S = 6.0  # what noticing and teardown may add to a deadline (close, terminate, the Driver's answer)
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]
# about a tenth of a second a round
RECIPE = {
    "algorithm": "FedAvg",
    "epochs": 10,
    "batch_size": 8,
    "lr": 0.05,
    "criterion": "BCELoss",
    "lr_scheduler": "none",
    "patience": 1000,  # no early stop: every run here trains all its rounds
}
DROPOUT_CODES = {"worker.disconnected", "federation.timeout"}


@dataclass
class Fleet:
    workspace: Path
    topo: topology.Topology
    ttp: topology.Service
    workers: dict[str, topology.Service]
    client: httpx.Client = field(init=False)
    drivers: list[Driver] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = self.topo.client()

    def driver(self, **options: Any) -> Driver:
        driver = Driver(host=TTP_HOST, port=REST, show_progress=False, credentials=self.topo.user(), **options)
        self.drivers.append(driver)
        return driver

    def pid(self, worker: str) -> str:
        return f"fd_participant_{worker[-1]}"

    def job(self, run_id: str) -> dict | None:
        jobs = self.client.get(f"https://{TTP_HOST}:{REST}/ttp/status/jobs", params={"collab_id": "fd"}, timeout=5)
        found = [j for j in jobs.json()["data"] if j["kind"] == "training" and j["keys"].get("run_id") == run_id]
        return found[-1] if found else None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout:.0f} s: {what}\n{self.ttp.tail()}")

    def at_round(self, run_id: str, round_index: int, timeout: float = 30.0) -> None:
        """Until the run's job reports `round_index` rounds done."""

        def reached() -> bool:
            job = self.job(run_id)
            return job is not None and (job.get("round") or 0) >= round_index

        self.wait_for(f"run {run_id} at round {round_index}", reached, timeout)

    def sessions(self, worker: str) -> int:
        health = self.client.get(f"https://{WORKER_HOSTS[worker]}:{REST}/health", timeout=5)
        return health.json()["data"]["sessions"]


@contextmanager
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A TTP and two Workers with `FAST` bounds, one project `fd/p/e` registered and aligned;
    every process stopped at the end (and any left frozen resumed first)."""
    roots = datasets.prepare_sklearn(tmp_path, "breast_cancer")
    logs = tmp_path / "logs"
    with topology.Topology(IDENTITIES) as topo:
        ttp = topology.ttp("fd_ttp", TTP_HOST, REST, tmp_path / "ttp", logs)
        workers = {
            name: topology.worker(f"fd_{name}", host, REST, WS, roots[name], tmp_path / name / "outputs", logs)
            for name, host in WORKER_HOSTS.items()
        }
        for service in (ttp, *workers.values()):
            service.env.update(FAST)
            topo.add(service)
        topo.wait()
        crew = Fleet(tmp_path, topo, ttp, workers)
        try:
            _register(crew.driver())
            yield crew
        finally:
            for service in (ttp, *workers.values()):  # nothing is left frozen, whatever happened
                if service.process is not None and service.process.poll() is None:
                    os.kill(service.process.pid, signal.SIGCONT)
            # clients first, then the TTP: a service waits for its idle keep-alive connections to stop
            for driver in crew.drivers:
                driver.close()
            crew.client.close()
            ttp.stop()


def _register(driver: Driver) -> None:
    driver.collaborations.create("fd")
    driver.projects.create(collab_id="fd", project_id="p", action="classify")
    for name, host in WORKER_HOSTS.items():
        pid = f"fd_participant_{name[-1]}"
        driver.participants.create(participant_id=pid)
        task = driver.registrations
        task.add_node(host=host, port=WS, f_port=REST)
        task.create(collab_id="fd", project_id="p", participant_id=pid, role="host" if name == "worker_1" else "guest")
        driver.tags.create(
            collab_id="fd",
            project_id="p",
            participant_id=pid,
            train=[["breast_cancer", "train"]],
            evaluate=[["breast_cancer", "evaluate"]],
        )
    driver.experiments.create(collab_id="fd", project_id="p", expt_id="e", model=MODEL)
    driver.alignments.create(collab_id="fd", project_id="p", auto_fix=False)


class Training:
    """`models.create` of one run on a thread of its own; `result()` its model or its error."""

    def __init__(self, driver: Driver, run_id: str, rounds: int, **hyperparameters: Any) -> None:
        driver.runs.create(
            collab_id="fd", project_id="p", expt_id="e", run_id=run_id, rounds=rounds, **RECIPE, **hyperparameters
        )
        self.error: BaseException | None = None
        self.model: dict | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(driver, run_id), daemon=True)
        self._thread.start()

    def _run(self, driver: Driver, run_id: str) -> None:
        try:
            (self.model,) = driver.models.create(collab_id="fd", project_id="p", expt_id="e", run_id=run_id)["data"]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def result(self, timeout: float = 60.0) -> dict:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the training did not end within {timeout:.0f} s"
        if self.error is not None:
            raise self.error
        assert self.model is not None
        return self.model


@contextmanager
def frozen(service: topology.Service) -> Iterator[float]:
    """`service` stopped (SIGSTOP) within the block, resumed (SIGCONT) after it, even on failure;
    gives when it was stopped."""
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(service.process.pid, signal.SIGCONT)


def _kill(service: topology.Service) -> float:
    assert service.process is not None
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(10)
    return time.monotonic()


def _dropouts(records: list[dict] | None, pid: str) -> list[dict]:
    return [e for e in records or [] if e["participant_id"] == pid and e["code"] in DROPOUT_CODES]


@pytest.mark.integration
def test_a_worker_killed_mid_run_is_dropped_and_the_run_completes_from_the_survivor(tmp_path):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(), "killed", rounds=25, min_workers=1)
        crew.at_round("killed", 3)
        killed_at = _kill(crew.workers["worker_2"])
        gone = crew.pid("worker_2")
        # noticed at once (its channel closed), recorded on the job while the run goes on
        crew.wait_for("the dropout on the job", lambda: _dropouts(crew.job("killed")["exclusions"], gone), DEADLINE_S)
        noticed_s = time.monotonic() - killed_at
        model = training.result()
        assert model["rounds_completed"] == 25
        dropouts = _dropouts(model["exclusions"], gone)
        first = dropouts[0]
        assert first["round"] >= 3 and first["code"] == "worker.disconnected" and gone in first["reason"], first
        # every later round records the party as still out; the survivor's updates were all kept
        assert {e["round"] for e in dropouts if e["request"] == "train"} == set(range(first["round"], 25))
        assert not [e for e in model["exclusions"] if e["participant_id"] != gone]
        survivor = model["locals"][crew.pid("worker_1")]["loss_history"]
        assert len(survivor) == 25
        assert len(model["locals"][gone]["loss_history"]) == first["round"]
        assert noticed_s < DEADLINE_S / 2, noticed_s  # at once: not by the deadline
        job = crew.job("killed")
        assert job["state"] == "completed" and _dropouts(job["exclusions"], gone) == dropouts


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_without_a_quorum_a_dead_or_frozen_worker_fails_the_run_in_bounded_time(tmp_path, how):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(), "quorum", rounds=200)
        crew.at_round("quorum", 2)
        victim, gone = crew.workers["worker_2"], crew.pid("worker_2")
        if how == "SIGKILL":
            since = _kill(victim)
            with pytest.raises(ServerError) as failed:
                training.result(DEADLINE_S + SLACK_S)
        else:
            with frozen(victim) as since:
                with pytest.raises(ServerError) as failed:
                    training.result(DEADLINE_S + SLACK_S)
        assert training.ended_at is not None and training.ended_at - since < DEADLINE_S + SLACK_S
        detail = failed.value.detail
        assert gone in detail and "min_workers" in detail, detail
        assert failed.value.code in DROPOUT_CODES, failed.value
        job = crew.job("quorum")
        assert job["state"] == "failed" and gone in job["detail"]
        survivor = crew.workers["worker_1"]
        assert survivor.process is not None and survivor.process.poll() is None, survivor.tail()
        # the survivor's session was ended (terminated by the TTP), nothing left behind
        crew.wait_for("the survivor's session gone", lambda: crew.sessions("worker_1") == 0, 10)


@pytest.mark.integration
def test_a_frozen_worker_is_dropped_in_bounded_time_and_re_admitted_once_resumed(tmp_path):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(), "frozen", rounds=40, min_workers=1)
        crew.at_round("frozen", 3)
        gone = crew.pid("worker_2")
        with frozen(crew.workers["worker_2"]) as since:
            crew.wait_for(
                "the frozen party dropped",
                lambda: _dropouts(crew.job("frozen")["exclusions"], gone),
                KEEPALIVE_S + SLACK_S,
            )
            noticed_s = time.monotonic() - since
            out_at = crew.job("frozen")["round"]
        # resumed: its session lived on (no lease ran out), its channel is opened again, it is back
        model = training.result()
        assert noticed_s < KEEPALIVE_S + 2.0, noticed_s
        assert model["rounds_completed"] == 40
        dropouts = _dropouts(model["exclusions"], gone)
        out = sorted({e["round"] for e in dropouts})
        assert out and out[0] >= 3 and out[-1] < 39, (out, out_at)
        assert out == list(range(out[0], out[-1] + 1))  # out for a spell, then back for good
        rounds_trained = {int(r) for r in model["locals"][gone]["loss_history"]}
        assert set(range(out[-1] + 1, 40)) <= rounds_trained
        assert not rounds_trained & set(out)


@pytest.mark.integration
def test_a_restarted_worker_is_re_initialised_and_re_admitted(tmp_path):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(), "restarted", rounds=80, min_workers=1)
        crew.at_round("restarted", 2)
        worker, gone = crew.workers["worker_2"], crew.pid("worker_2")
        _kill(worker)
        crew.wait_for("the dropout", lambda: _dropouts(crew.job("restarted")["exclusions"], gone), DEADLINE_S)
        worker.start().wait_healthy()  # the same node, without its session: the TTP initialises it again
        crew.wait_for("the party back", lambda: crew.sessions("worker_2") == 1, 20)
        model = training.result(120)
        out = sorted({e["round"] for e in _dropouts(model["exclusions"], gone)})
        rounds_trained = {int(r) for r in model["locals"][gone]["loss_history"]}
        assert out and set(range(out[-1] + 1, 80)) <= rounds_trained, (out, sorted(rounds_trained)[-5:])
        assert worker.log_path.read_text().count("session opened for run fd/p/e/restarted") == 2


def _initialise(worker: str, run_id: str, token: str) -> httpx.Response:
    """What a TTP asks of a Worker to open a run's session, as the fleet's TTP identity."""
    body = {
        "action": "classify",
        "tags": {"train": [["breast_cancer", "train"]], "evaluate": [["breast_cancer", "evaluate"]]},
        "model": MODEL,
        "hyperparameters": {k: v for k, v in RECIPE.items() if k != "patience"},
        "token": token,
        "participant_id": f"fd_participant_{worker[-1]}",
    }
    ttp = Credentials.load(IDENTITIES.folder("fd_ttp", "ttp")).client_context()
    with httpx.Client(verify=ttp, timeout=30) as client:
        return client.post(f"https://{WORKER_HOSTS[worker]}:{REST}/worker/initialise/fd/p/e/{run_id}", json=body)


@pytest.mark.integration
def test_a_session_without_ttp_traffic_expires(tmp_path):
    with fleet(tmp_path) as crew:
        opened = _initialise("worker_1", "leased", secrets.token_urlsafe(32))
        assert opened.status_code == 201, opened.text
        started = time.monotonic()
        assert crew.sessions("worker_1") == 1
        crew.wait_for("the lease to run out", lambda: crew.sessions("worker_1") == 0, 10)
        assert time.monotonic() - started >= 2.5  # not before the lease (3 s)
        log = crew.workers["worker_1"].log_path.read_text()
        assert "session of run fd/p/e/leased expired" in log


@pytest.mark.integration
def test_a_duplicate_initialise_of_a_running_run_is_refused_and_never_crashes_the_worker(tmp_path):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(), "twice", rounds=20)
        crew.at_round("twice", 2)
        # another session for the run while its channel is open: refused, the run named (it used to
        # crash the Worker's thread: "There is no current event loop in thread 'asyncio_0'")
        for worker in WORKER_HOSTS:
            refused = _initialise(worker, "twice", secrets.token_urlsafe(32))
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "session.busy" and "fd/p/e/twice" in error["detail"], error
        # the TTP answers a second start of the training (with the job it runs, or a refusal), and
        # neither reaches the Workers' sessions
        try:
            crew.driver().models.create(collab_id="fd", project_id="p", expt_id="e", run_id="twice")
        except Conflict as conflict:
            assert "fd/p/e/twice" in conflict.detail or "twice" in conflict.detail, conflict
        model = training.result()
        assert model["rounds_completed"] == 20 and not model["exclusions"]
        for name, worker in crew.workers.items():
            assert worker.process is not None and worker.process.poll() is None, worker.tail()
            assert "no current event loop" not in worker.log_path.read_text()
            assert crew.sessions(name) == 0
        # a stale session (no channel open) is replaced by a new initialise, however often
        for _ in range(2):
            assert _initialise("worker_1", "stale", secrets.token_urlsafe(32)).status_code == 201
        assert crew.sessions("worker_1") == 1


@pytest.mark.integration
def test_a_frozen_ttp_makes_a_long_driver_call_raise_in_bounded_time(tmp_path):
    with fleet(tmp_path) as crew:
        training = Training(crew.driver(liveness_timeout=3), "hung", rounds=500)
        crew.at_round("hung", 2)
        with frozen(crew.ttp) as since:
            with pytest.raises(ServerUnresponsive) as unresponsive:
                training.result(15)
            assert training.ended_at is not None and training.ended_at - since < 3 + 5
            error = unresponsive.value
            assert error.code == "connection.unresponsive" and "training of fd/p" in error.detail, error
            # the Workers' keepalive closed the frozen TTP's channels, and their leases ran out
            for name in WORKER_HOSTS:
                crew.wait_for(f"{name}'s session freed", lambda name=name: crew.sessions(name) == 0, 15)


GKT_MODEL = [
    {"l_type": "Linear", "is_input": True, "structure": {"in_features": 30, "out_features": 8}},
    {"l_type": "ReLU", "structure": {}},
    {"l_type": "Linear", "structure": {"in_features": 8, "out_features": 1}},
    {"l_type": "Sigmoid", "structure": {}},
]


@pytest.mark.integration
def test_a_normal_run_leaves_no_warning_in_the_worker_logs(grid):
    """Training (FedAvg, with an early stop, and FedGKT), validation and prediction end cleanly on the
    Workers: the closing message carries the current round, so nothing is refused as stale."""
    logs = {name: grid.workspace / "logs" / f"{name}.log" for name in grid.workers}
    before = {name: path.stat().st_size for name, path in logs.items()}
    driver = grid.driver()
    register_parties(driver, "calm", "p", "breast_cancer")
    driver.experiments.create(collab_id="calm", project_id="p", expt_id="avg", model=MODEL)
    driver.experiments.create(collab_id="calm", project_id="p", expt_id="gkt", model=GKT_MODEL)
    driver.alignments.create(collab_id="calm", project_id="p", auto_fix=False)
    recipe = {k: v for k, v in RECIPE.items() if k != "patience"}
    driver.runs.create(collab_id="calm", project_id="p", expt_id="avg", run_id="r", rounds=3, **recipe)
    driver.runs.create(
        collab_id="calm", project_id="p", expt_id="avg", run_id="stops", rounds=30, **recipe, patience=1, delta=10.0
    )  # stops early: no round improves the evaluate loss by 10
    driver.runs.create(
        collab_id="calm", project_id="p", expt_id="gkt", run_id="r", rounds=3, **{**recipe, "algorithm": "FedGKT"}
    )
    for expt_id, run_id in (("avg", "r"), ("avg", "stops"), ("gkt", "r")):
        (model,) = driver.models.create(collab_id="calm", project_id="p", expt_id=expt_id, run_id=run_id)["data"]
        assert not model["exclusions"], model["exclusions"]
        assert model["stopped_early"] == (run_id == "stops"), model
        driver.validations.create(collab_id="calm", project_id="p", expt_id=expt_id, run_id=run_id)
    assert model["rounds_completed"] == 3
    driver.predictions.create(
        collab_id="calm", tags={"p": [["breast_cancer", "predict"]]}, participant_id="calm_participant_1"
    )
    for name, path in logs.items():
        with path.open("rb") as log:
            log.seek(before[name])
            written = log.read().decode(errors="replace")
        assert "session opened for run calm/p/avg/r" in written
        bad = [line for line in written.splitlines() if " WARNING " in line or " ERROR " in line or "stale" in line]
        assert not bad, f"{name}:\n" + "\n".join(bad)
