"""A run on one federated grid, seen from the TTP: initialise every node, open the authenticated
channels, exchange requests and replies, and always terminate, even on failure.

Failure detection: a party is gone from a round when its channel closes (a killed process), its
keepalive fails (`FederationLimits.ping_interval_s` + `ping_timeout_s`: a frozen process, a cut
link) or it has not answered by the round's deadline (`FederationLimits.round_deadline`, set by
`begin`). Its channel is closed at once (`drop`), its reply counts as `PartyDropped`, and the run
goes on without it while the run's `min_workers` allows (`quorum`); meanwhile the TTP tries to
open its channel again in the background, re-initialising its session first (a Worker that
restarted lost it), and re-admits it at the next round that begins (`readmit`), where it gets the
current global weights like every other party. Teardown waits a few seconds at most on a dead
Worker (`close_timeout_s`, `terminate_timeout_s`)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import httpx
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.protocol import State

from synergos_core.errors import (
    ErrorCode,
    FederationError,
    InvalidRequest,
    PartyDropped,
    RefusedUpdate,
    SynergosError,
    UpstreamError,
)
from synergos_core.federation import (
    ReplayGuard,
    broadcast_state,
    new_token,
    recv_frame,
    recv_header,
    run_name,
    run_path,
    send_message,
)
from synergos_core.finite import has_non_finite
from synergos_core.identity import Credentials, Role, peer_identity
from synergos_core.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    Assessment,
    Close,
    Error,
    Evaluate,
    GktEvaluate,
    GktFeatures,
    Loss,
    Metrics,
    ReplyMessage,
    RequestMessage,
    Update,
    new_nonce,
    parse_reply,
    version_mismatch,
)
from synergos_core.schemas import RunHyperparameters
from synergos_core.settings import FederationLimits

log = logging.getLogger(__name__)
# Frames the TTP lets each channel read ahead of the aggregation, in bytes: the parties' updates are
# consumed shard by shard in lockstep, so a deeper queue only holds whole models in memory (16 frames
# of 8 MiB per party would be 128 MiB each) without making anything faster.
READ_AHEAD_BYTES = 8 * 1024 * 1024
Q = TypeVar("Q", bound=RequestMessage)
R = TypeVar("R", bound=ReplyMessage)
T = TypeVar("T")
# what makes a party's reply refusable without failing the run (`RefusedUpdate`): faults of its
# content in a message that is otherwise well-formed, so the channel stays in step
REFUSABLE = frozenset({ErrorCode.FEDERATION_NON_FINITE, ErrorCode.FEDERATION_BAD_COUNT})


@dataclass
class GridNode:
    """One participant's node in this grid, with what it needs to load its data."""

    participant_id: str
    host: str
    port: int
    f_port: int
    tags: dict[str, list]
    alignment: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    superset: dict[str, list[str]] | None = None
    preprocessing: dict[str, Any] | None = None

    def rest(self, secure: bool) -> str:
        return f"{'https' if secure else 'http'}://{self.host}:{self.f_port}"

    @property
    def where(self) -> str:
        return f"{self.participant_id}'s node at {self.host}:{self.f_port}"


class WorkerClient(httpx.AsyncClient):
    """The TTP's client for its Workers' REST APIs and federation ports: TLS with the TTP's own
    identity, trusting only the collaboration CA (plain HTTP only in `--insecure` mode)."""

    def __init__(self, credentials: Credentials | None, timeout_s: float) -> None:
        self.tls: ssl.SSLContext | None = credentials.client_context() if credentials else None
        super().__init__(timeout=httpx.Timeout(timeout_s, connect=5.0), verify=self.tls or True)


async def worker_call(http: WorkerClient, node: GridNode, path: str, body: dict | None = None) -> dict:
    """POST to a Worker's REST API; its own errors come back with the participant named."""
    try:
        resp = await http.post(f"{node.rest(http.tls is not None)}{path}", json=body or {})
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"{node.where} is unreachable ({type(exc).__name__})", ErrorCode.WORKER_UNREACHABLE
        ) from None
    try:
        payload = resp.json()
    except ValueError:
        raise UpstreamError(
            f"{node.where} answered {resp.status_code} without an envelope", ErrorCode.WORKER_FAILED
        ) from None
    if resp.status_code >= 400 or not payload.get("success"):
        error = payload.get("error") or {}
        detail = f"{node.participant_id}: {error.get('detail', 'request failed')}"
        relayed = SynergosError(detail, error.get("code", ErrorCode.WORKER_FAILED))
        relayed.status = resp.status_code if 400 <= resp.status_code < 500 else 502
        relayed.title = error.get("title", "Worker error")
        raise relayed
    return payload.get("data") or {}


class GridRun:
    """`async with GridRun(...) as grid:` — channels to every node of one run."""

    def __init__(
        self,
        keys: tuple[str, str, str, str],
        nodes: list[GridNode],
        action: str,
        model: list[dict],
        hyperparameters: dict[str, Any],
        limits: FederationLimits,
        http: WorkerClient,
    ) -> None:
        self.keys = keys
        self.run = run_name(*keys)
        self.nodes = sorted(nodes, key=lambda n: n.participant_id)
        self.action = action
        self.model = model
        self.hyperparameters = hyperparameters
        self.limits = limits
        self.http = http
        self.token = new_token()
        self.channels: dict[str, ClientConnection] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self._initialised: list[GridNode] = []
        self._round = 0  # the latest round requested: a Worker refuses anything older, `close` included
        # per participant, the nonces and round of its replies for the whole run: a reply is accepted once
        self._guards: dict[str, ReplayGuard] = {}
        # failure detection: how many parties' valid updates a round needs (None: every party)
        self.min_workers = RunHyperparameters.of(hyperparameters).min_workers
        self._began = time.monotonic()  # when the replies being collected were asked for
        self._deadline: float | None = None  # by when they are due (None: no round begun)
        self._slowest: float | None = None  # the longest collection so far, in seconds
        # the parties gone from the run, by participant: (the round they dropped out of, why, code)
        self._out: dict[str, tuple[int, str, ErrorCode]] = {}
        # what a reply of a party gone from the replies being collected raises (`channel`)
        self.gone: dict[str, PartyDropped] = {}
        self._rejoining: dict[str, asyncio.Task[None]] = {}  # background attempts to open a channel again
        self._rejoined: dict[str, ClientConnection] = {}  # channels open again, admitted when a round begins
        self._closing = False

    async def __aenter__(self) -> GridRun:
        try:
            await asyncio.gather(*(self._initialise(node) for node in self.nodes))
            await asyncio.gather(*(self._connect(node) for node in self.nodes))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        for task in self._rejoining.values():
            task.cancel()
        await asyncio.gather(*self._rejoining.values(), return_exceptions=True)
        self._rejoining.clear()
        channels = [*self.channels.values(), *self._rejoined.values()]
        self.channels.clear()
        self._rejoined.clear()
        # every node at once, each bounded: a dead or frozen Worker holds teardown up a few seconds at most
        await asyncio.gather(*(self._close(ws) for ws in channels))
        path = "/worker/terminate/" + "/".join(self.keys)
        await asyncio.gather(*(self._terminate(node, path) for node in self._initialised))
        self._initialised.clear()

    async def _close(self, ws: ClientConnection) -> None:
        """Say goodbye at the latest round requested (a Worker refuses older messages, `close` too)
        and close the channel, within `close_timeout_s` each."""
        try:
            await asyncio.wait_for(send_message(ws, self.request(Close, self._round)), self.limits.close_timeout_s)
            await asyncio.wait_for(ws.close(), 2 * self.limits.close_timeout_s)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            if ws.state is not State.CLOSED:
                ws.transport.abort()

    async def _terminate(self, node: GridNode, path: str) -> None:
        try:
            # the token: a Worker ends only the session this run opened, never a newer one of the same run
            await asyncio.wait_for(
                worker_call(self.http, node, path, {"token": self.token}), self.limits.terminate_timeout_s
            )
        except TimeoutError:
            log.warning(
                "could not terminate run %s on %s: no answer within %.0f s",
                self.run,
                node.where,
                self.limits.terminate_timeout_s,
            )
        except SynergosError as error:
            log.warning("could not terminate run %s on %s: %s", self.run, node.where, error.detail)

    async def _initialise(self, node: GridNode) -> None:
        body = {
            "action": self.action,
            "tags": node.tags,
            "alignments": node.alignment,
            "model": self.model,
            "hyperparameters": self.hyperparameters,
            "token": self.token,
            "participant_id": node.participant_id,
            "superset": node.superset,
            "preprocessing": node.preprocessing,
        }
        data = await worker_call(self.http, node, "/worker/initialise/" + "/".join(self.keys), body)
        if node not in self._initialised:
            self._initialised.append(node)
        self.counts[node.participant_id] = data.get("counts", {})

    async def _connect(self, node: GridNode) -> None:
        self.channels[node.participant_id] = await self._open(node)

    async def _open(self, node: GridNode) -> ClientConnection:
        tls = self.http.tls
        uri = f"{'wss' if tls else 'ws'}://{node.host}:{node.port}{run_path(*self.keys)}"
        read_ahead = min(self.limits.max_queue, max(1, READ_AHEAD_BYTES // max(1, self.limits.shard_bytes)))
        headers = {"Authorization": f"Bearer {self.token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        try:
            ws = await connect(
                uri,
                additional_headers=headers,
                max_size=self.limits.max_frame_bytes,
                max_queue=read_ahead,
                compression=None,
                open_timeout=self.limits.open_timeout_s,
                ping_interval=self.limits.ping_interval_s,
                ping_timeout=self.limits.ping_timeout_s,
                close_timeout=self.limits.close_timeout_s,
                ssl=tls,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN) and tls is not None:
                said = exc.response.body.decode("utf-8", "replace").strip()[:300]
                raise FederationError(
                    f"{node.participant_id}'s node refused this TTP's identity: {said}", ErrorCode.FEDERATION_REFUSED
                ) from None
            if status == HTTPStatus.UPGRADE_REQUIRED:  # the Worker speaks another protocol version
                said = exc.response.body.decode("utf-8", "replace").strip()[:300]
                raise FederationError(
                    f"{node.participant_id}'s node refused the channel: {said}", ErrorCode.FEDERATION_PROTOCOL_MISMATCH
                ) from None
            raise FederationError(
                f"{node.participant_id}'s federation port refused the channel ({status})", ErrorCode.FEDERATION_REFUSED
            ) from None
        except (TimeoutError, OSError, WebSocketException) as exc:
            raise FederationError(
                f"{node.participant_id}'s federation port {node.host}:{node.port} is unreachable "
                f"({type(exc).__name__})",
                ErrorCode.WORKER_UNREACHABLE,
            ) from None
        if tls is not None:
            peer = peer_identity(ws.transport.get_extra_info("peercert"))
            if peer is None or peer.role is not Role.WORKER:
                await ws.close(1008, "not a Worker")
                raise FederationError(
                    f"{node.participant_id}'s federation port presented {peer or 'no identity'}, not a Worker's",
                    ErrorCode.FEDERATION_REFUSED,
                )
        spoken = ws.response.headers.get(PROTOCOL_HEADER) if ws.response is not None else None
        if spoken != str(PROTOCOL_VERSION):
            # a Worker that accepted without naming our version (an older one) would misread us
            await ws.close(1002, "protocol version mismatch")
            raise FederationError(
                f"{node.participant_id}'s node: {version_mismatch(spoken, peer='TTP')}",
                ErrorCode.FEDERATION_PROTOCOL_MISMATCH,
            )
        return ws

    # -- rounds: deadlines, dropouts, quorum, re-admission --
    @property
    def participants(self) -> list[str]:
        """Every party of the run, whether or not it is connected now."""
        return [node.participant_id for node in self.nodes]

    def begin(self, epochs: int = 0) -> dict[str, PartyDropped]:
        """Start collecting replies to requests of `epochs` local epochs (0: an assessment or an
        inference): re-admit the parties whose channels are open again, and set the deadline, from
        the work of the busiest party still in the run. Returns the parties still out, as their
        replies will raise (`PartyDropped`), so that the round records them."""
        self.readmit()
        work = max((self._work(pid, epochs) for pid in self.channels), default=0)
        self._began = time.monotonic()
        self._deadline = self._began + self.limits.round_deadline(work, self._slowest)
        self.gone = {
            pid: PartyDropped(f"{pid} has not come back since it dropped out in round {since}", code, participant=pid)
            for pid, (since, _, code) in sorted(self._out.items())
        }
        return dict(self.gone)

    def _work(self, pid: str, epochs: int) -> int:
        """Sample-epochs a request asks of `pid`: its epochs on its train data, and one pass over all of it."""
        counts = [n for meta in self.counts.get(pid, {}) if (n := self.declared(pid, meta))]
        return (self.declared(pid, "train") or 0) * epochs + sum(counts)

    def collected(self) -> None:
        """The replies asked for at `begin` are all in: their time bounds later deadlines (`round_factor`)."""
        took = time.monotonic() - self._began
        self._slowest = took if self._slowest is None else max(self._slowest, took)

    @property
    def allowed_s(self) -> float:
        """How long the replies being collected were given."""
        return (self._deadline - self._began) if self._deadline is not None else self.limits.round_deadline(0)

    def remaining(self) -> float:
        """Seconds until the replies being collected are due (the whole allowance when no round is begun)."""
        if self._deadline is None:
            return self.limits.round_deadline(0)
        return max(0.0, self._deadline - time.monotonic())

    def channel(self, pid: str) -> ClientConnection:
        """`pid`'s open channel; `PartyDropped` if it is gone from the run."""
        ws = self.channels.get(pid)
        if ws is None:
            gone = self.gone.get(pid)
            detail = gone.detail if gone is not None else f"{pid}'s node is not connected"
            raise PartyDropped(detail, gone.code if gone else ErrorCode.WORKER_DISCONNECTED, participant=pid)
        return ws

    def drop(self, pid: str, detail: str, code: ErrorCode) -> PartyDropped:
        """Leave `pid` out from now on: its channel is closed without waiting for it, its replies raise
        `PartyDropped` (this one), and its channel is tried again in the background."""
        ws = self.channels.pop(pid, None)
        if ws is None and pid in self.gone:
            return self.gone[pid]  # dropped already, for the first reason
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()  # a dead or frozen peer does not answer a closing handshake
        dropped = PartyDropped(detail, code, participant=pid)
        self.gone[pid] = dropped
        self._out[pid] = (self._round, detail, code)
        log.warning("run %s: %s; going on without it until it is back", self.run, detail)
        self._start_rejoin(pid)
        return dropped

    async def guarded(self, pid: str, during: str, work: Awaitable[T]) -> T:
        """What `work` on `pid`'s channel gives; if the channel closes or fails its keepalive, or the
        round's deadline passes first, `pid` is dropped (`drop`) and `PartyDropped` raised."""
        try:
            return await work
        except PartyDropped:
            raise
        except ConnectionClosed as exc:
            how = "stopped answering the keepalive" if "keepalive" in str(exc) else "dropped its channel"
            raise self.drop(pid, f"{pid}'s node {how} during {during}", ErrorCode.WORKER_DISCONNECTED) from None
        except OSError as exc:
            detail = f"{pid}'s node dropped its channel during {during} ({type(exc).__name__})"
            raise self.drop(pid, detail, ErrorCode.WORKER_DISCONNECTED) from None
        except (TimeoutError, FederationError) as exc:
            if isinstance(exc, FederationError) and exc.code is not ErrorCode.FEDERATION_TIMEOUT:
                raise
            detail = f"{pid}'s node missed the deadline of {during} ({self.allowed_s:.0f} s)"
            raise self.drop(pid, detail, ErrorCode.FEDERATION_TIMEOUT) from None

    async def deliver(self, pid: str, during: str, send: Callable[[ClientConnection], Awaitable[None]]) -> None:
        """Send to `pid` (`send(channel)`) by the round's deadline; a party that is gone, or goes
        while it is sent to, is dropped, and its reply will raise `PartyDropped`."""
        try:
            ws = self.channel(pid)
            await self.guarded(pid, during, asyncio.wait_for(send(ws), self.remaining()))
        except PartyDropped:
            pass

    def require_quorum(self, trainers: Collection[str]) -> None:
        """Refuse, before any round, a `min_workers` the run's parties cannot reach."""
        if self.min_workers is not None and self.min_workers > len(trainers):
            raise InvalidRequest(
                f"min_workers={self.min_workers} needs at least that many parties with train data; "
                f"this run has {len(trainers)}",
                ErrorCode.RUN_INVALID_COMBINATION,
            )

    def quorum(self, round_index: int, valid: Collection[str], left_out: Mapping[str, RefusedUpdate]) -> None:
        """Fail the run unless a round may go on with the parties in `valid`: with `min_workers`, at
        least that many; without, every party (one that dropped out fails the run). The reason
        names the parties left out and why."""
        dropped = {pid: e for pid, e in sorted(left_out.items()) if isinstance(e, PartyDropped)}
        if self.min_workers is None:
            if dropped:
                first = next(iter(dropped.values()))
                raise FederationError(
                    f"round {round_index}: {'; '.join(e.detail for e in dropped.values())} "
                    "(the run sets no min_workers, so every party must take part)",
                    first.code,
                )
            return
        if len(valid) < self.min_workers:
            why = "; ".join(e.detail for _, e in sorted(left_out.items())) or "no party answered"
            raise FederationError(
                f"round {round_index}: {len(valid)} valid update(s), fewer than min_workers={self.min_workers}: {why}",
                ErrorCode.FEDERATION_NO_QUORUM,
            )

    def readmit(self) -> list[str]:
        """Admit the parties whose channels are open again (they take part from the round that
        begins); returns them."""
        back = []
        for pid in sorted(self._rejoined):
            ws = self._rejoined.pop(pid)
            if ws.state is not State.OPEN:  # it went again before it was admitted
                self._start_rejoin(pid)
                continue
            self.channels[pid] = ws
            self.gone.pop(pid, None)
            since = self._out.pop(pid, (0, "", ErrorCode.WORKER_DISCONNECTED))[0]
            log.info("run %s: %s is back (out since round %d) and takes part again", self.run, pid, since)
            back.append(pid)
        return back

    def _start_rejoin(self, pid: str) -> None:
        if self._closing or pid in self._rejoined:
            return
        task = self._rejoining.get(pid)
        if task is not None and not task.done():
            return
        node = next(n for n in self.nodes if n.participant_id == pid)
        self._rejoining[pid] = asyncio.get_running_loop().create_task(self._rejoin(node), name=f"rejoin {pid}")

    async def _rejoin(self, node: GridNode) -> None:
        """Until it succeeds or the run ends: initialise `node` again with this run's token (a no-op for
        a session that lives on; a new one on a Worker that restarted) and open its channel."""
        while not self._closing:
            await asyncio.sleep(self.limits.rejoin_interval_s)
            try:
                await self._initialise(node)
                ws = await self._open(node)
            except (SynergosError, OSError, TimeoutError) as exc:
                log.debug("run %s: %s is not back yet: %s", self.run, node.participant_id, exc)
                continue
            if self._closing:
                ws.transport.abort()
                return
            self._rejoined[node.participant_id] = ws
            return

    # -- messaging --
    def request(self, kind: type[Q], round_index: int = 0, **fields: Any) -> Q:
        """A request of this run for `round_index`, with a fresh nonce."""
        self._round = max(self._round, round_index)
        return kind(run=self.run, round=round_index, nonce=new_nonce(), **fields)

    async def broadcast(
        self,
        kind: type[Q],
        round_index: int,
        state: dict[str, torch.Tensor],
        participants: list[str] | None = None,
        **fields: Any,
    ) -> dict[str, Q]:
        """Send the same weights to every (or the named) party; returns the request of each, by
        participant. A party that is gone, or goes while the weights are sent (its channel fails, or
        the round's deadline passes), is dropped: its reply raises `PartyDropped`."""
        targets = participants or self.participants
        sent = {pid: self.request(kind, round_index, **fields) for pid in targets}
        live = [pid for pid in targets if pid in self.channels]
        failed: dict[int, BaseException] = {}
        await broadcast_state(
            [(self.channels[pid], sent[pid]) for pid in live],
            state,
            self.limits.shard_bytes,
            timeout=self.remaining(),
            failed=failed,
        )
        for i, exc in sorted(failed.items()):
            try:
                await self.guarded(live[i], f"{kind.model_fields['op'].default} of round {round_index}", _raise(exc))
            except PartyDropped:
                pass
        return sent

    async def reply(self, pid: str, request: RequestMessage, expect: type[R]) -> R:
        """The node's reply to `request`, parsed and checked for run, nonce echo and kind; an `Error`
        reply becomes an exception naming the participant.

        A reply that is well-formed but refused for what it holds (a non-finite number, a sample
        count other than the one the party declared when its session opened, a nonce it used
        before) raises `RefusedUpdate`, with the tensor frames it still announces: `refusable`
        drops those and lets the run go on without that reply."""
        ws = self.channel(pid)
        header = await self.guarded(pid, f"{request.op} of round {request.round}", recv_header(ws, self.remaining()))
        try:
            reply = parse_reply(header)
        except FederationError as exc:
            if exc.code in REFUSABLE:
                shards = header.get("shards", 0)
                pending = shards if isinstance(shards, int) and not isinstance(shards, bool) and shards >= 0 else None
                raise RefusedUpdate(f"{pid}: {exc.detail}", exc.code, participant=pid, pending=pending) from None
            raise FederationError(f"{pid}: {exc.detail}", exc.code) from None
        if isinstance(reply, Error):
            raise UpstreamError(f"{pid}: {reply.detail}", reply.code or ErrorCode.WORKER_FAILED)
        if reply.run != self.run or reply.reply_to != request.nonce:
            raise FederationError(f"{pid} sent an unexpected or replayed reply", ErrorCode.FEDERATION_REPLAY)
        pending = getattr(reply, "shards", 0)
        try:
            self._guards.setdefault(pid, ReplayGuard(self.run)).check(reply)
        except FederationError as exc:
            raise RefusedUpdate(f"{pid}: {exc.detail}", exc.code, participant=pid, pending=pending) from None
        if not isinstance(reply, expect):
            raise FederationError(f"{pid} answered {request.op} with {reply.op}", ErrorCode.FEDERATION_PROTOCOL)
        fault = self._content_fault(pid, request, reply)
        if fault is not None:
            raise RefusedUpdate(f"{pid} {fault[1]}", fault[0], participant=pid, pending=pending)
        return reply

    def declared(self, pid: str, meta: str) -> int | None:
        """How many samples `pid`'s node declared for `meta` when its session opened (0: none;
        None: what it declared is not a count)."""
        count = self.counts.get(pid, {}).get(meta, 0)
        return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None

    def _content_fault(self, pid: str, request: RequestMessage, reply: ReplyMessage) -> tuple[ErrorCode, str] | None:
        """What is wrong with what a parsed reply says, if anything: sample counts must be the ones the
        party declared (a trainer's positive), metrics finite. (The protocol has refused non-finite
        losses and negative counts already.)"""
        counts: list[tuple[str, str, int]] = []  # (what, meta, reported)
        if isinstance(reply, (Update, GktFeatures)):
            if reply.n_samples <= 0:
                return ErrorCode.FEDERATION_BAD_COUNT, f"reported {reply.n_samples} training samples"
            counts.append(("training samples", "train", reply.n_samples))
        elif isinstance(reply, Loss) and isinstance(request, (Evaluate, GktEvaluate)):
            counts.append((f"{request.meta} samples", request.meta, reply.n_samples))
        elif isinstance(reply, Metrics):
            counts.append((f"{reply.meta} samples", reply.meta, reply.n_samples))
            if has_non_finite(reply.statistics):
                return ErrorCode.FEDERATION_NON_FINITE, f"sent non-finite {reply.meta} statistics"
        assessment: Assessment | None = getattr(reply, "assessment", None)
        if assessment is not None:
            counts.append(("assessed train samples", "train", assessment.train_samples))
            counts.append(("assessed evaluate samples", "evaluate", assessment.eval_samples))
        for what, meta, reported in counts:
            declared = self.declared(pid, meta)
            if reported != declared:
                said = "no valid count" if declared is None else declared
                return ErrorCode.FEDERATION_BAD_COUNT, f"reported {reported} {what}; its node declared {said}"
        return None

    async def refusable(self, pid: str, work: Awaitable[T], during: str = "the round") -> T | RefusedUpdate:
        """What `work` (receiving `pid`'s reply) gives, or the `RefusedUpdate` it raised once the
        tensor frames the refused reply announced are read and dropped, so that the channel stays
        in step for the next request. A refusal whose frames cannot be known is raised. A party
        gone (`guarded`) gives its `PartyDropped`."""
        try:
            return await self.guarded(pid, during, work)
        except PartyDropped as dropped:
            return dropped
        except RefusedUpdate as refused:
            if refused.pending is None:
                raise
            try:
                for _ in range(refused.pending):
                    await self.guarded(pid, during, recv_frame(self.channel(pid), self.remaining()))
            except PartyDropped as dropped:
                return dropped
            return refused

    async def replies(self, sent: dict[str, Q], expect: type[R]) -> dict[str, R]:
        """Every node's reply; any refusal fails them all (see `screened` to go on without it)."""
        pids = list(sent)
        replies = await asyncio.gather(*(self.reply(pid, sent[pid], expect) for pid in pids))
        return dict(zip(pids, replies, strict=False))

    async def screened(self, sent: dict[str, Q], expect: type[R]) -> tuple[dict[str, R], dict[str, RefusedUpdate]]:
        """Every node's reply, and apart the replies refused for what they hold (`refusable`), by
        participant; a failure of any other kind fails them all."""
        pids = list(sent)
        results = await asyncio.gather(
            *(
                self.refusable(pid, self.reply(pid, sent[pid], expect), f"{sent[pid].op} of round {sent[pid].round}")
                for pid in pids
            )
        )
        accepted = {pid: r for pid, r in zip(pids, results, strict=True) if not isinstance(r, RefusedUpdate)}
        refused = {pid: r for pid, r in zip(pids, results, strict=True) if isinstance(r, RefusedUpdate)}
        return accepted, refused


async def _raise(exc: BaseException) -> None:
    """`exc` raised where it is awaited (a failure that happened elsewhere, judged by `guarded`)."""
    raise exc
