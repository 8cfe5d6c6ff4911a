"""The MLflow tracking store, made ready once, before a service takes work: `prepare(uri)`.

MLflow creates and migrates a SQL store on first use, in place; SQLite runs each DDL statement of
a migration in autocommit, so a process killed meanwhile leaves the file half-migrated (an
`_alembic_tmp_<table>` left behind: every later attempt fails with "table _alembic_tmp_… already
exists"). So Synergos never lets MLflow do it lazily:

- `synergos-mlops` prepares its backend store before it starts the MLflow server, and the TTP
  and the Director prepare their local directory store (`<mlflow_dir>/mlflow.db`) synchronously
  at start-up (`RunRecorder`), before they serve.
- A new SQLite store is built beside its final path (`.mlflow.db.creating-<pid>`) and renamed
  into place only once fully migrated, so a killed start-up leaves no store at all, never half of
  one. An out-of-date store is upgraded on a consistent copy (SQLite's backup API), renamed over
  the original once done. Both under an exclusive lock (`mlflow.db.lock`), so services sharing
  the directory prepare it once.
- A store that is half-migrated, unreadable, or of a schema this MLflow does not know, is left as
  it is and reported (`StoreStatus.broken`): what is wrong, with which file, and what to do
  (move it aside). The caller keeps serving with tracking to it disabled.

Other SQL URLs (`--db_url postgresql://…`) are created or upgraded in place (their DDL is
transactional); tracking servers (`http(s)://`) prepare their own stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("synergos_mlops.backend")

LOCK_TIMEOUT_S = 600.0
TMP_TABLE_PREFIX = "_alembic_tmp_"
_templates: dict[str, bytes] = {}  # head revision -> a freshly migrated store, to copy (this process)
_template_lock = threading.Lock()


@dataclass(frozen=True)
class StoreStatus:
    """How a tracking store stands: ready, or broken with the reason and the fix."""

    uri: str
    path: Path | None = None  # the SQLite file, if it is one
    reason: str | None = None
    fix: str | None = None

    @property
    def ready(self) -> bool:
        return self.reason is None

    def health(self) -> dict[str, Any]:
        where = str(self.path) if self.path is not None else _display(self.uri)
        if self.ready:
            return {"tracking": "ok", "store": where}
        return {"tracking": "disabled", "store": where, "reason": self.reason, "fix": self.fix}


class StoreError(Exception):
    """The store is not usable as it is; `status` says why and what to do."""

    def __init__(self, status: StoreStatus) -> None:
        super().__init__(status.reason)
        self.status = status


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///…` URI (None for anything else, or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///") :].split("?", 1)[0]
    if not name or name == ":memory:":
        return None
    return Path(name)


def prepare(uri: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> StoreStatus:
    """Create the store at `uri` if there is none, migrate it if it is out of date, and say how
    it stands. Never raises for a broken store: the returned status carries the reason and the
    fix (and they are logged as an error)."""
    path = sqlite_path(uri)
    try:
        if path is not None:
            _prepare_sqlite(uri, path, lock_timeout_s)
        elif not uri.startswith(("http://", "https://", "file:")) and "://" in uri:
            _prepare_in_place(uri)
    except StoreError as exc:
        log.error("MLflow tracking is disabled: %s %s", exc.status.reason, exc.status.fix)
        return dataclasses.replace(exc.status, uri=uri)
    return StoreStatus(uri, path)


def check(uri: str) -> StoreStatus:
    """How the store at `uri` stands now, without changing it (a SQLite file that is missing or
    out of date counts as ready: `prepare` makes it so). For a failure at run time."""
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return StoreStatus(uri, path)
    try:
        _inspect(path)
    except StoreError as exc:
        return dataclasses.replace(exc.status, uri=uri)
    return StoreStatus(uri, path)


# -- SQLite ------------------------------------------------------------------------------------
def _broken(path: Path, what: str) -> StoreError:
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    fix = (
        f"To fix it, stop the services that use {path}, move it aside (mv {path} {aside}) and start "
        "them again: a fresh store is created; the runs recorded so far stay in the moved file. "
        "Records made meanwhile wait in the service's MLflow spool."
    )
    return StoreError(StoreStatus(f"sqlite:///{path}", path, f"MLflow store {path} {what}.", fix))


def _prepare_sqlite(uri: str, path: Path, lock_timeout_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock"), lock_timeout_s):
        for stale in (*path.parent.glob(f".{path.name}.creating-*"), *path.parent.glob(f".{path.name}.migrating-*")):
            stale.unlink(missing_ok=True)  # what a killed start-up left: never the store itself
        if not path.exists() or path.stat().st_size == 0:
            _create(path)
            return
        state = _inspect(path)
        if state == "empty":  # a database with no MLflow table yet: build one instead
            _create(path)
        elif state == "outdated":
            _upgrade(path)


def _inspect(path: Path) -> str:
    """`ready`, `outdated` or `empty`; `StoreError` for a store that must not be touched."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "alembic_version" in tables:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise _broken(path, f"cannot be read as an SQLite database ({exc})") from exc
    leftovers = sorted(t for t in tables if t.startswith(TMP_TABLE_PREFIX))
    if leftovers:
        raise _broken(
            path,
            f"is half-migrated: table {leftovers[0]} exists, left by a schema migration that was interrupted",
        )
    if not {t for t in tables if not t.startswith("alembic_") and not t.startswith("sqlite_")}:
        return "empty"
    if version is None:
        raise _broken(path, "holds tables but no MLflow schema version (not an MLflow store, or its creation was cut)")
    head = _head_revision()
    if version == head:
        return "ready"
    if not _known_revision(version):
        raise _broken(path, f"has schema version {version}, which this MLflow does not know (written by a newer one?)")
    return "outdated"


def _create(path: Path) -> None:
    """A fully migrated store at `path`, built beside it and renamed into place."""
    started = time.monotonic()
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    head = _head_revision()
    with _template_lock:
        template = _templates.get(head)
    if template is not None:
        tmp.write_bytes(template)
    else:
        from mlflow.store.db.utils import _initialize_tables, _verify_schema, create_sqlalchemy_engine

        engine = create_sqlalchemy_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
            _verify_schema(engine)
        finally:
            engine.dispose()
        with _template_lock:
            _templates[head] = tmp.read_bytes()
    _durable_replace(tmp, path)
    log.info("MLflow store %s created (schema %s) in %.1f s", path, head, time.monotonic() - started)


def _upgrade(path: Path) -> None:
    """Migrate a consistent copy of the store, then rename it over the original."""
    from mlflow.store.db.utils import _upgrade_db, _verify_schema, create_sqlalchemy_engine

    copy = path.with_name(f".{path.name}.migrating-{os.getpid()}")
    copy.unlink(missing_ok=True)
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    engine = create_sqlalchemy_engine(f"sqlite:///{copy}")
    try:
        _upgrade_db(engine)
        _verify_schema(engine)
    except Exception as exc:
        copy.unlink(missing_ok=True)
        raise _broken(path, f"is out of date and could not be migrated ({type(exc).__name__}: {exc})") from exc
    finally:
        engine.dispose()
    _durable_replace(copy, path)
    log.info("MLflow store %s migrated to schema %s", path, _head_revision())


def _durable_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


def _known_revision(version: str) -> bool:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config("")).get_revision(version) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


@contextlib.contextmanager
def _locked(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive `flock` on `lock_path` (released if this process dies), waiting up to `timeout_s`."""
    with open(lock_path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        StoreStatus(
                            f"sqlite:///{lock_path.with_suffix('')}",
                            lock_path.with_suffix(""),
                            f"MLflow store {lock_path.with_suffix('')} stayed locked by another process "
                            f"for {timeout_s:.0f} s ({lock_path}).",
                            "Check which service holds it (fuser), let it finish or stop it, and restart.",
                        )
                    ) from None
                if not announced:
                    log.info("Waiting for another process preparing the MLflow store (%s)", lock_path)
                    announced = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- other SQL databases -----------------------------------------------------------------------
def _prepare_in_place(uri: str) -> None:
    from mlflow.store.db.utils import (
        _all_tables_exist,
        _get_schema_version,
        _initialize_tables,
        _upgrade_db,
        _verify_schema,
        create_sqlalchemy_engine,
    )

    try:
        engine = create_sqlalchemy_engine(uri)
    except Exception as exc:
        raise StoreError(
            StoreStatus(uri, None, f"MLflow store {_display(uri)} cannot be opened ({exc}).", "Check --db_url.")
        ) from exc
    try:
        if not _all_tables_exist(engine):
            _initialize_tables(engine)
        elif _get_schema_version(engine) != _head_revision():
            _upgrade_db(engine)
        _verify_schema(engine)
    except Exception as exc:
        raise StoreError(
            StoreStatus(
                uri,
                None,
                f"MLflow store {_display(uri)} could not be created or migrated ({type(exc).__name__}: {exc}).",
                f"Back it up, then run `mlflow db upgrade {_display(uri)}` and restart.",
            )
        ) from exc
    finally:
        engine.dispose()


def _display(uri: str) -> str:
    """`uri` without credentials."""
    import re

    return re.sub(r"//[^/@]*@", "//", uri)
