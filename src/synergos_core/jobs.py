"""Cluster jobs: what the Director queues and a cluster TTP runs. A job carries everything its
TTP needs (grids, tags, alignments, model, hyper-parameters), so TTPs hold no metadata.

    {"job_id", "process": "preprocess" | "train" | "evaluate", "keys": {...},
     "grids": [[node, ...], ...], "parameters": {...}}

A node is {participant_id, host, port, f_port, tags, alignment, superset, preprocessing} (the last
three from the project's stored alignment: spacers per meta, the aligned headers, and the
statistics every split is preprocessed with); grid k is node k of every
participant, so there are as many grids as the smallest number of nodes a participant registered.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from .errors import ErrorCode, InvalidRequest
from .records import Alignment
from .schemas import METAS

PROCESSES = ("preprocess", "train", "evaluate")


def build_grids(registered: list[dict[str, Any]], alignments: Sequence[Alignment]) -> list[list[dict[str, Any]]]:
    """Grids from a project's registrations (the store's `project_grid`) and stored alignments."""
    if not registered:
        raise InvalidRequest("no participant is registered to this project", ErrorCode.PROJECT_NO_PARTICIPANTS)
    aligned = {a.participant_id: a.details() for a in alignments}
    count = min(len(entry["nodes"]) for entry in registered)
    grids = []
    for k in range(count):
        grid = []
        for entry in registered:
            pid = entry["participant_id"]
            node = entry["nodes"][k]
            mine = aligned.get(pid, {})
            grid.append(
                {
                    "participant_id": pid,
                    "host": node["host"],
                    "port": int(node["port"]),
                    "f_port": int(node["f_port"]),
                    "tags": entry["tags"],
                    "alignment": {m: mine[m] for m in METAS if isinstance(mine.get(m), dict)},
                    "superset": mine.get("superset"),
                    "preprocessing": mine.get("preprocessing"),
                }
            )
        grids.append(grid)
    return grids


def make_job(
    process: str, keys: dict[str, str], grids: list[list[dict[str, Any]]], parameters: dict[str, Any]
) -> dict[str, Any]:
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}")
    return {
        "job_id": uuid.uuid4().hex,
        "process": process,
        "keys": dict(keys),
        "grids": grids,
        "parameters": parameters,
    }
