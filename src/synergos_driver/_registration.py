"""Phase 1, participant side: registrations (the compute a party brings) and data tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _endpoints as routes
from ._base import BaseTask, tag_lists
from ._exceptions import NotFound
from ._session import Envelope


class RegistrationTask(BaseTask):
    """Registrations of a participant in a project.

    Nodes are collected on this task object with `add_node` and sent by the next `create`
    (or `update`), which then forgets them:

        registrations = driver.registrations
        registrations.add_node(host="172.19.152.154", port=8020, f_port=5000)
        registrations.create("collaboration_1", "project_1", "participant_1", role="guest")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nodes: list[dict[str, Any]] = []

    # ---- local node list ----

    def add_node(self, host: str, port: int, f_port: int, log_msgs: bool = False, verbose: bool = False) -> str:
        """Add a compute node (`port`: federation, `f_port`: commands) and return its id,
        `node_<i>`. Adding the same node twice returns the id it already has."""
        node = {"host": host, "port": port, "f_port": f_port, "log_msgs": log_msgs, "verbose": verbose}
        if node in self._nodes:
            return f"node_{self._nodes.index(node)}"
        self._nodes.append(node)
        return f"node_{len(self._nodes) - 1}"

    def list_nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes added so far, as `{node_<i>: {host, port, f_port, log_msgs, verbose}}`."""
        return {f"node_{index}": dict(node) for index, node in enumerate(self._nodes)}

    def count_nodes(self) -> int:
        return len(self._nodes)

    def remove_node(self, node_id: str) -> dict[str, Any]:
        """Remove `node_<i>` and return its details; the nodes after it move up one place."""
        index = _node_index(node_id)
        if index is None or not 0 <= index < len(self._nodes):
            known = ", ".join(self.list_nodes()) or "none"
            raise KeyError(f"no node {node_id!r} (nodes: {known})")
        return self._nodes.pop(index)

    # ---- records ----

    def create(self, collab_id: str, project_id: str, participant_id: str, role: str, **kwargs: Any) -> Envelope:
        """Register the added nodes, replacing any existing registration of this participant in
        this project (which also drops its tags and alignment). The node list is then cleared."""
        if not self._nodes:
            raise ValueError(
                f"no nodes to register for participant {participant_id!r}: "
                "call add_node(host, port, f_port) before create()"
            )
        path = routes.registration(collab_id, project_id, participant_id)
        try:
            self._delete(path)
        except NotFound:
            pass
        envelope = self._post(path, {"role": role, **self._node_fields(), **kwargs})
        self._nodes = []
        return envelope

    def read_all(
        self, collab_id: str | None = None, project_id: str | None = None, participant_id: str | None = None
    ) -> Envelope:
        """Registrations filtered by whichever keys are given: (participant), (collaboration),
        (collaboration, participant), (collaboration, project), or all three."""
        return self._get(routes.registrations(collab_id, project_id, participant_id))

    def read(self, collab_id: str, project_id: str, participant_id: str) -> Envelope:
        return self._get(routes.registration(collab_id, project_id, participant_id))

    def update(
        self, collab_id: str, project_id: str, participant_id: str, role: str | None = None, **updates: Any
    ) -> Envelope:
        """PUT `updates` (and `role`, and the added nodes if any; the node list is then cleared)."""
        body: dict[str, Any] = {**updates}
        if role is not None:
            body["role"] = role
        if self._nodes:
            body.update(self._node_fields())
        envelope = self._put(routes.registration(collab_id, project_id, participant_id), body)
        self._nodes = []
        return envelope

    def delete(self, collab_id: str, project_id: str, participant_id: str) -> Envelope:
        return self._delete(routes.registration(collab_id, project_id, participant_id))

    def _node_fields(self) -> dict[str, Any]:
        return {"n_count": len(self._nodes), **self.list_nodes()}


def _node_index(node_id: str | int) -> int | None:
    if isinstance(node_id, int):
        return node_id
    prefix, _, number = str(node_id).partition("_")
    if prefix != "node" or not number.isdigit():
        return None
    return int(number)


class TagTask(BaseTask):
    """The data a participant brings to a project: lists of tags per meta, a tag being a list of
    tokens that names a dataset directory on the participant's Worker."""

    def create(
        self,
        collab_id: str,
        project_id: str,
        participant_id: str,
        train: Sequence[Sequence[str]],
        evaluate: Sequence[Sequence[str]] = [],  # the original signature's defaults; never mutated
        predict: Sequence[Sequence[str]] = [],
        **kwargs: Any,
    ) -> Envelope:
        body = {"train": tag_lists(train), "evaluate": tag_lists(evaluate), "predict": tag_lists(predict), **kwargs}
        return self._post(routes.tags(collab_id, project_id, participant_id), body)

    def read(self, collab_id: str, project_id: str, participant_id: str) -> Envelope:
        return self._get(routes.tags(collab_id, project_id, participant_id))

    def update(self, collab_id: str, project_id: str, participant_id: str, **updates: Any) -> Envelope:
        body = {
            meta: tag_lists(value) if meta in ("train", "evaluate", "predict") else value
            for meta, value in updates.items()
        }
        return self._put(routes.tags(collab_id, project_id, participant_id), body)

    def delete(self, collab_id: str, project_id: str, participant_id: str) -> Envelope:
        return self._delete(routes.tags(collab_id, project_id, participant_id))
