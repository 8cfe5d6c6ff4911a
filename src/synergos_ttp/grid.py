"""A run on one federated grid, seen from the TTP: initialise every node, open the authenticated
channels, exchange requests and replies, and always terminate, even on failure."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import httpx
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from synergos_core.errors import ErrorCode, FederationError, RefusedUpdate, SynergosError, UpstreamError
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

    async def __aenter__(self) -> GridRun:
        try:
            await asyncio.gather(*(self._initialise(node) for node in self.nodes))
            await asyncio.gather(*(self._connect(node) for node in self.nodes))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _pid, ws in list(self.channels.items()):
            try:
                await send_message(ws, self.request(Close, self._round))
            except (ConnectionClosed, OSError):
                pass
            await ws.close()
        self.channels.clear()
        path = "/worker/terminate/" + "/".join(self.keys)
        for node in self._initialised:
            try:
                await worker_call(self.http, node, path)
            except SynergosError as error:
                log.warning("could not terminate run %s on %s: %s", self.run, node.where, error.detail)
        self._initialised.clear()

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
        self._initialised.append(node)
        self.counts[node.participant_id] = data.get("counts", {})

    async def _connect(self, node: GridNode) -> None:
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
        self.channels[node.participant_id] = ws

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
        """Send the same weights to every (or the named) node; returns the requests sent, by participant."""
        targets = participants or list(self.channels)
        sent = {pid: self.request(kind, round_index, **fields) for pid in targets}
        try:
            await broadcast_state([(self.channels[pid], sent[pid]) for pid in targets], state, self.limits.shard_bytes)
        except ConnectionClosed as exc:
            raise FederationError(
                f"a node closed its channel while receiving weights ({exc.rcvd})", ErrorCode.WORKER_DISCONNECTED
            ) from None
        return sent

    async def reply(self, pid: str, request: RequestMessage, expect: type[R]) -> R:
        """The node's reply to `request`, parsed and checked for run, nonce echo and kind; an `Error`
        reply becomes an exception naming the participant.

        A reply that is well-formed but refused for what it holds (a non-finite number, a sample
        count other than the one the party declared when its session opened, a nonce it used
        before) raises `RefusedUpdate`, with the tensor frames it still announces: `refusable`
        drops those and lets the run go on without that reply."""
        ws = self.channels[pid]
        try:
            header = await recv_header(ws, self.limits.round_timeout_s)
        except ConnectionClosed:
            raise FederationError(
                f"{pid}'s node dropped its channel during {request.op} of round {request.round}",
                ErrorCode.WORKER_DISCONNECTED,
            ) from None
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

    async def refusable(self, pid: str, work: Awaitable[T]) -> T | RefusedUpdate:
        """What `work` (receiving `pid`'s reply) gives, or the `RefusedUpdate` it raised once the
        tensor frames the refused reply announced are read and dropped, so that the channel stays
        in step for the next request. A refusal whose frames cannot be known is raised."""
        try:
            return await work
        except RefusedUpdate as refused:
            if refused.pending is None:
                raise
            for _ in range(refused.pending):
                await recv_frame(self.channels[pid], self.limits.round_timeout_s)
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
        results = await asyncio.gather(*(self.refusable(pid, self.reply(pid, sent[pid], expect)) for pid in pids))
        accepted = {pid: r for pid, r in zip(pids, results, strict=True) if not isinstance(r, RefusedUpdate)}
        refused = {pid: r for pid, r in zip(pids, results, strict=True) if isinstance(r, RefusedUpdate)}
        return accepted, refused
