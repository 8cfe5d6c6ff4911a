"""Phase 3: validation on the participants' `evaluate` data, prediction on their `predict` data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _endpoints as routes
from ._base import DEFAULT_WAIT_S, BaseTask, tag_lists
from ._session import Envelope


class ValidationTask(BaseTask):
    """Validation of trained models; each Worker scores against its own labels."""

    work = "validation"  # what a long call of this task waits for

    def create(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
        auto_align: bool = True,
        dockerised: bool = True,
        verbose: bool = False,
        log_msgs: bool = False,
        **kwargs: Any,
    ) -> Envelope:
        """Validate every (experiment, run) in scope, for all participants or the one given."""
        body = {"auto_align": auto_align, "dockerised": dockerised, "verbose": verbose, "log_msgs": log_msgs, **kwargs}
        path = routes.validations(collab_id, project_id, expt_id, run_id, participant_id)
        return self._post_long(path, body, collab_id=collab_id, project_id=project_id)

    def read(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str | None = None,
        run_id: str | None = None,
        participant_id: str | None = None,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_WAIT_S,
    ) -> Envelope:
        """The validations in scope. With `wait=True`, until they are there and no validation of
        the scope is still queued or running (a Director answers at once and validates later);
        raises `JobFailed` with the reason if it failed, `WaitTimeout` after `timeout` seconds."""
        scope = {
            "collab_id": collab_id,
            "project_id": project_id,
            "expt_id": expt_id,
            "run_id": run_id,
            "participant_id": participant_id,
        }
        return self._read(
            routes.validations(collab_id, project_id, expt_id, run_id, participant_id),
            wait=wait,
            timeout=timeout,
            what="validations",
            kinds=frozenset({"validation"}),
            scope=scope,
        )


class PredictionTask(BaseTask):
    """Inference a participant asks for on its own `predict` data."""

    work = "prediction"  # what a long call of this task waits for

    def create(
        self,
        tags: Mapping[str, Sequence[Sequence[str]]],
        participant_id: str,
        collab_id: str,
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
        auto_align: bool = True,
        dockerised: bool = True,
        verbose: bool = False,
        log_msgs: bool = False,
        **kwargs: Any,
    ) -> Envelope:
        """Predict with every model in scope. `tags` maps a project id to its predict tags,
        e.g. `{"project_1": [["predict"]]}`; they replace the participant's stored predict tags."""
        body = {
            "tags": {project: tag_lists(project_tags) for project, project_tags in tags.items()},
            "auto_align": auto_align,
            "dockerised": dockerised,
            "verbose": verbose,
            "log_msgs": log_msgs,
            **kwargs,
        }
        path = routes.predictions(participant_id, collab_id, project_id, expt_id, run_id)
        return self._post_long(path, body, collab_id=collab_id, project_id=project_id)

    def read(
        self,
        participant_id: str,
        collab_id: str,
        project_id: str | None = None,
        expt_id: str | None = None,
        run_id: str | None = None,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_WAIT_S,
    ) -> Envelope:
        """The participant's predictions in scope; `wait` and `timeout` as for validations."""
        scope = {
            "collab_id": collab_id,
            "project_id": project_id,
            "expt_id": expt_id,
            "run_id": run_id,
            "participant_id": participant_id,
        }
        return self._read(
            routes.predictions(participant_id, collab_id, project_id, expt_id, run_id),
            wait=wait,
            timeout=timeout,
            what="predictions",
            kinds=frozenset({"prediction"}),
            scope=scope,
        )
