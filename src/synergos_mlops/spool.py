"""An append-only journal of MLflow operations not yet applied, so a restart loses none.

Each line is JSON: `{"seq": n, "op": {...}}` when an operation is queued, `{"done": n}` once it
has been applied (or given up). On open the journal is compacted to the pending operations.
The file is held under an exclusive `flock`; a second tracker on the same directory (another
process, or another `Tracker` in this one) writes its own `mlflow-spool-<pid>-<n>.jsonl`, and
whoever opens the directory next adopts every journal nobody holds.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("synergos_mlops.spool")

PRIMARY = "mlflow-spool.jsonl"
PATTERN = "mlflow-spool*.jsonl"
_instance = itertools.count()


class Spool:
    """Not thread-safe: the Tracker calls it under its own lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self._fh: IO[str] | None = None
        self._broken = False

    # -- opening -----------------------------------------------------------------------------
    def open(self) -> list[tuple[int, dict[str, Any]]]:
        """Lock a journal, adopt unheld ones, and return the pending `(seq, operation)`s in order."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fh, self.path = self._lock_own()
            pending = _read_pending(self._fh)
            adopted: list[tuple[Path, IO[str]]] = []
            for other in sorted(self.directory.glob(PATTERN)):
                if other == self.path:
                    continue
                fh = _try_lock(other, "r+")
                if fh is None:
                    continue  # another live tracker owns it
                pending.extend(_read_pending(fh))
                adopted.append((other, fh))
            self._rewrite(pending)
            for other, fh in adopted:
                other.unlink(missing_ok=True)
                fh.close()
            if pending:
                log.info("Reloaded %d pending MLflow operations from %s", len(pending), self.path)
            return list(enumerate(pending))
        except OSError as exc:
            self._fail(exc)
            return []

    def _lock_own(self) -> tuple[IO[str], Path]:
        primary = self.directory / PRIMARY
        fh = _try_lock(primary, "a+")
        if fh is not None:
            return fh, primary
        path = self.directory / f"mlflow-spool-{os.getpid()}-{next(_instance)}.jsonl"
        fh = _try_lock(path, "a+")
        if fh is None:
            raise OSError(f"cannot lock {path}")
        return fh, path

    def _rewrite(self, ops: list[dict[str, Any]]) -> None:
        assert self._fh is not None
        self._fh.seek(0)
        self._fh.truncate()
        for seq, op in enumerate(ops):
            self._fh.write(json.dumps({"seq": seq, "op": op}, default=str) + "\n")
        self._fh.flush()
        self._next_seq = len(ops)

    # -- journal -------------------------------------------------------------------------------
    def append(self, op: dict[str, Any]) -> int:
        """Journal an operation; returns its sequence number (-1 when the spool is unusable)."""
        if self._fh is None or self._broken:
            return -1
        seq = self._next_seq
        self._next_seq += 1
        try:
            self._fh.write(json.dumps({"seq": seq, "op": op}, default=str) + "\n")
            self._fh.flush()
        except OSError as exc:
            self._fail(exc)
            return -1
        return seq

    def done(self, seq: int, *, now_empty: bool) -> None:
        if self._fh is None or self._broken or seq < 0:
            return
        try:
            if now_empty:  # nothing pending: start the journal afresh rather than let it grow
                self._fh.seek(0)
                self._fh.truncate()
                self._next_seq = 0
            else:
                self._fh.write(json.dumps({"done": seq}) + "\n")
            self._fh.flush()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()  # closing releases the flock
            except OSError:
                pass
            self._fh = None

    def _fail(self, exc: OSError) -> None:
        if not self._broken:
            log.warning(
                "MLflow spool in %s unusable (%s); pending operations are kept in memory only", self.directory, exc
            )
        self._broken = True


def _try_lock(path: Path, mode: str) -> IO[str] | None:
    try:
        fh = open(path, mode, encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _read_pending(fh: IO[str]) -> list[dict[str, Any]]:
    """Operations journaled and not marked done, in order; a torn last line is skipped."""
    fh.seek(0)
    ops: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if "done" in entry:
                ops.pop(int(entry["done"]), None)
            else:
                ops[int(entry["seq"])] = dict(entry["op"])
        except (ValueError, KeyError, TypeError):
            log.warning("Skipping unreadable line %d of the MLflow spool %s", number, fh.name)
    return [ops[seq] for seq in sorted(ops)]
