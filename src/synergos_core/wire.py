"""The federation wire codec: JSON control frames and safetensors tensor shards, nothing else.

A frame is one WebSocket binary message whose first byte says what follows:

    0x01  control   UTF-8 JSON object (the message header)
    0x02  tensors   a safetensors buffer holding flat slices of state-dict tensors;
                    its metadata maps each tensor name to the slice's element offset

A state dict travels as one control frame followed by `shards` tensor frames. Shards are
planned from the state's layout so that each stays under `shard_bytes`, a large tensor being
split across several shards; the receiver writes every slice straight into a preallocated
tensor, so no side holds more than one shard per peer in flight. Decoding never executes
anything: the safetensors header is parsed as JSON and checked (names, dtypes, bounds)
before a byte is copied.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save as _st_save

from .errors import ErrorCode, FederationError

CONTROL = 0x01
TENSORS = 0x02
MAX_HEADER_BYTES = 1024 * 1024

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def encode_control(header: dict[str, Any]) -> bytes:
    return bytes([CONTROL]) + json.dumps(header, separators=(",", ":")).encode()


def decode_control(frame: bytes | bytearray | memoryview) -> dict[str, Any]:
    if not frame or frame[0] != CONTROL:
        raise FederationError("expected a control frame", ErrorCode.FEDERATION_PROTOCOL)
    if len(frame) > MAX_HEADER_BYTES:
        raise FederationError("control frame too large", ErrorCode.FEDERATION_PROTOCOL)
    try:
        header = json.loads(bytes(frame[1:]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FederationError("control frame is not JSON", ErrorCode.FEDERATION_PROTOCOL) from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise FederationError("control frame lacks an op", ErrorCode.FEDERATION_PROTOCOL)
    return header


@dataclass(frozen=True)
class Slice:
    name: str
    offset: int
    count: int


@dataclass(frozen=True)
class Layout:
    """Names, dtypes and shapes of a state dict, in a fixed order both sides agree on."""

    entries: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]

    @classmethod
    def of(cls, state: dict[str, torch.Tensor]) -> Layout:
        return cls(tuple((name, t.dtype, tuple(t.shape)) for name, t in state.items()))

    def numel(self, name: str) -> int:
        for n, _, shape in self.entries:
            if n == name:
                return _prod(shape)
        raise KeyError(name)

    def total(self) -> int:
        """How many values the whole state holds."""
        return sum(_prod(shape) for _, _, shape in self.entries)

    def plan(self, shard_bytes: int) -> list[list[Slice]]:
        """Split the state into shards of at most `shard_bytes` of tensor data."""
        shards: list[list[Slice]] = [[]]
        room = shard_bytes
        for name, dtype, shape in self.entries:
            itemsize = torch.empty((), dtype=dtype).element_size()
            left, offset = _prod(shape), 0
            while left > 0:
                if room < itemsize:
                    shards.append([])
                    room = shard_bytes
                take = min(left, room // itemsize)
                shards[-1].append(Slice(name, offset, take))
                offset += take
                left -= take
                room -= take * itemsize
        return [s for s in shards if s]


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# safetensors lays tensors out by dtype (its enum order, descending), then by name
_DTYPE_RANK = {
    name: rank for rank, name in enumerate(("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"))
}


def encode_shard(state: dict[str, torch.Tensor], pieces: list[Slice]) -> bytes:
    """One tensor frame: the tag byte, then a standard safetensors buffer of the pieces' flat slices.

    The buffer is what `safetensors.torch.save(slices, metadata=offsets)` writes (same header
    fields, layout order and 8-byte header padding), assembled with a single copy of the tensor
    data instead of safetensors' three (its buffer, `bytes()` of it, then the tag prefix).
    """
    slices = []
    for piece in pieces:
        flat = state[piece.name].detach().reshape(-1)
        tensor = flat[piece.offset : piece.offset + piece.count].contiguous()
        if tensor.dtype not in _DTYPE_NAMES or tensor.device.type != "cpu":
            return _encode_shard_safetensors(state, pieces)
        slices.append((piece, tensor))
    slices.sort(key=lambda item: (-_DTYPE_RANK[_DTYPE_NAMES[item[1].dtype]], item[0].name))
    header: dict[str, Any] = {"__metadata__": {piece.name: str(piece.offset) for piece in pieces}}
    cursor = 0
    for piece, tensor in slices:
        size = tensor.numel() * tensor.element_size()
        header[piece.name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": [tensor.numel()],
            "data_offsets": [cursor, cursor + size],
        }
        cursor += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    parts: list[Any] = [bytes([TENSORS]) + struct.pack("<Q", len(raw)) + raw]
    # numpy arrays are buffers (numpy's stubs do not say so)
    parts.extend(
        memoryview(tensor.view(torch.uint8).numpy())  # type: ignore[arg-type]
        for _, tensor in slices
        if tensor.numel()
    )
    return b"".join(parts)


def _encode_shard_safetensors(state: dict[str, torch.Tensor], pieces: list[Slice]) -> bytes:
    tensors = {}
    offsets = {}
    for piece in pieces:
        flat = state[piece.name].detach().reshape(-1)
        tensors[piece.name] = flat[piece.offset : piece.offset + piece.count].contiguous()
        offsets[piece.name] = str(piece.offset)
    return bytes([TENSORS]) + _st_save(tensors, metadata=offsets)


def encode_state(state: dict[str, torch.Tensor], shard_bytes: int) -> Iterator[bytes]:
    for pieces in Layout.of(state).plan(shard_bytes):
        yield encode_shard(state, pieces)


def count_shards(state: dict[str, torch.Tensor], shard_bytes: int) -> int:
    return len(Layout.of(state).plan(shard_bytes))


def decode_shard(frame: bytes | bytearray | memoryview, layout: Layout) -> list[tuple[str, int, torch.Tensor]]:
    """Parse a tensor frame into (name, offset, flat tensor view) triples checked against `layout`."""
    view = memoryview(frame)
    if len(view) < 9 or view[0] != TENSORS:
        raise FederationError("expected a tensor frame", ErrorCode.FEDERATION_PROTOCOL)
    (hlen,) = struct.unpack("<Q", view[1:9])
    if hlen > MAX_HEADER_BYTES or 9 + hlen > len(view):
        raise FederationError("tensor frame header out of bounds", ErrorCode.FEDERATION_PROTOCOL)
    try:
        header = json.loads(bytes(view[9 : 9 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FederationError("tensor frame header is not JSON", ErrorCode.FEDERATION_PROTOCOL) from None
    meta = header.pop("__metadata__", None) or {}
    data = view[9 + hlen :]
    expected = {name: (dtype, _prod(shape)) for name, dtype, shape in layout.entries}
    out = []
    for name, info in header.items():
        if name not in expected:
            raise FederationError(f"unexpected tensor {name!r} in update", ErrorCode.FEDERATION_BAD_UPDATE)
        dtype = _DTYPES.get(info.get("dtype"))
        want_dtype, numel = expected[name]
        if dtype != want_dtype:
            raise FederationError(
                f"tensor {name!r} has dtype {info.get('dtype')}, expected {_DTYPE_NAMES.get(want_dtype)}",
                ErrorCode.FEDERATION_BAD_UPDATE,
            )
        start, end = info.get("data_offsets", (0, -1))
        shape = info.get("shape") or []
        count = _prod(tuple(shape))
        offset = int(meta.get(name, "0"))
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (
            len(shape) != 1
            or not 0 <= start <= end <= len(data)
            or end - start != count * itemsize
            or offset < 0
            or offset + count > numel
        ):
            raise FederationError(f"tensor {name!r} slice out of bounds", ErrorCode.FEDERATION_BAD_UPDATE)
        if count == 0:
            continue
        with warnings.catch_warnings():
            # frames arrive as immutable bytes; the views are only ever read (copied out)
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=start)
        out.append((name, offset, tensor))
    return out


def write_slices(state: dict[str, torch.Tensor], slices: list[tuple[str, int, torch.Tensor]]) -> None:
    """Copy decoded slices into the matching tensors of `state` (in place)."""
    with torch.no_grad():
        for name, offset, tensor in slices:
            state[name].view(-1)[offset : offset + tensor.numel()].copy_(tensor)


def describe_layout(layout: Layout) -> list[list[Any]]:
    """A layout as JSON, for payloads whose shapes only the sender knows (e.g. features)."""
    return [[name, _DTYPE_NAMES[dtype], list(shape)] for name, dtype, shape in layout.entries]


def parse_layout(entries: object, allowed: set[str], max_bytes: int) -> Layout:
    """Check a layout announced by a peer: known names, known dtypes, bounded total size.

    `entries` as decoded from JSON ([name, dtype, shape] lists) or as `protocol` parsed them (tuples)."""
    if not isinstance(entries, list):
        raise FederationError("payload layout missing", ErrorCode.FEDERATION_PROTOCOL)
    parsed, total = [], 0
    for entry in entries:
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or entry[0] not in allowed
            or entry[1] not in _DTYPES
            or not isinstance(entry[2], list)
            or not all(isinstance(d, int) and d >= 0 for d in entry[2])
        ):
            raise FederationError(f"payload entry {entry!r} is not allowed", ErrorCode.FEDERATION_PROTOCOL)
        dtype = _DTYPES[entry[1]]
        total += _prod(tuple(entry[2])) * torch.empty((), dtype=dtype).element_size()
        parsed.append((entry[0], dtype, tuple(entry[2])))
    if total > max_bytes:
        raise FederationError(
            f"payload of {total} bytes exceeds the limit of {max_bytes}", ErrorCode.FEDERATION_TOO_LARGE
        )
    return Layout(tuple(parsed))
