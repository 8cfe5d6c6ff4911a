"""A basic TTP killed (SIGKILL) mid-training and started again on the same data and outputs: the
run shows `interrupted` with the rounds it had checkpointed, `models.create` resumes it, and it
ends with the weights of an uninterrupted run of the same recipe (FedAvg and FedProx, a per-batch
CyclicLR that cycles SGD's momentum and shuffled batches, so every Worker's optimizer, scheduler
and shuffling state must survive). Killed before round 1, after round k, and while sending the
global weights (through a throttled relay to one Worker); a corrupt newest checkpoint is skipped
for the one before. These TTPs are this module's own; the Workers are the session's."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load_file

from synergos import Driver
from synergos_local import topology

from .conftest import BLOCK, IDENTITIES, REST, WORKER_HOSTS, WS, register_parties, tls

HOST = f"{BLOCK}.4"  # this module's TTP
RELAY = f"{BLOCK}.5"  # worker_2 behind a throttled relay (its REST and federation ports)
MLP = [
    {"activation": "relu", "is_input": True, "l_type": "Linear", "structure": {"in_features": 30, "out_features": 256}},
    {
        "activation": "sigmoid",
        "is_input": False,
        "l_type": "Linear",
        "structure": {"in_features": 256, "out_features": 1},
    },
]
ROUNDS = 6
RECIPE = {
    "rounds": ROUNDS,
    "epochs": 4,
    "batch_size": 16,  # shuffled batches: each Worker's generator state matters
    "lr": 0.05,
    "optimizer": "SGD",
    "momentum": 0.9,
    "criterion": "BCELoss",
    "lr_scheduler": "CyclicLR",  # steps every batch and cycles the momentum
    "base_lr": 0.005,
    "max_lr": 0.05,
    "step_size_up": 11,
    "patience": 0,
    "mu": 0.1,
}
TOLERANCE = 1e-6


class OwnTTP:
    """This module's basic TTP, on its own address and directories: killed and started again."""

    def __init__(self, topo: topology.Topology, workdir: Path, logs: Path) -> None:
        self.service = topo.add(topology.ttp("ttp_recovery", HOST, REST, workdir, logs))
        self.outputs = workdir / "outputs"
        self.base = f"https://{HOST}:{REST}"
        self.http = httpx.Client(verify=tls(), timeout=30.0)
        self._drivers: list[Driver] = []

    def driver(self) -> Driver:
        self._drivers.append(Driver(host=HOST, port=REST, show_progress=False, credentials=IDENTITIES.user()))
        return self._drivers[-1]

    def close(self) -> None:
        """No kept-alive connection for the TTP to wait on as it stops."""
        for client in (self.http, *self._drivers):
            client.close()

    def kill(self) -> None:
        assert self.service.process is not None
        self.service.process.kill()  # SIGKILL: nothing flushed, nothing closed
        self.service.process.wait(10)

    def restart(self) -> None:
        if self.service.process is not None and self.service.process.poll() is None:
            self.kill()
        self.service.start()
        self.service.wait_healthy(90)

    def ensure_running(self) -> None:
        if self.service.process is None or self.service.process.poll() is not None:
            self.restart()

    def jobs(self, collab: str) -> list[dict[str, Any]]:
        return self.http.get(f"{self.base}/ttp/status/jobs", params={"collab_id": collab}).json()["data"]

    def training(self, collab: str, run_id: str) -> list[dict[str, Any]]:
        return [j for j in self.jobs(collab) if j["kind"] == "training" and j["keys"]["run_id"] == run_id]

    def log_text(self) -> str:
        return self.service.log_path.read_text(errors="replace")


class Relay:
    """A TCP relay to a Worker: its REST port passed through, its federation port throttled from
    the TTP to the Worker and counted per connection, calling `at_byte(n)` once the first
    connection has carried `n` bytes to the Worker (mid-way through a message of weights)."""

    def __init__(self, host: str, target: str, rate_bytes_s: float) -> None:
        self.rate = rate_bytes_s
        self.fired = threading.Event()
        self._trigger: tuple[int, Callable[[], None]] | None = None
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listen(host, WS, (target, WS), throttled=True)
        self._listen(host, REST, (target, REST), throttled=False)

    def at_byte(self, count: int, action: Callable[[], None]) -> None:
        self._trigger = (count, action)

    def _listen(self, host: str, port: int, target: tuple[str, int], throttled: bool) -> None:
        server = socket.create_server((host, port))
        server.settimeout(0.2)
        self._sockets.append(server)
        threading.Thread(target=self._accept, args=(server, target, throttled), daemon=True).start()

    def _accept(self, server: socket.socket, target: tuple[str, int], throttled: bool) -> None:
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, throttled), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        carried = 0
        try:
            while not self._stop.is_set():
                chunk = source.recv(1024 if throttled else 65536)
                if not chunk:
                    break
                if throttled:
                    time.sleep(len(chunk) / self.rate)
                    carried += len(chunk)
                    if self._trigger is not None and carried >= self._trigger[0] and not self.fired.is_set():
                        self.fired.set()
                        self._trigger[1]()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def own(grid, tmp_path_factory) -> Iterator[OwnTTP]:
    workdir = tmp_path_factory.mktemp("ttp_recovery")
    with topology.Topology(IDENTITIES) as topo:
        ttp = OwnTTP(topo, workdir, grid.workspace / "logs")
        topo.wait()
        yield ttp
        ttp.close()


@pytest.fixture()
def ttp(own: OwnTTP) -> OwnTTP:
    own.ensure_running()
    return own


def _prepare(driver: Driver, collab: str, algorithm: str, second_host: str | None = None) -> None:
    """Parties, experiment and run `r` of the recipe, aligned (so that training starts at once)."""
    register_parties(driver, collab, "p", "breast_cancer")
    if second_host is not None:  # worker_2's node behind the relay
        registrations = driver.registrations
        registrations.add_node(host=second_host, port=WS, f_port=REST)
        registrations.update(collab_id=collab, project_id="p", participant_id=f"{collab}_participant_2", role="guest")
    driver.experiments.create(collab_id=collab, project_id="p", expt_id="e", model=MLP)
    driver.runs.create(collab_id=collab, project_id="p", expt_id="e", run_id="r", algorithm=algorithm, **RECIPE)
    driver.alignments.create(collab_id=collab, project_id="p")


_REFERENCES: dict[str, dict[str, Any]] = {}


def _reference(grid, algorithm: str) -> dict[str, Any]:
    """The global model of an uninterrupted run of the recipe, trained on the session's TTP."""
    if algorithm not in _REFERENCES:
        collab = f"reference_{algorithm.lower()}"
        driver = grid.driver()
        _prepare(driver, collab, algorithm)
        driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
        _REFERENCES[algorithm] = load_file(grid.ttp_outputs / collab / "p" / "e" / "r" / "global_model.safetensors")
    return _REFERENCES[algorithm]


def _same_weights(got: dict[str, Any], want: dict[str, Any]) -> float:
    assert set(got) == set(want)
    return max(float((got[name].double() - want[name].double()).abs().max()) for name in want)


def _train_in_background(driver: Driver, collab: str) -> threading.Thread:
    """`models.create` as a script sends it (it blocks in basic mode), on a thread: the kill ends it."""

    def train() -> None:
        try:
            driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")
        except Exception:  # noqa: BLE001 - the TTP is killed under it: the connection fails
            pass

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    return thread


def _kill_when(ttp: OwnTTP, collab: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict:
    """Poll the run's training job; SIGKILL the TTP the moment `ready(job)`; the job as last seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = ttp.training(collab, "r")
        if jobs and jobs[-1]["state"] in ("completed", "failed"):
            pytest.fail(f"the training ended before the kill could land: {jobs[-1]}")
        if jobs and ready(jobs[-1]):
            ttp.kill()
            return jobs[-1]
        time.sleep(0.01)
    pytest.fail(f"the training of {collab} never got where the kill was due")


def _resume_and_compare(
    ttp: OwnTTP, grid, collab: str, algorithm: str, checkpointed: int, resumed_after: int | None = None
) -> dict[str, Any]:
    """Start the TTP again: the run is interrupted with its checkpointed rounds; train it again: it
    resumes (after `resumed_after` rounds, by default all those checkpointed) and ends with the
    uninterrupted run's weights. Returns the resumed job."""
    ttp.restart()
    (cut,) = ttp.training(collab, "r")
    assert cut["state"] == "interrupted", cut
    assert (cut["rounds_checkpointed"] or 0) == checkpointed and cut["rounds"] == ROUNDS, cut
    driver = ttp.driver()
    model = driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"][0]
    assert model["rounds_completed"] == ROUNDS
    assert len(model["global"]["loss_history"]["evaluate"]) == ROUNDS  # every round's history, once
    cut_again, resumed = ttp.training(collab, "r")
    assert cut_again["state"] == "interrupted" and resumed["state"] == "completed", resumed
    expected = checkpointed if resumed_after is None else resumed_after
    assert resumed["resumed_after"] == (expected or None)  # None: it trained from round 1
    got = load_file(ttp.outputs / collab / "p" / "e" / "r" / "global_model.safetensors")
    assert _same_weights(got, _reference(grid, algorithm)) <= TOLERANCE
    return resumed


def _train_and_kill(ttp: OwnTTP, grid, collab: str, algorithm: str, ready: Callable[[dict[str, Any]], bool]) -> dict:
    """The reference trained, the run prepared on this module's TTP and trained until `ready`:
    then the TTP is killed; the run's training job as last seen."""
    _reference(grid, algorithm)
    driver = ttp.driver()
    _prepare(driver, collab, algorithm)
    _train_in_background(driver, collab)
    return _kill_when(ttp, collab, ready)


def _checkpointed(rounds: int) -> Callable[[dict[str, Any]], bool]:
    return lambda job: (job.get("rounds_checkpointed") or 0) >= rounds


@pytest.mark.parametrize("algorithm", ["FedAvg", "FedProx"])
def test_killed_after_round_3_it_resumes_to_the_uninterrupted_weights(ttp, grid, algorithm):
    collab = f"resume_after_k_{algorithm.lower()}"
    seen = _train_and_kill(ttp, grid, collab, algorithm, _checkpointed(3))
    resumed = _resume_and_compare(ttp, grid, collab, algorithm, seen["rounds_checkpointed"])
    assert resumed["resumed_after"] >= 3
    assert f"resumes from its checkpoint of round {resumed['resumed_after']}" in ttp.log_text()


def test_killed_before_round_1_it_trains_from_the_start_to_the_same_weights(ttp, grid):
    before_first = _train_and_kill(
        ttp, grid, "resume_before_first", "FedProx", lambda job: job["state"] == "running" and not _checkpointed(1)(job)
    )
    assert not before_first.get("rounds_checkpointed")
    _resume_and_compare(ttp, grid, "resume_before_first", "FedProx", 0)


def test_killed_while_sending_the_global_weights_it_resumes_to_the_same_weights(ttp, grid):
    collab = "resume_mid_send"
    weights = sum(t.numel() * t.element_size() for t in _reference(grid, "FedAvg").values())
    relay = Relay(RELAY, WORKER_HOSTS["worker_2"], rate_bytes_s=weights * 2.5)  # one model in ~0.4 s
    try:
        driver = ttp.driver()
        _prepare(driver, collab, "FedAvg", second_host=RELAY)
        # the channel to worker_2 carries the TLS and WebSocket handshakes (a few KiB), then each
        # round's global weights: halfway through the third round's, the TTP is killed
        relay.at_byte(int(2.5 * weights), ttp.kill)
        _train_in_background(driver, collab)
        assert relay.fired.wait(60), "the third round's weights never went out"
        _resume_and_compare(ttp, grid, collab, "FedAvg", 2)
    finally:
        relay.close()


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_one_before(ttp, grid):
    collab = "resume_corrupt"
    seen = _train_and_kill(ttp, grid, collab, "FedProx", _checkpointed(3))
    newest = seen["rounds_checkpointed"] - 1  # round_<r> counts from 0
    checkpoints = ttp.outputs / collab / "p" / "e" / "r" / "checkpoints"
    model = checkpoints / f"round_{newest}" / "global_model.safetensors"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the weights: the digest no longer matches
    model.write_bytes(bytes(raw))
    # resumed from the checkpoint before it (each Worker kept its state of that round too)
    _resume_and_compare(ttp, grid, collab, "FedProx", newest + 1, resumed_after=newest)
    assert f"checkpoint {checkpoints / f'round_{newest}'} skipped for the one before it: corrupt" in ttp.log_text()


def test_checkpoints_keep_the_newest_rounds_and_the_best_and_workers_their_states(grid):
    driver = grid.driver()
    collab = "retention"
    _prepare(driver, collab, "FedAvg")
    driver.runs.create(
        collab_id=collab, project_id="p", expt_id="e", run_id="keep_1", algorithm="FedAvg", **RECIPE, keep_checkpoints=1
    )
    model = driver.models.create(collab_id=collab, project_id="p", expt_id="e", run_id="keep_1")["data"][0]
    evaluate = {int(r): loss for r, loss in model["global"]["loss_history"]["evaluate"].items()}
    known = {r: loss for r, loss in evaluate.items() if r < ROUNDS - 1}  # known when the last round was sealed
    kept = {ROUNDS - 1, min(known, key=known.__getitem__)}
    out = grid.ttp_outputs / collab / "p" / "e" / "keep_1" / "checkpoints"
    assert {p.name for p in out.iterdir()} == {f"round_{r}" for r in kept}
    for folder in out.iterdir():
        assert {p.name for p in folder.iterdir()} == {
            "global_model.safetensors",
            "global_loss_history.json",
            "state.json",
            "manifest.json",
        }
    # each Worker keeps its training state of the newest keep + 1 rounds, never pickled
    states = grid.workspace / "worker_1" / "outputs" / collab / "p" / "e" / "keep_1" / "checkpoints"
    assert sorted(p.name for p in states.iterdir()) == [f"round_{ROUNDS - 2}", f"round_{ROUNDS - 1}"]
    assert {p.name for p in (states / f"round_{ROUNDS - 1}").iterdir()} == {
        "training_state.safetensors",
        "training_state.json",
        "manifest.json",
    }


def test_a_second_start_of_a_running_training_answers_its_job_and_trains_once(ttp):
    collab = "start_twice"
    driver = ttp.driver()
    _prepare(driver, collab, "FedAvg")
    first = _train_in_background(driver, collab)
    deadline = time.monotonic() + 60
    while not any(j["state"] == "running" for j in ttp.training(collab, "r")):
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(0.02)
    again = ttp.http.post(f"{ttp.base}/ttp/train/collaborations/{collab}/projects/p/models/e/r", json={})
    assert again.status_code == 202, again.text
    (job,) = ttp.training(collab, "r")
    assert again.json()["data"] == [
        {"job_id": job["job_id"], "kind": "training", "keys": job["keys"], "state": "running"}
    ]
    # the project's training (its only run is open) and the Driver's call answer the same job
    whole = ttp.driver().models.create(collab_id=collab, project_id="p")
    assert whole["status"] == 202 and whole["data"][0]["job_id"] == job["job_id"]
    first.join(120)
    (done,) = ttp.training(collab, "r")  # one job, trained once, completed
    assert done["state"] == "completed" and done["round"] == ROUNDS
    model = driver.models.read(collab_id=collab, project_id="p", expt_id="e", run_id="r")["data"][0]
    assert model["rounds_completed"] == ROUNDS and len(model["global"]["loss_history"]["train"]) == ROUNDS
    # once completed, a start trains again (from round 1)
    assert ttp.driver().models.create(collab_id=collab, project_id="p", expt_id="e", run_id="r")["status"] == 201
