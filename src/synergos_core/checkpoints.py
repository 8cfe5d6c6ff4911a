"""Writing and reading model files (safetensors only) without holding extra copies in memory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ErrorCode, InvalidRequest
from .wire import _DTYPE_NAMES, Layout, _prod


class StateFileWriter:
    """Stream a state dict into a safetensors file slice by slice (the layout is known up front);
    what was written can be read back a slice at a time (`read`, an `aggregation.Source`)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        header: dict[str, Any] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        cursor = 0
        for name, dtype, shape in layout.entries:
            size = _prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [cursor, cursor + size]}
            self._offsets[name] = (cursor, torch.empty((), dtype=dtype).element_size())
            self._dtypes[name] = dtype
            cursor += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data buffer to 8 bytes
        self._data_start = 8 + len(raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, struct.pack("<Q", len(raw)) + raw)
        os.ftruncate(self._fd, self._data_start + cursor)

    def write(self, name: str, offset: int, tensor: torch.Tensor) -> None:
        start, itemsize = self._offsets[name]
        data = tensor.detach().contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16; the bytes are what matter
            data = data.view(torch.int16)
        view = memoryview(data.numpy()).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        os.pwrite(self._fd, view, self._data_start + start + offset * itemsize)

    def read(self, name: str, offset: int, count: int) -> torch.Tensor:
        """`count` values of tensor `name` from element `offset`, as written (a new flat tensor)."""
        start, itemsize = self._offsets[name]
        out = torch.empty(count, dtype=self._dtypes[name])
        raw = out.view(torch.int16) if out.dtype == torch.bfloat16 else out
        view = memoryview(raw.numpy()).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        position, done = self._data_start + start + offset * itemsize, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got <= 0:
                raise OSError(f"{self.tmp.name}: {name} ends before its last value")
            done += got
        return out

    def commit(self) -> None:
        os.close(self._fd)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        os.close(self._fd)
        self.tmp.unlink(missing_ok=True)


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def load_state(path: Path, expected: Layout | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the safetensors file `path`, which is parsed, never unpickled: a file
    that is not valid safetensors (a pickle, random bytes, a truncated file) is a 422
    `model.unsafe_format`, and with `expected`, one that holds other tensors than the model's a
    422 `model.invalid`."""
    if not path.is_file():
        raise InvalidRequest(f"model file {path.name} is missing; train the run first", ErrorCode.MODEL_NOT_TRAINED)
    try:
        state = load_file(str(path))
    except (SafetensorError, ValueError):
        raise InvalidRequest(
            f"model file {path.name} is not a valid safetensors file; only safetensors models are read "
            "(nothing is ever unpickled)",
            ErrorCode.MODEL_UNSAFE_FORMAT,
        ) from None
    have = {name: (t.dtype, tuple(t.shape)) for name, t in state.items()}
    want = {name: (dtype, shape) for name, dtype, shape in expected.entries} if expected is not None else have
    if have != want:
        wrong = sorted(set(have) ^ set(want)) or sorted(n for n in want if have[n] != want[n])
        raise InvalidRequest(
            f"model file {path.name} does not hold this experiment's model (e.g. {', '.join(wrong[:3])})",
            ErrorCode.MODEL_INVALID,
        )
    return state
