"""What every Task shares: the Driver's session and the four HTTP verbs it uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._session import Envelope, Session
from ._wait import wait_for

DEFAULT_WAIT_S = 600.0


def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without its None values: the server's defaults apply instead."""
    return {key: value for key, value in body.items() if value is not None}


def tag_lists(tags: Sequence[Sequence[str]] | None) -> list[Sequence[str]]:
    """A fresh list of lists (tuples welcome); anything else is left for the server to judge."""
    if tags is None:
        return []
    if isinstance(tags, str):
        raise ValueError(f"tags are lists of token lists, e.g. [['train']], not the string {tags!r}")
    return [list(tag) if isinstance(tag, (list, tuple)) else tag for tag in tags]


class BaseTask:
    """One kind of record on the TTP (or Director). Every method returns the parsed envelope
    `{apiVersion, success, status, method, params, data}` or raises a `SynergosError`."""

    work = "work"  # what a long call of this task waits for (`ServerUnresponsive` names it)

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def address(self) -> str:
        """`http(s)://host:port` of the server this task talks to."""
        return self._session.address

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    def _get(self, path: str) -> Envelope:
        return self._session.request("GET", path)

    def _post(self, path: str, body: Mapping[str, Any]) -> Envelope:
        return self._session.request("POST", path, json=dict(body))

    def _put(self, path: str, body: Mapping[str, Any]) -> Envelope:
        return self._session.request("PUT", path, json=dict(body))

    def _delete(self, path: str) -> Envelope:
        return self._session.request("DELETE", path)

    def _post_long(self, path: str, body: Mapping[str, Any], *, collab_id: str, project_id: str | None) -> Envelope:
        """POST work that may run for hours: no read timeout, progress shown while it runs, and
        `ServerUnresponsive` once the server answers nothing for the Driver's `liveness_timeout`."""
        what = f"waiting for the {self.work} of {collab_id}" + (f"/{project_id}" if project_id else "")
        with self._session.watch(collab_id, project_id):
            return self._session.long_request("POST", path, json=dict(body), what=what)

    def _read(
        self,
        path: str,
        *,
        wait: bool,
        timeout: float,
        what: str,
        kinds: frozenset[str],
        scope: Mapping[str, str | None],
        **options: Any,
    ) -> Envelope:
        """GET `path`; with `wait`, until its records are there and no job of `kinds` in `scope`
        is queued or running (see `_wait.wait_for`)."""
        if not wait:
            return self._get(path)
        where = "/".join(v for v in scope.values() if v is not None)
        return wait_for(
            self._session, path, what=f"{what} of {where}", kinds=kinds, scope=scope, timeout=timeout, **options
        )
