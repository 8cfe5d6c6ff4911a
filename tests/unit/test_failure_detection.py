"""Failure detection, one module at a time: the round's deadline, a party gone from a round (no
reply by the deadline, a closed channel, a broken send) and the quorum on the TTP's `GridRun`; a
Worker's sessions as leases, closed from any thread, never taken over while live; the Driver's
long calls given up once the server stops answering."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosedError

from synergos import Driver, ServerUnresponsive
from synergos_core.errors import Conflict, FederationError, InvalidRequest, NotFound, PartyDropped
from synergos_core.federation import broadcast_state
from synergos_core.protocol import Train, Update, as_header, reply_to
from synergos_core.schemas import RunHyperparameters
from synergos_core.settings import FederationLimits
from synergos_core.wire import encode_control
from synergos_ttp.grid import GridNode, GridRun
from synergos_worker.sessions import RunSession, SessionRegistry

KEYS = ("c", "p", "e", "r")
TRAINING = {"n_samples": 40, "train_loss": 0.25, "epoch_losses": [0.25], "compute_s": 0.01, "lrs": [0.1]}
DECLARED = {"train": 40, "evaluate": 10}


# ---- the round's deadline ----


def test_a_rounds_deadline_is_derived_from_the_work_and_tightened_by_measured_rounds():
    limits = FederationLimits(round_base_s=60, round_sample_epoch_s=0.01, round_factor=5)
    assert limits.round_deadline(1000) == 70  # base + 1000 sample-epochs at 10 ms
    assert limits.round_deadline(1000, slowest_s=2.0) == 60  # 5 x 2 s, never below the base
    assert limits.round_deadline(1000, slowest_s=13.0) == 65  # 5 x 13 s, within the work's allowance
    assert limits.round_deadline(1000, slowest_s=100.0) == 70
    assert FederationLimits(round_factor=0).round_deadline(0, slowest_s=1.0) == 60  # the measure is off
    assert FederationLimits(round_timeout_s=7).round_deadline(10**9, slowest_s=1.0) == 7  # a fixed deadline
    assert FederationLimits().round_timeout_s is None  # no fixed hour-long default any more


def test_the_defaults_bound_detection_in_seconds(monkeypatch):
    for name in ("PING_INTERVAL_S", "PING_TIMEOUT_S", "CLOSE_TIMEOUT_S", "TERMINATE_TIMEOUT_S", "ROUND_TIMEOUT_S"):
        monkeypatch.delenv(f"SYNERGOS_FED_{name}", raising=False)
    limits = FederationLimits()
    assert limits.ping_interval_s + limits.ping_timeout_s <= 15
    assert limits.close_timeout_s + limits.terminate_timeout_s <= 10
    monkeypatch.setenv("SYNERGOS_FED_ROUND_BASE_S", "3")
    monkeypatch.setenv("SYNERGOS_FED_SESSION_LEASE_S", "2")
    assert FederationLimits().round_deadline(0) == 3 and FederationLimits().session_lease_s == 2


def test_min_workers_is_a_typed_run_field():
    assert RunHyperparameters.of({}).min_workers is None
    assert RunHyperparameters.of({"min_workers": 2}).min_workers == 2
    with pytest.raises(ValidationError):
        RunHyperparameters.of({"min_workers": 0})


# ---- the TTP: parties gone from a round, and the quorum ----


class Channel:
    """A party's side of the channel: the frames it sent, read in order; then silence (a frozen
    party) or a closed channel."""

    def __init__(self, closes: bool = False) -> None:
        self.frames: list[bytes] = []
        self.closes = closes
        self.sent: list[bytes] = []

    async def recv(self) -> bytes:
        if self.frames:
            return self.frames.pop(0)
        if self.closes:
            raise ConnectionClosedError(None, None)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(self, frame: bytes) -> None:
        if self.closes:
            raise ConnectionClosedError(None, None)
        self.sent.append(frame)


def _grid(channels: dict[str, Channel], **hyperparameters: Any) -> GridRun:
    limits = FederationLimits(round_base_s=0.3, round_sample_epoch_s=0, rejoin_interval_s=3600, shard_bytes=1024)
    nodes = [GridNode(pid, "127.0.0.1", 8020, 5000, {}) for pid in channels]
    grid = GridRun(KEYS, nodes, "classify", [], hyperparameters, limits, http=None)  # type: ignore[arg-type]
    grid.channels = channels  # type: ignore[assignment]
    grid.counts = {pid: dict(DECLARED) for pid in channels}
    grid._start_rejoin = lambda pid: None  # type: ignore[method-assign]  # no Worker to reconnect to here
    return grid


def _round(grid: GridRun, answering: list[str]) -> tuple[dict, dict, float]:
    async def collect() -> tuple[dict, dict, float]:
        grid.begin(epochs=1)
        sent = {pid: grid.request(Train, 0, epochs=1) for pid in grid.channels}
        for pid in answering:
            header = {**as_header(reply_to(sent[pid], Update, **TRAINING)), "shards": 0}
            grid.channels[pid].frames.append(encode_control(header))  # type: ignore[attr-defined]
        started = time.monotonic()
        accepted, left_out = await grid.screened(sent, Update)
        return accepted, left_out, time.monotonic() - started

    return asyncio.run(collect())


def test_a_silent_party_is_dropped_at_the_deadline_and_a_closed_one_at_once():
    grid = _grid({"alive": Channel(), "silent": Channel(), "closed": Channel(closes=True)})
    accepted, left_out, took = _round(grid, answering=["alive"])
    assert list(accepted) == ["alive"]
    assert took < 1.0  # the deadline (0.3 s), not the hour the old default waited
    assert {pid: e.code for pid, e in left_out.items()} == {
        "silent": "federation.timeout",
        "closed": "worker.disconnected",
    }
    assert all(isinstance(e, PartyDropped) and e.participant in e.detail for e in left_out.values())
    assert "deadline" in left_out["silent"].detail and "train of round 0" in left_out["closed"].detail
    assert set(grid.channels) == {"alive"}  # the others' channels are closed and gone
    # the next round records them as still out, without waiting for them
    assert set(grid.begin(epochs=1)) == {"silent", "closed"}


def test_without_min_workers_a_dropout_fails_the_round_naming_the_party():
    grid = _grid({"alive": Channel(), "silent": Channel()})
    accepted, left_out, _ = _round(grid, answering=["alive"])
    with pytest.raises(FederationError) as info:
        grid.quorum(0, accepted, left_out)
    assert info.value.code == "federation.timeout"
    assert "silent" in info.value.detail and "min_workers" in info.value.detail


def test_with_min_workers_a_round_goes_on_while_enough_parties_answer():
    grid = _grid({"a": Channel(), "b": Channel(), "silent": Channel()}, min_workers=2)
    accepted, left_out, _ = _round(grid, answering=["a", "b"])
    grid.quorum(0, accepted, left_out)  # 2 of 3: enough
    with pytest.raises(FederationError) as info:
        grid.quorum(0, {"a": accepted["a"]}, {**left_out, "b": PartyDropped("b's node dropped", participant="b")})
    assert info.value.code == "federation.no_quorum"
    assert "min_workers=2" in info.value.detail and "silent" in info.value.detail and "b's node" in info.value.detail


def test_a_min_workers_the_parties_cannot_reach_is_refused_before_any_round():
    grid = _grid({"a": Channel(), "b": Channel()}, min_workers=3)
    with pytest.raises(InvalidRequest) as info:
        grid.require_quorum(["a", "b"])
    assert info.value.code == "run.invalid_combination" and "min_workers=3" in info.value.detail


def test_a_broadcast_leaves_out_only_the_party_whose_channel_breaks():
    good, broken = Channel(), Channel(closes=True)
    grid = _grid({"good": good, "broken": broken})

    async def send() -> dict:
        grid.begin()
        return await grid.broadcast(Train, 0, {"w": torch.ones(1000)}, epochs=1)

    sent = asyncio.run(send())
    assert set(sent) == {"good", "broken"}
    assert len(good.sent) == 1 + 4  # the header and every shard
    assert set(grid.channels) == {"good"} and grid.gone["broken"].code == "worker.disconnected"


def test_broadcast_state_without_a_collector_raises_the_first_failure():
    with pytest.raises(ConnectionClosedError):
        asyncio.run(
            broadcast_state(
                [(Channel(closes=True), Train(run="r", round=0, nonce="n" * 16, epochs=1))], {"w": torch.ones(4)}, 1024
            )
        )


# ---- the Worker: sessions are leases, closed on their loop, never taken over while live ----


class Connection:
    """A session's open channel: records on which thread, and loop, it was closed."""

    def __init__(self) -> None:
        self.closed_on: tuple[str, asyncio.AbstractEventLoop] | None = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_on = (threading.current_thread().name, asyncio.get_running_loop())


def _session(registry: SessionRegistry, key: tuple[str, str, str, str], token: str = "t" * 32) -> RunSession:
    session = RunSession(key=key, token=token, participant_id="p1", action="classify", trainer=None, counts={})  # type: ignore[arg-type]
    registry._sessions[key] = session
    return session


class _Request:
    def __init__(self, token: str) -> None:
        self.token = token


def test_a_session_is_closed_on_its_loop_from_a_thread_without_one(tmp_path):
    """What crashed a Worker: a second initialise (on a thread) replacing a session whose channel
    was open ("There is no current event loop in thread 'asyncio_0'")."""
    registry = SessionRegistry(tmp_path)
    connection = Connection()

    async def serve() -> None:
        registry.bind(asyncio.get_running_loop())
        _session(registry, KEYS).connection = connection
        await asyncio.to_thread(registry.close, KEYS)  # as the routes' threads do
        for _ in range(50):
            if connection.closed_on is not None:
                return
            await asyncio.sleep(0.01)

    asyncio.run(serve())
    assert connection.closed_on is not None and connection.closed_on[0] == "MainThread"
    assert registry.count() == 0


def test_a_live_session_is_not_taken_over_and_a_stale_one_is(tmp_path):
    registry = SessionRegistry(tmp_path)
    live = _session(registry, KEYS, token="a" * 32)
    live.connection = Connection()
    with pytest.raises(Conflict) as info:
        registry._refuse_takeover(KEYS, _Request("b" * 32))  # type: ignore[arg-type]
    assert info.value.code == "session.busy" and info.value.status == 409 and "c/p/e/r" in info.value.detail
    assert registry._refuse_takeover(KEYS, _Request("a" * 32)) is live  # type: ignore[arg-type]  # its own token
    live.connection = None  # its channel ended: stale, to be replaced
    assert registry._refuse_takeover(KEYS, _Request("b" * 32)) is None  # type: ignore[arg-type]


def test_a_session_without_traffic_expires_and_a_connected_one_does_not(tmp_path):
    registry = SessionRegistry(tmp_path)
    idle = _session(registry, ("c", "p", "e", "idle"))
    busy = _session(registry, ("c", "p", "e", "busy"))
    fresh = _session(registry, ("c", "p", "e", "fresh"))
    idle.last_seen = busy.last_seen = time.monotonic() - 100
    busy.connection = Connection()
    fresh.touch()
    assert registry.expire(lease_s=50) == [("c", "p", "e", "idle")]
    assert registry.count() == 2 and registry.find(("c", "p", "e", "idle")) is None


def test_terminate_with_a_token_ends_only_the_session_it_opened(tmp_path):
    registry = SessionRegistry(tmp_path)
    _session(registry, KEYS, token="new" * 11)
    with pytest.raises(NotFound):
        registry.close(KEYS, token="old" * 11)
    assert registry.count() == 1
    registry.close(KEYS, token="new" * 11)
    assert registry.count() == 0


# ---- the Driver: long calls are bounded by the server's liveness ----


def _server(post_takes_s: float, healthy: bool) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            if not healthy:
                raise httpx.ConnectTimeout("no answer", request=request)
            return httpx.Response(200, json={"success": 1, "data": {"status": "ok"}})
        time.sleep(post_takes_s)
        return httpx.Response(200, json={"success": 1, "status": 200, "data": [{"trained": True}]})

    return httpx.MockTransport(handle)


def test_a_long_call_to_a_frozen_server_raises_a_clear_error_in_bounded_time():
    driver = Driver("10.1.2.3", 5000, transport=_server(30, healthy=False), show_progress=False, liveness_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(ServerUnresponsive) as info:
        driver.models.create(collab_id="c", project_id="p", expt_id="e", run_id="r")
    assert time.monotonic() - started < 3
    error = info.value
    assert error.code == "connection.unresponsive" and "waiting for the training of c/p" in error.detail
    assert "/health" in error.detail and error.waited_for == "waiting for the training of c/p"
    assert isinstance(error, ServerUnresponsive) and error.address == "http://10.1.2.3:5000"


def test_a_long_call_to_a_server_that_answers_its_probes_waits_for_the_answer():
    driver = Driver("10.1.2.3", 5000, transport=_server(1.5, healthy=True), show_progress=False, liveness_timeout=0.6)
    answer = driver.models.create(collab_id="c", project_id="p", expt_id="e", run_id="r")
    assert answer["data"] == [{"trained": True}]
