"""Every route the Driver calls, in one place (TTP and Director share them).

Collection routes are written without a trailing slash. Ids are percent-encoded so that an id
can never step into another route; an empty or missing id is refused before anything is sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

CONNECT = "/ttp/connect"
TRAIN = "/ttp/train"
EVALUATE = "/ttp/evaluate"
STATUS_JOBS = "/ttp/status/jobs"


def _id(value: object, name: str) -> str:
    if value is None or str(value) == "":
        raise ValueError(f"{name} is required")
    return quote(str(value), safe="")


class _All:
    """Default of a record id: the collection route. (None is refused, never read as "all".)"""

    def __repr__(self) -> str:
        return "ALL"


ALL: Any = _All()


def _record(value: object, name: str) -> str:
    return "" if value is ALL else "/" + _id(value, name)


def _scope(**optional: object) -> str:
    """Append optional trailing ids in order; a later id needs every earlier one."""
    path = ""
    missing: str | None = None
    for name, value in optional.items():
        if value is None:
            missing = missing or name
            continue
        if missing is not None:
            raise ValueError(f"{name} needs {missing}")
        path += "/" + _id(value, name)
    return path


# ---- connect (phase 1) ----


def collaborations(collab_id: str = ALL) -> str:
    return f"{CONNECT}/collaborations" + _record(collab_id, "collab_id")


def projects(collab_id: str, project_id: str = ALL) -> str:
    return f"{CONNECT}/collaborations/{_id(collab_id, 'collab_id')}/projects" + _record(project_id, "project_id")


def experiments(collab_id: str, project_id: str, expt_id: str = ALL) -> str:
    return f"{projects(collab_id, project_id)}/experiments" + _record(expt_id, "expt_id")


def runs(collab_id: str, project_id: str, expt_id: str, run_id: str = ALL) -> str:
    return f"{experiments(collab_id, project_id, expt_id)}/runs" + _record(run_id, "run_id")


def participants(participant_id: str = ALL) -> str:
    return f"{CONNECT}/participants" + _record(participant_id, "participant_id")


def registration(collab_id: str, project_id: str, participant_id: str) -> str:
    pid = _id(participant_id, "participant_id")
    return f"{projects(collab_id, project_id)}/participants/{pid}/registration"


def tags(collab_id: str, project_id: str, participant_id: str) -> str:
    return f"{registration(collab_id, project_id, participant_id)}/tags"


def registrations(
    collab_id: str | None = None, project_id: str | None = None, participant_id: str | None = None
) -> str:
    """The listing (or single-record) route for a combination of keys."""
    if project_id is not None and collab_id is None:
        raise ValueError("project_id needs collab_id")
    if collab_id is None:
        if participant_id is None:
            raise ValueError("give collab_id, participant_id, or both")
        return f"{participants(participant_id)}/registrations"
    if project_id is not None:
        if participant_id is not None:
            return registration(collab_id, project_id, participant_id)
        return f"{projects(collab_id, project_id)}/registrations"
    collab = collaborations(collab_id)
    if participant_id is not None:
        return f"{collab}/participants/{_id(participant_id, 'participant_id')}/registrations"
    return f"{collab}/registrations"


# ---- train (phase 2) ----


def _train_project(collab_id: str, project_id: str) -> str:
    return f"{TRAIN}/collaborations/{_id(collab_id, 'collab_id')}/projects/{_id(project_id, 'project_id')}"


def alignments(collab_id: str, project_id: str) -> str:
    return f"{_train_project(collab_id, project_id)}/alignments"


def models(collab_id: str, project_id: str, expt_id: str | None = None, run_id: str | None = None) -> str:
    return f"{_train_project(collab_id, project_id)}/models" + _scope(expt_id=expt_id, run_id=run_id)


def optimizations(collab_id: str, project_id: str, expt_id: str) -> str:
    return f"{_train_project(collab_id, project_id)}/models/{_id(expt_id, 'expt_id')}/optimizations"


# ---- evaluate (phase 3) ----


def validations(
    collab_id: str,
    project_id: str,
    expt_id: str | None = None,
    run_id: str | None = None,
    participant_id: str | None = None,
) -> str:
    base = f"{EVALUATE}/collaborations/{_id(collab_id, 'collab_id')}/projects/{_id(project_id, 'project_id')}"
    return f"{base}/validations" + _scope(expt_id=expt_id, run_id=run_id, participant_id=participant_id)


def predictions(
    participant_id: str,
    collab_id: str,
    project_id: str | None = None,
    expt_id: str | None = None,
    run_id: str | None = None,
) -> str:
    base = (
        f"{EVALUATE}/participants/{_id(participant_id, 'participant_id')}/collaborations/{_id(collab_id, 'collab_id')}"
    )
    return f"{base}/predictions" + _scope(project_id=project_id, expt_id=expt_id, run_id=run_id)
