"""Writing and reading model files (safetensors only) without holding extra copies in memory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import ErrorCode, InvalidRequest
from .wire import _DTYPE_NAMES, Layout, _prod


class StateFileWriter:
    """Stream a state dict into a safetensors file slice by slice (the layout is known up front)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        header: dict[str, Any] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        cursor = 0
        for name, dtype, shape in layout.entries:
            size = _prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [cursor, cursor + size]}
            self._offsets[name] = (cursor, torch.empty((), dtype=dtype).element_size())
            cursor += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data buffer to 8 bytes
        self._data_start = 8 + len(raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, struct.pack("<Q", len(raw)) + raw)
        os.ftruncate(self._fd, self._data_start + cursor)

    def write(self, name: str, offset: int, tensor: torch.Tensor) -> None:
        start, itemsize = self._offsets[name]
        data = tensor.detach().contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16; the bytes are what matter
            data = data.view(torch.int16)
        view = memoryview(data.numpy()).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        os.pwrite(self._fd, view, self._data_start + start + offset * itemsize)

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


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InvalidRequest(f"model file {path.name} is missing; train the run first", ErrorCode.MODEL_NOT_TRAINED)
    return load_file(str(path))
