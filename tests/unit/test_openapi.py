"""The OpenAPI document describes every answer: each route's success has a response schema, the
envelope around a record's public shape, and what a route sends fits the schema it declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from synergos_core.settings import DirectorSettings, TTPSettings
from synergos_director.app import create_app as create_director_app
from synergos_ttp.app import create_app as create_ttp_app


@pytest.fixture(params=["ttp", "director"])
def openapi(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    settings_class, create = (
        (TTPSettings, create_ttp_app) if request.param == "ttp" else (DirectorSettings, create_director_app)
    )
    settings = settings_class(  # in-process TestClient: no TLS to carry an identity
        insecure=True,
        id=request.param,
        data_dir=tmp_path / "data",
        outputs_dir=tmp_path / "out",
        mlflow_dir=tmp_path / "mlflow",
    )
    with TestClient(create(settings)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _resolve(document: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def test_every_success_of_every_route_has_a_response_schema(openapi: dict) -> None:
    operations = [(method, path, op) for path, ops in openapi["paths"].items() for method, op in ops.items()]
    assert len(operations) > 40
    missing = []
    for method, path, op in operations:
        successes = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        assert successes, (method, path)
        for status, answer in successes.items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema") or {}
            if not schema.get("$ref") and not schema.get("anyOf"):
                missing.append(f"{method.upper()} {path} {status}")
    assert not missing, "responses without a schema:\n" + "\n".join(missing)


def test_a_record_answers_in_the_envelope_of_its_public_shape(openapi: dict) -> None:
    run = openapi["paths"]["/ttp/connect/collaborations/{collab_id}/projects/{project_id}/experiments/{expt_id}/runs"]
    created = _resolve(openapi, run["post"]["responses"]["201"]["content"]["application/json"]["schema"])
    assert set(created["required"]) >= {"apiVersion", "success", "status", "method", "params", "data"}
    public = _resolve(openapi, created["properties"]["data"])
    assert {"key", "created_at", "relations", "rounds", "optimizer", "lr_scheduler"} <= set(public["properties"])
    # a re-posted run answers 200 with it; an unknown id, a conflict, a bad body get the error envelope
    assert "200" in run["post"]["responses"]
    for status in ("404", "409", "422"):
        error = _resolve(openapi, run["post"]["responses"][status]["content"]["application/json"]["schema"])
        assert "error" in error["required"]
    assert "409" not in run["get"]["responses"]


def test_long_work_documents_both_answers_basic_and_queued(openapi: dict) -> None:
    train = openapi["paths"]["/ttp/train/collaborations/{collab_id}/projects/{project_id}/models/{expt_id}/{run_id}"]
    assert {"201", "202"} <= set(train["post"]["responses"])
    queued = _resolve(openapi, train["post"]["responses"]["202"]["content"]["application/json"]["schema"])
    job = _resolve(openapi, queued["properties"]["data"]["items"])
    assert {"job_id", "kind", "keys", "state"} <= set(job["properties"])
