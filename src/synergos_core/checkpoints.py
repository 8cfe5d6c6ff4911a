"""Writing and reading model files (safetensors only) without holding extra copies in memory, and
the checkpoints a run resumes from: each round's folder sealed by a manifest of SHA-256 digests
written last (a folder without one, or whose files do not match it, is skipped for the one
before it), kept to the newest few rounds and the best, with states that are not plain tensors
(an optimizer's, a scheduler's, a generator's) as safetensors plus JSON, never pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ErrorCode, InvalidRequest
from .wire import _DTYPE_NAMES, Layout, _prod

log = logging.getLogger(__name__)


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


# ---- checkpoints of a run: complete, verified, bounded ----

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_ROUND_PREFIX = "round_"
_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint that is incomplete (no manifest: its writer stopped) or corrupt (a file's digest
    or size is not the one its manifest names); the reason says which."""


def file_digest(path: Path) -> str:
    """The SHA-256 of the file at `path`, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` by a rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_manifest(folder: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Seal `folder` as a complete checkpoint: a manifest naming the SHA-256 and size of every file
    in it, written last and atomically (by a rename), after the files themselves are synced.
    A folder without one is incomplete; one whose files do not match it is corrupt."""
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == MANIFEST or path.name.endswith(".part"):
            continue
        _fsync(path)
        files[path.name] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    manifest = {"format": MANIFEST_FORMAT, **meta, "files": files}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, allow_nan=False).encode())
    _fsync(folder)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint whose every file matches it; `CheckpointError` else."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError("incomplete: it has no manifest (its writer stopped before sealing it)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"its manifest cannot be read ({type(exc).__name__})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not files:
        raise CheckpointError("its manifest is not one this version writes")
    for name, entry in files.items():
        target = folder / name
        if not isinstance(entry, dict) or Path(name).name != name or not target.is_file():
            raise CheckpointError(f"corrupt: {name} is missing")
        if target.stat().st_size != entry.get("bytes"):
            raise CheckpointError(f"corrupt: {name} has {target.stat().st_size} bytes, not {entry.get('bytes')}")
        if file_digest(target) != entry.get("sha256"):
            raise CheckpointError(f"corrupt: the SHA-256 of {name} is not the one its manifest names")
    return dict(manifest)


def round_folder(root: Path, round_index: int) -> Path:
    return root / f"{_ROUND_PREFIX}{round_index}"


def round_folders(root: Path) -> list[tuple[int, Path]]:
    """The `round_<r>` folders under `root`, oldest round first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name[len(_ROUND_PREFIX) :]
        if path.is_dir() and path.name.startswith(_ROUND_PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def latest_checkpoint(
    root: Path, accept: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[int, Path, dict[str, Any]] | None:
    """The newest complete, uncorrupted checkpoint under `root` (whose manifest `accept`s, if
    given): (round, folder, manifest). Each newer one that is incomplete or corrupt is skipped for
    the one before it, with a warning that says why."""
    for round_index, folder in reversed(round_folders(root)):
        try:
            manifest = read_manifest(folder)
        except CheckpointError as exc:
            log.warning("checkpoint %s skipped for the one before it: %s", folder, exc)
            continue
        if accept is not None and not accept(manifest):
            continue
        return round_index, folder, manifest
    return None


def retain_checkpoints(root: Path, keep_last: int, best: int | None = None) -> list[int]:
    """Delete every checkpoint under `root` but the newest `keep_last` rounds and round `best`;
    returns the rounds deleted."""
    folders = round_folders(root)
    kept = {r for r, _ in folders[-max(1, keep_last) :]} | ({best} if best is not None else set())
    removed = []
    for round_index, folder in folders:
        if round_index not in kept:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(round_index)
    return removed


# ---- optimizer, scheduler and generator states as safetensors plus JSON (never pickle) ----


def pack_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a state (an `optimizer.state_dict()`, a scheduler's, a generator's) into its tensors and
    a JSON-ready structure that names them: dicts keep their key types (optimizer states are keyed
    by parameter index), tuples and non-finite floats are tagged. Anything else (a function, an
    object) raises `TypeError`: such a state cannot be kept without pickle."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().clone().contiguous()
            return {"$tensor": name}
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, dict):
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
                raise TypeError("a state's keys must be strings or integers")
            return {"$dict": [[k, walk(v)] for k, v in value.items()]}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, tuple):
            return {"$tuple": [walk(v) for v in value]}
        raise TypeError(f"a state holding a {type(value).__name__} cannot be kept without pickle")

    return tensors, walk(obj)


def unpack_state(tensors: Mapping[str, torch.Tensor], structure: Any) -> Any:
    """The state `pack_state` split, put back together."""

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$float" in value:
            return float(value["$float"])
        if "$tuple" in value:
            return tuple(walk(v) for v in value["$tuple"])
        return {k: walk(v) for k, v in value["$dict"]}

    return walk(structure)


def save_packed(folder: Path, name: str, obj: Any) -> None:
    """`obj` as `<name>.safetensors` (its tensors) and `<name>.json` (the rest), each atomically."""
    tensors, structure = pack_state(obj)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.safetensors.part"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / f"{name}.safetensors")
    write_atomic(folder / f"{name}.json", json.dumps(structure, allow_nan=False).encode())


def load_packed(folder: Path, name: str) -> Any:
    """What `save_packed` wrote; the tensors are parsed as safetensors, never unpickled."""
    try:
        tensors = load_file(str(folder / f"{name}.safetensors"))
        structure = json.loads((folder / f"{name}.json").read_text())
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{name} cannot be read ({type(exc).__name__})") from None
    return unpack_state(tensors, structure)
