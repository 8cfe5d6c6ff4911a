"""A run on one federated grid, seen from the TTP: initialise every node, open the authenticated
channels, exchange requests and replies, and always terminate, even on failure."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from synergos_core.errors import FederationError, SynergosError, UpstreamError
from synergos_core.federation import (broadcast_state, new_nonce, new_token, recv_header, run_name, run_path,
                                      send_header)
from synergos_core.settings import FederationLimits

log = logging.getLogger(__name__)
# Frames the TTP lets each channel read ahead of the aggregation, in bytes: the parties' updates are
# consumed shard by shard in lockstep, so a deeper queue only holds whole models in memory (16 frames
# of 8 MiB per party would be 128 MiB each) without making anything faster.
READ_AHEAD_BYTES = 8 * 1024 * 1024


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

    @property
    def rest(self) -> str:
        return f"http://{self.host}:{self.f_port}"

    @property
    def where(self) -> str:
        return f"{self.participant_id}'s node at {self.host}:{self.f_port}"


async def worker_call(http: httpx.AsyncClient, node: GridNode, path: str, body: dict | None = None) -> dict:
    """POST to a Worker's REST API; its own errors come back with the participant named."""
    try:
        resp = await http.post(f"{node.rest}{path}", json=body or {})
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{node.where} is unreachable ({type(exc).__name__})", "worker.unreachable") from None
    try:
        payload = resp.json()
    except ValueError:
        raise UpstreamError(f"{node.where} answered {resp.status_code} without an envelope", "worker.failed") from None
    if resp.status_code >= 400 or not payload.get("success"):
        error = payload.get("error") or {}
        detail = f"{node.participant_id}: {error.get('detail', 'request failed')}"
        exc = SynergosError(detail, error.get("code", "worker.failed"))
        exc.status = resp.status_code if 400 <= resp.status_code < 500 else 502
        exc.title = error.get("title", "Worker error")
        raise exc
    return payload.get("data") or {}


class GridRun:
    """`async with GridRun(...) as grid:` — channels to every node of one run."""

    def __init__(self, keys: tuple[str, str, str, str], nodes: list[GridNode], action: str, model: list[dict],
                 hyperparameters: dict[str, Any], limits: FederationLimits, http: httpx.AsyncClient) -> None:
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

    async def __aenter__(self) -> "GridRun":
        try:
            await asyncio.gather(*(self._initialise(node) for node in self.nodes))
            await asyncio.gather(*(self._connect(node) for node in self.nodes))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pid, ws in list(self.channels.items()):
            try:
                await send_header(ws, self.header("close"))
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
        body = {"action": self.action, "tags": node.tags, "alignments": node.alignment, "model": self.model,
                "hyperparameters": self.hyperparameters, "token": self.token,
                "participant_id": node.participant_id, "superset": node.superset,
                "preprocessing": node.preprocessing}
        data = await worker_call(self.http, node, "/worker/initialise/" + "/".join(self.keys), body)
        self._initialised.append(node)
        self.counts[node.participant_id] = data.get("counts", {})

    async def _connect(self, node: GridNode) -> None:
        uri = f"ws://{node.host}:{node.port}{run_path(*self.keys)}"
        read_ahead = min(self.limits.max_queue, max(1, READ_AHEAD_BYTES // max(1, self.limits.shard_bytes)))
        try:
            ws = await connect(uri, additional_headers={"Authorization": f"Bearer {self.token}"},
                               max_size=self.limits.max_frame_bytes, max_queue=read_ahead,
                               compression=None, open_timeout=self.limits.open_timeout_s,
                               ping_interval=self.limits.ping_interval_s, ping_timeout=self.limits.ping_timeout_s)
        except InvalidStatus as exc:
            raise FederationError(f"{node.participant_id}'s federation port refused the channel "
                                  f"({exc.response.status_code})", "federation.refused") from None
        except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
            raise FederationError(f"{node.participant_id}'s federation port {node.host}:{node.port} is unreachable "
                                  f"({type(exc).__name__})", "worker.unreachable") from None
        self.channels[node.participant_id] = ws

    # -- messaging --
    def header(self, op: str, round_index: int = 0, **fields: Any) -> dict:
        return {"op": op, "run": self.run, "round": round_index, "nonce": new_nonce(), **fields}

    async def broadcast(self, op: str, round_index: int, state: dict[str, torch.Tensor],
                        participants: list[str] | None = None, **fields: Any) -> dict[str, dict]:
        """Send the same weights to every (or the named) node; returns the headers sent, by participant."""
        targets = participants or list(self.channels)
        sent = {pid: self.header(op, round_index, **fields) for pid in targets}
        try:
            await broadcast_state([(self.channels[pid], sent[pid]) for pid in targets], state,
                                  self.limits.shard_bytes)
        except ConnectionClosed as exc:
            raise FederationError(f"a node closed its channel while receiving weights ({exc.rcvd})",
                                  "worker.disconnected") from None
        return sent

    async def reply(self, pid: str, request: dict, expect: str) -> dict:
        """The node's reply to `request`: checked for run, nonce echo and op; errors become exceptions."""
        ws = self.channels[pid]
        try:
            header = await recv_header(ws, self.limits.round_timeout_s)
        except ConnectionClosed:
            raise FederationError(f"{pid}'s node dropped its channel during {request['op']} of round "
                                  f"{request['round']}", "worker.disconnected") from None
        if header.get("op") == "error":
            raise UpstreamError(f"{pid}: {header.get('detail')}", header.get("code") or "worker.failed")
        if header.get("run") != self.run or header.get("reply_to") != request["nonce"] or header.get("op") != expect:
            raise FederationError(f"{pid} sent an unexpected or replayed reply", "federation.replay")
        return header

    async def replies(self, sent: dict[str, dict], expect: str) -> dict[str, dict]:
        pids = list(sent)
        headers = await asyncio.gather(*(self.reply(pid, sent[pid], expect) for pid in pids))
        return dict(zip(pids, headers))
