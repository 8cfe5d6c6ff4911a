"""`…/experiments/{e}/runs[/{run_id}]`: one set of hyper-parameters for an experiment.

Defaults are filled in here, and the run's optimizer, scheduler and criterion are built on a
dummy parameter before anything is stored, so a run that could not train is refused up front.
"""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from synergos_contract.envelope import envelope
from synergos_core.model import check_combination, validate_run

from ..deps import created, CollabId, ExptId, ProjectId, RunId, SlashRouter, StoreDep, agree_with_url
from ..schemas import RunCreate, RunUpdate, recheck

router = SlashRouter(prefix="/ttp/connect/collaborations/{collab_id}/projects/{project_id}/experiments/{expt_id}",
                     tags=["runs"])


@router.get("/runs", name="runs")
def read_runs(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId,
              expt_id: ExptId) -> JSONResponse:
    return envelope(request, store.list_runs(collab_id, project_id, expt_id))


@router.post("/runs", name="runs", status_code=201)
def create_run(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId,
               body: RunCreate) -> JSONResponse:
    hyperparameters = agree_with_url(request, body.model_dump(mode="json", exclude={"run_id"}))
    validate_run(hyperparameters)
    project = store.get_project(collab_id, project_id)
    experiment = store.get_experiment(collab_id, project_id, expt_id)
    check_combination(experiment["model"], hyperparameters, project["action"], None)
    record = store.create_run(collab_id, project_id, expt_id, body.run_id, hyperparameters)
    return created(request, record)


@router.get("/runs/{run_id}", name="run")
def read_run(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId,
             run_id: RunId) -> JSONResponse:
    return envelope(request, store.get_run(collab_id, project_id, expt_id, run_id))


@router.put("/runs/{run_id}", name="run")
def update_run(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId,
               run_id: RunId, body: RunUpdate) -> JSONResponse:
    changes = agree_with_url(request, body.model_dump(mode="json", exclude_unset=True))

    def validate(merged: dict[str, Any]) -> dict[str, Any]:
        hyperparameters = recheck(RunCreate, merged, {"run_id": run_id})
        validate_run(hyperparameters)
        return hyperparameters

    return envelope(request, store.update_run(collab_id, project_id, expt_id, run_id, changes, validate))


@router.delete("/runs/{run_id}", name="run")
def delete_run(request: Request, store: StoreDep, collab_id: CollabId, project_id: ProjectId, expt_id: ExptId,
               run_id: RunId) -> JSONResponse:
    return envelope(request, store.delete_run(collab_id, project_id, expt_id, run_id))
