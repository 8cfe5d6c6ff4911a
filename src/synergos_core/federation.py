"""The TTP ⇄ Worker federation channel, shared by both ends: paths, tokens, replay guard, and
the streaming of control messages and tensor shards.

One WebSocket per (participant node, run) at `ws://<host>:<port>/federation/<c>/<p>/<e>/<r>`,
authenticated by the run token the TTP handed over in `initialise` (`Authorization: Bearer`) and
versioned (`Synergos-Protocol`). The TTP is the client and speaks first; every request gets
exactly one reply. The messages themselves, their fields and op names are `protocol`'s; this
module sends a message's header (`as_header`) followed by the tensor frames it announces, and
fills in `shards` (and `layout`, for tensors the receiver cannot know in advance) as it plans
them. Each side accepts a nonce once and never a round older than the last one it saw, for as long
as the run's session lasts, whichever connection a message arrives on (`ReplayGuard`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import torch
from pydantic import BaseModel

from .errors import ErrorCode, FederationError
from .protocol import GktExtractor, GktFeatures, GktTrain, ReplyMessage, RequestMessage, as_header, new_nonce
from .wire import (
    Layout,
    decode_control,
    decode_shard,
    describe_layout,
    encode_control,
    encode_shard,
    parse_layout,
    write_slices,
)

__all__ = [
    "WS_PATH_PREFIX",
    "run_path",
    "run_name",
    "new_nonce",
    "new_token",
    "NONCE_CAPACITY",
    "ReplayGuard",
    "recv_frame",
    "recv_header",
    "iter_shards",
    "recv_into",
    "send_header",
    "send_message",
    "send_state",
    "broadcast_state",
    "send_tensors",
    "recv_tensors",
]

WS_PATH_PREFIX = "/federation/"


def run_path(c: str, p: str, e: str, r: str) -> str:
    return f"{WS_PATH_PREFIX}{c}/{p}/{e}/{r}"


def run_name(c: str, p: str, e: str, r: str) -> str:
    return f"{c}/{p}/{e}/{r}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


# Nonces a guard holds for one round at most: far more messages than a round exchanges (a few per
# party), so reaching it means a peer is flooding; its messages are then refused, never forgotten.
NONCE_CAPACITY = 1_000_000


class ReplayGuard:
    """Accepts each nonce once, only for this run, and never a round older than the last seen.

    One guard lives as long as a federation session, across all of its connections (the Worker's
    `RunSession`, the TTP's `GridRun` per participant), so a message captured on one connection
    and replayed on another is refused like one replayed on the same connection.

    Memory stays bounded without forgetting a nonce that could still be accepted: a message of an
    older round is refused by the round rule whatever its nonce, so only the nonces of the
    current round are kept (they are dropped when a later round begins); and at most `capacity`
    of them (default 1,000,000, some 100 MB at the very worst): past that, further messages of
    the round are refused rather than a nonce forgotten.
    """

    def __init__(self, run: str, capacity: int = NONCE_CAPACITY) -> None:
        self.run = run
        self.round = -1
        self._seen: set[str] = set()
        self._capacity = capacity

    def check(self, message: RequestMessage | ReplyMessage) -> None:
        """`message`: a parsed protocol message (its run, round and nonce are already well-typed)."""
        nonce, rnd = message.nonce, message.round
        if message.run != self.run:
            raise FederationError(
                f"message for run {message.run!r} on the channel of {self.run!r}", ErrorCode.FEDERATION_WRONG_RUN
            )
        if rnd < self.round:
            raise FederationError(f"stale round {rnd!r} (current {self.round})", ErrorCode.FEDERATION_REPLAY)
        if rnd == self.round and nonce in self._seen:
            raise FederationError("replayed nonce", ErrorCode.FEDERATION_REPLAY)
        if rnd > self.round:
            self.round = rnd
            self._seen.clear()  # older rounds' messages are refused as stale: their nonces are not needed
        if len(self._seen) >= self._capacity:
            raise FederationError(
                f"more than {self._capacity} messages in round {rnd}: refused rather than forget a nonce",
                ErrorCode.FEDERATION_REPLAY,
            )
        self._seen.add(nonce)

    def __len__(self) -> int:
        """How many nonces are held (those of the current round)."""
        return len(self._seen)


async def recv_frame(ws: Any, timeout: float | None) -> bytes:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise FederationError(f"no message within {timeout:.0f} s", ErrorCode.FEDERATION_TIMEOUT) from None
    if isinstance(frame, str):
        raise FederationError("text frames are not part of the protocol", ErrorCode.FEDERATION_PROTOCOL)
    return bytes(frame) if not isinstance(frame, bytes) else frame


async def recv_header(ws: Any, timeout: float | None) -> dict[str, Any]:
    """The next control frame as a raw header: parse it with `protocol.parse_request`/`parse_reply`."""
    return decode_control(await recv_frame(ws, timeout))


async def iter_shards(
    ws: Any, count: int, layout: Layout, timeout: float | None
) -> AsyncIterator[list[tuple[str, int, torch.Tensor]]]:
    for _ in range(count):
        yield decode_shard(await recv_frame(ws, timeout), layout)


async def recv_into(
    ws: Any, count: int, layout: Layout, target: dict[str, torch.Tensor], timeout: float | None
) -> None:
    """Receive `count` shards straight into `target`; every value of `layout` must arrive."""
    covered = 0
    async for slices in iter_shards(ws, count, layout, timeout):
        write_slices(target, slices)
        covered += sum(t.numel() for _, _, t in slices)
    expected = layout.total()
    if covered != expected:
        raise FederationError(f"received {covered} of {expected} values", ErrorCode.FEDERATION_BAD_UPDATE)


async def send_header(ws: Any, header: dict[str, Any]) -> None:
    await ws.send(encode_control(header))


async def send_message(ws: Any, message: BaseModel) -> None:
    """Send a message that no tensor frame follows."""
    await send_header(ws, as_header(message))


def _sharded_header(message: BaseModel, shards: int, **codec: Any) -> dict[str, Any]:
    fields = type(message).model_fields
    if "shards" not in fields or not set(codec) <= set(fields):
        raise TypeError(f"a {type(message).__name__} message announces no tensor frames")
    return {**as_header(message), "shards": shards, **codec}


async def send_state(ws: Any, message: BaseModel, state: dict[str, torch.Tensor] | None, shard_bytes: int) -> None:
    """Send a message and, if given, the state dict as the shards it announces (`shards` is filled in)."""
    if state is None:
        await send_header(ws, _sharded_header(message, 0))
        return
    plan = Layout.of(state).plan(shard_bytes)
    await send_header(ws, _sharded_header(message, len(plan)))
    for pieces in plan:
        await ws.send(encode_shard(state, pieces))


async def broadcast_state(
    channels: list[tuple[Any, BaseModel]],
    state: dict[str, torch.Tensor],
    shard_bytes: int,
    *,
    timeout: float | None = None,
    failed: dict[int, BaseException] | None = None,
) -> None:
    """Send one state to many peers, each with its own message, encoding every shard only once.

    Each send must be done within `timeout` seconds. Without `failed`, the first failure is
    raised; with it, a peer whose send fails is recorded there (by its index in `channels`) and
    left out of the frames that follow, while the others still get the whole state."""
    plan = Layout.of(state).plan(shard_bytes)

    async def send(i: int, frame: bytes) -> None:
        if failed is not None and i in failed:
            return
        try:
            await asyncio.wait_for(channels[i][0].send(frame), timeout)
        except Exception as exc:  # with `failed`, one peer's broken channel leaves only that peer out
            if failed is None:
                raise
            failed[i] = exc

    headers = [encode_control(_sharded_header(m, len(plan))) for _, m in channels]
    await asyncio.gather(*(send(i, header) for i, header in enumerate(headers)))
    for pieces in plan:
        frame = encode_shard(state, pieces)
        await asyncio.gather(*(send(i, frame) for i in range(len(channels))))


async def send_tensors(
    ws: Any, message: GktTrain | GktFeatures | GktExtractor, tensors: dict[str, torch.Tensor], shard_bytes: int
) -> None:
    """Send tensors whose shapes the receiver cannot know in advance; `layout` announces them."""
    plan = Layout.of(tensors).plan(shard_bytes)
    await send_header(ws, _sharded_header(message, len(plan), layout=describe_layout(Layout.of(tensors))))
    for pieces in plan:
        await ws.send(encode_shard(tensors, pieces))


async def recv_tensors(
    ws: Any, message: GktTrain | GktFeatures | GktExtractor, allowed: set[str], max_bytes: int, timeout: float | None
) -> dict[str, torch.Tensor]:
    """Receive the tensors `message.layout` announces (none when it announces no shards)."""
    if not message.shards:
        return {}
    layout = parse_layout(message.layout, allowed, max_bytes)
    tensors = {name: torch.empty(shape, dtype=dtype) for name, dtype, shape in layout.entries}
    await recv_into(ws, message.shards, layout, tensors, timeout)
    return tensors
