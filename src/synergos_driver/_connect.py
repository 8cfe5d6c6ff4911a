"""Phase 1 records: collaborations, projects, experiments, runs and participants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _endpoints as routes
from ._base import BaseTask, compact
from ._session import Envelope


def _connection(host: str, port: int, ui_port: int, secure: bool, **extra_ports: int) -> dict[str, Any]:
    return {"host": host, "ports": {"main": port, "ui": ui_port, **extra_ports}, "secure": secure}


class CollaborationTask(BaseTask):
    """Collaborations, and the connection sections (`mq`, `mlops`, `logs`, `catalogue`, `meter`)
    that `configure_*` caches on this task object until its next `create` or `update`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sections: dict[str, dict[str, Any]] = {}

    # ---- connection sections ----

    def configure_catalogue(self, host: str, port: int, ui_port: int = 0, secure: bool = False) -> dict[str, Any]:
        self._sections["catalogue"] = _connection(host, port, ui_port, secure)
        return self._sections["catalogue"]

    def configure_logger(
        self,
        host: str,
        port: int,
        sysmetrics_port: int,
        director_port: int,
        ttp_port: int,
        worker_port: int,
        ui_port: int = 0,
        secure: bool = False,
    ) -> dict[str, Any]:
        self._sections["logs"] = _connection(
            host,
            port,
            ui_port,
            secure,
            sysmetrics=sysmetrics_port,
            director=director_port,
            ttp=ttp_port,
            worker=worker_port,
        )
        return self._sections["logs"]

    def configure_meter(self, host: str, port: int, ui_port: int = 0, secure: bool = False) -> dict[str, Any]:
        self._sections["meter"] = _connection(host, port, ui_port, secure)
        return self._sections["meter"]

    def configure_mlops(self, host: str, port: int, ui_port: int = 0, secure: bool = False) -> dict[str, Any]:
        self._sections["mlops"] = _connection(host, port, ui_port, secure)
        return self._sections["mlops"]

    def configure_mq(self, host: str, port: int, ui_port: int = 0, secure: bool = False) -> dict[str, Any]:
        self._sections["mq"] = _connection(host, port, ui_port, secure)
        return self._sections["mq"]

    # ---- records ----

    def create(self, collab_id: str, **kwargs: Any) -> Envelope:
        """POST `{collab_id, **configured sections, **kwargs}`; the sections are then forgotten."""
        body = {"collab_id": collab_id, **self._sections, **kwargs}
        envelope = self._post(routes.collaborations(), body)
        self._sections = {}
        return envelope

    def read_all(self) -> Envelope:
        return self._get(routes.collaborations())

    def read(self, collab_id: str) -> Envelope:
        return self._get(routes.collaborations(collab_id))

    def update(self, collab_id: str, **updates: Any) -> Envelope:
        """PUT the configured sections plus `updates`; the sections are then forgotten."""
        envelope = self._put(routes.collaborations(collab_id), {**self._sections, **updates})
        self._sections = {}
        return envelope

    def delete(self, collab_id: str) -> Envelope:
        """Delete the collaboration and everything that belongs to it."""
        return self._delete(routes.collaborations(collab_id))


class ProjectTask(BaseTask):
    """Projects of a collaboration; `action` is "classify" or "regress"."""

    def create(
        self,
        collab_id: str,
        project_id: str,
        action: str,
        incentives: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Envelope:
        body = {"project_id": project_id, "action": action, "incentives": dict(incentives or {}), **kwargs}
        return self._post(routes.projects(collab_id), body)

    def read_all(self, collab_id: str) -> Envelope:
        return self._get(routes.projects(collab_id))

    def read(self, collab_id: str, project_id: str) -> Envelope:
        return self._get(routes.projects(collab_id, project_id))

    def update(self, collab_id: str, project_id: str, **updates: Any) -> Envelope:
        return self._put(routes.projects(collab_id, project_id), updates)

    def delete(self, collab_id: str, project_id: str) -> Envelope:
        return self._delete(routes.projects(collab_id, project_id))


class ExperimentTask(BaseTask):
    """Experiments: a model as an ordered list of layers `{l_type, structure, activation, is_input}`."""

    def create(
        self, collab_id: str, project_id: str, expt_id: str, model: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> Envelope:
        body = {"expt_id": expt_id, "model": [dict(layer) for layer in model], **kwargs}
        return self._post(routes.experiments(collab_id, project_id), body)

    def read_all(self, collab_id: str, project_id: str) -> Envelope:
        return self._get(routes.experiments(collab_id, project_id))

    def read(self, collab_id: str, project_id: str, expt_id: str) -> Envelope:
        return self._get(routes.experiments(collab_id, project_id, expt_id))

    def update(self, collab_id: str, project_id: str, expt_id: str, **updates: Any) -> Envelope:
        return self._put(routes.experiments(collab_id, project_id, expt_id), updates)

    def delete(self, collab_id: str, project_id: str, expt_id: str) -> Envelope:
        return self._delete(routes.experiments(collab_id, project_id, expt_id))


class RunTask(BaseTask):
    """Runs: one set of hyper-parameters for an experiment."""

    def create(
        self,
        collab_id: str,
        project_id: str,
        expt_id: str,
        run_id: str,
        algorithm: str = "FedProx",
        batch_size: int | None = None,
        rounds: int = 10,
        epochs: int = 100,
        lr: float = 0.001,
        weight_decay: float = 0.0,
        lr_decay: float = 0.1,
        mu: float = 0.1,
        l1_lambda: float = 0.0,
        l2_lambda: float = 0.0,
        optimizer: str = "SGD",
        criterion: str = "BCELoss",
        lr_scheduler: str = "CyclicLR",
        delta: float = 0.0,
        patience: int = 10,
        seed: int = 42,
        is_condensed: bool = True,
        is_snn: bool = False,
        precision_fractional: int = 5,
        **kwargs: Any,
    ) -> Envelope:
        """POST the hyper-parameters. Extra keyword arguments (e.g. `base_lr`, `max_lr`,
        `momentum`) are passed by name to the optimizer, scheduler and criterion. `is_condensed`
        is accepted for compatibility and not sent; None values are left to the server."""
        del is_condensed
        body = compact(
            {
                "run_id": run_id,
                "algorithm": algorithm,
                "batch_size": batch_size,
                "rounds": rounds,
                "epochs": epochs,
                "lr": lr,
                "weight_decay": weight_decay,
                "lr_decay": lr_decay,
                "mu": mu,
                "l1_lambda": l1_lambda,
                "l2_lambda": l2_lambda,
                "optimizer": optimizer,
                "criterion": criterion,
                "lr_scheduler": lr_scheduler,
                "delta": delta,
                "patience": patience,
                "seed": seed,
                "is_snn": is_snn,
                "precision_fractional": precision_fractional,
                **kwargs,
            }
        )
        return self._post(routes.runs(collab_id, project_id, expt_id), body)

    def read_all(self, collab_id: str, project_id: str, expt_id: str) -> Envelope:
        return self._get(routes.runs(collab_id, project_id, expt_id))

    def read(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> Envelope:
        return self._get(routes.runs(collab_id, project_id, expt_id, run_id))

    def update(self, collab_id: str, project_id: str, expt_id: str, run_id: str, **updates: Any) -> Envelope:
        return self._put(routes.runs(collab_id, project_id, expt_id, run_id), updates)

    def delete(self, collab_id: str, project_id: str, expt_id: str, run_id: str) -> Envelope:
        return self._delete(routes.runs(collab_id, project_id, expt_id, run_id))


class ParticipantTask(BaseTask):
    """Participants (parties); the record's key is sent as `id`."""

    def create(
        self,
        participant_id: str,
        category: Sequence[str] | None = None,
        summary: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        socials: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Envelope:
        body = compact(
            {
                "id": participant_id,
                "category": list(category) if category is not None else None,
                "summary": summary,
                "phone": phone,
                "email": email,
                "socials": dict(socials) if socials is not None else None,
                **kwargs,
            }
        )
        return self._post(routes.participants(), body)

    def read_all(self) -> Envelope:
        return self._get(routes.participants())

    def read(self, participant_id: str) -> Envelope:
        return self._get(routes.participants(participant_id))

    def update(self, participant_id: str, **updates: Any) -> Envelope:
        return self._put(routes.participants(participant_id), updates)

    def delete(self, participant_id: str) -> Envelope:
        return self._delete(routes.participants(participant_id))
