"""The TTP ⇄ Worker federation protocol, shared by both ends.

One WebSocket per (participant node, run) at `ws://<host>:<port>/federation/<c>/<p>/<e>/<r>`,
authenticated by the run token the TTP handed over in `initialise` (`Authorization: Bearer`).
The TTP is the client and speaks first; every request gets exactly one reply.

Requests (TTP -> Worker), each a control header, then `shards` tensor frames (global weights):
    {"op": "train", "round": r, "epochs": E, "evaluate": bool}   -> "update"
        load the global weights; if `evaluate`, first report their loss on the `evaluate` data;
        then train locally for E epochs and send back the local weights.
    {"op": "evaluate", "round": r, "meta": m}                    -> "loss"
    {"op": "infer", "round": r, "meta": m}                       -> "metrics"
        predict on meta m, keep the predictions in the Worker's outputs, and return only the
        statistics computed against the Worker's own labels.
    {"op": "close"}                                              -> "closed"
Replies (Worker -> TTP): "update" (+ shards: local weights), "loss", "metrics", "closed", or
    {"op": "error", "code": ..., "detail": ...}.

Every header carries `run` ("c/p/e/r"), `round`, a fresh `nonce` and, on replies, `reply_to`;
each side accepts a nonce once and never a round older than the last one it saw.
"""
from __future__ import annotations

import asyncio
import secrets
from collections import deque
from typing import Any, AsyncIterator

import torch

from .errors import FederationError
from .wire import (Layout, decode_control, decode_shard, describe_layout, encode_control, encode_shard, parse_layout,
                   write_slices)

WS_PATH_PREFIX = "/federation/"


def run_path(c: str, p: str, e: str, r: str) -> str:
    return f"{WS_PATH_PREFIX}{c}/{p}/{e}/{r}"


def run_name(c: str, p: str, e: str, r: str) -> str:
    return f"{c}/{p}/{e}/{r}"


def new_nonce() -> str:
    return secrets.token_hex(16)


def new_token() -> str:
    return secrets.token_urlsafe(32)


class ReplayGuard:
    """Accepts each nonce once, only for this run, and never a round older than the last seen."""

    def __init__(self, run: str, memory: int = 4096) -> None:
        self.run = run
        self.round = -1
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._memory = memory

    def check(self, header: dict) -> None:
        nonce = header.get("nonce")
        if header.get("run") != self.run:
            raise FederationError(f"message for run {header.get('run')!r} on the channel of {self.run!r}",
                                  "federation.wrong_run")
        if not isinstance(nonce, str) or len(nonce) < 16 or nonce in self._seen:
            raise FederationError("replayed or missing nonce", "federation.replay")
        rnd = header.get("round", 0)
        if not isinstance(rnd, int) or rnd < self.round:
            raise FederationError(f"stale round {rnd!r} (current {self.round})", "federation.replay")
        self.round = rnd
        self._seen.add(nonce)
        self._order.append(nonce)
        if len(self._order) > self._memory:
            self._seen.discard(self._order.popleft())


async def recv_frame(ws: Any, timeout: float | None) -> bytes:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise FederationError(f"no message within {timeout:.0f} s", "federation.timeout") from None
    if isinstance(frame, str):
        raise FederationError("text frames are not part of the protocol", "federation.protocol")
    return frame


async def recv_header(ws: Any, timeout: float | None) -> dict:
    return decode_control(await recv_frame(ws, timeout))


async def iter_shards(ws: Any, count: int, layout: Layout, timeout: float | None
                      ) -> AsyncIterator[list[tuple[str, int, torch.Tensor]]]:
    for _ in range(count):
        yield decode_shard(await recv_frame(ws, timeout), layout)


async def recv_into(ws: Any, count: int, layout: Layout, target: dict[str, torch.Tensor],
                    timeout: float | None) -> None:
    """Receive `count` shards straight into `target`; every value of `layout` must arrive."""
    covered = 0
    async for slices in iter_shards(ws, count, layout, timeout):
        write_slices(target, slices)
        covered += sum(t.numel() for _, _, t in slices)
    expected = layout.total()
    if covered != expected:
        raise FederationError(f"received {covered} of {expected} values", "federation.bad_update")


async def send_header(ws: Any, header: dict) -> None:
    await ws.send(encode_control(header))


async def send_state(ws: Any, header: dict, state: dict[str, torch.Tensor] | None, shard_bytes: int) -> None:
    """Send a header and, if given, the state dict as shards (header['shards'] is filled in)."""
    plan = Layout.of(state).plan(shard_bytes) if state is not None else []
    await send_header(ws, {**header, "shards": len(plan)})
    for pieces in plan:
        await ws.send(encode_shard(state, pieces))


async def broadcast_state(channels: list[tuple[Any, dict]], state: dict[str, torch.Tensor],
                          shard_bytes: int) -> None:
    """Send one state to many peers, each with its own header, encoding every shard only once."""
    plan = Layout.of(state).plan(shard_bytes)
    await asyncio.gather(*(send_header(ws, {**h, "shards": len(plan)}) for ws, h in channels))
    for pieces in plan:
        frame = encode_shard(state, pieces)
        await asyncio.gather(*(ws.send(frame) for ws, _ in channels))


async def send_tensors(ws: Any, header: dict, tensors: dict[str, torch.Tensor], shard_bytes: int) -> None:
    """Send tensors whose shapes the receiver cannot know in advance; the header announces them."""
    await send_state(ws, {**header, "layout": describe_layout(Layout.of(tensors))}, tensors, shard_bytes)


async def recv_tensors(ws: Any, header: dict, allowed: set[str], max_bytes: int, timeout: float | None
                       ) -> dict[str, torch.Tensor]:
    """Receive the tensors announced in `header['layout']` (empty when it announces none)."""
    if not header.get("shards"):
        return {}
    layout = parse_layout(header.get("layout"), allowed, max_bytes)
    tensors = {name: torch.empty(shape, dtype=dtype) for name, dtype, shape in layout.entries}
    await recv_into(ws, int(header["shards"]), layout, tensors, timeout)
    return tensors
