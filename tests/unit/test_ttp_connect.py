"""The TTP's connect routes (phase 1 of the deployment guide) against a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from synergos_core.settings import TTPSettings
from synergos_ttp.app import create_app

CONNECT = "/ttp/connect"
C = f"{CONNECT}/collaborations"
P = f"{C}/collaboration_1/projects"
E = f"{P}/project_1/experiments"
R = f"{E}/experiment_1/runs"

MQ = {"host": "172.19.152.151", "ports": {"main": 5672, "ui": 15672}, "secure": False}
TABULAR_MODEL = [
    {
        "activation": "sigmoid",
        "is_input": True,
        "l_type": "Linear",
        "structure": {"bias": True, "in_features": 18, "out_features": 1},
    }
]
RUN_1 = {
    "run_id": "run_1",
    "rounds": 2,
    "epochs": 1,
    "base_lr": 0.0005,
    "max_lr": 0.005,
    "criterion": "L1Loss",
    "optimizer": "SGD",
    "lr_scheduler": "CyclicLR",
}
GUIDE_TAGS = {"train": [["train"]], "evaluate": [["evaluate"]], "predict": [["predict"]]}


def node(host: str) -> dict:
    return {"host": host, "port": 8020, "f_port": 5000, "log_msgs": True, "verbose": True}


def registration_url(participant_id: str, collab_id: str = "collaboration_1", project_id: str = "project_1") -> str:
    return f"{C}/{collab_id}/projects/{project_id}/participants/{participant_id}/registration"


@pytest.fixture()
def settings(tmp_path: Path) -> TTPSettings:
    return TTPSettings(
        insecure=True, id="t", data_dir=tmp_path, outputs_dir=tmp_path / "out", mlflow_dir=tmp_path / "mlflow"
    )


@pytest.fixture()
def client(settings: TTPSettings) -> TestClient:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def ok(response, status: int = 200) -> dict:
    """The envelope of a success, checked; returns its data."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] == 1 and body["status"] == status and body["apiVersion"]
    assert set(body) >= {"apiVersion", "success", "status", "method", "params", "data"}
    return body["data"]


def failed(response, status: int, code: str | None = None) -> dict:
    """The envelope of a failure, checked; returns its error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] == 0 and body["status"] == status and body["data"] is None
    if code is not None:
        assert body["error"]["code"] == code, body["error"]
    return body["error"]


def phase1(client: TestClient) -> None:
    """The deployment guide's phase 1, as the HTTP bodies the Driver sends."""
    ok(client.post(C, json={"collab_id": "collaboration_1", "mq": MQ}), 201)
    ok(
        client.post(
            P,
            json={
                "project_id": "project_1",
                "action": "classify",
                "incentives": {"tier_1": [], "tier_2": [], "tier_3": []},
            },
        ),
        201,
    )
    ok(client.post(E, json={"expt_id": "experiment_1", "model": TABULAR_MODEL}), 201)
    ok(client.post(R, json=RUN_1), 201)
    for pid in ("participant_1", "participant_2"):
        ok(client.post(f"{CONNECT}/participants", json={"id": pid}), 201)
    ok(
        client.post(
            registration_url("participant_1"), json={"role": "guest", "n_count": 1, "node_0": node("172.19.152.154")}
        ),
        201,
    )
    ok(
        client.post(
            registration_url("participant_2"), json={"role": "host", "n_count": 1, "node_0": node("172.19.152.155")}
        ),
        201,
    )
    for pid in ("participant_1", "participant_2"):
        ok(client.post(registration_url(pid) + "/tags", json=GUIDE_TAGS), 201)


def table_counts(settings: TTPSettings) -> dict[str, int]:
    with sqlite3.connect(Path(settings.data_dir) / "synergos.db") as db:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in (
                "collaborations",
                "projects",
                "experiments",
                "runs",
                "participants",
                "registrations",
                "registration_nodes",
                "tags",
            )
        }


# ---- phase 1 and the envelope ----


def test_guide_phase1_creates_every_record_with_the_envelope(client: TestClient) -> None:
    response = client.post(C, json={"collab_id": "collaboration_1", "mq": MQ})
    body = response.json()
    assert response.status_code == 201
    assert body["method"] == "collaborations.post" and body["params"] == {}
    assert body["data"]["key"] == {"collab_id": "collaboration_1"}
    assert body["data"]["mq"] == MQ and "created_at" in body["data"] and "Project" in body["data"]["relations"]

    project = client.post(
        P,
        json={
            "project_id": "project_1",
            "action": "classify",
            "incentives": {"tier_1": [], "tier_2": [], "tier_3": []},
        },
    ).json()
    assert project["method"] == "projects.post" and project["params"] == {"collab_id": "collaboration_1"}
    assert project["data"]["key"] == {"collab_id": "collaboration_1", "project_id": "project_1"}
    assert project["data"]["action"] == "classify"

    expt = ok(client.post(E, json={"expt_id": "experiment_1", "model": TABULAR_MODEL}), 201)
    assert expt["model"] == TABULAR_MODEL

    run = ok(client.post(R, json=RUN_1), 201)
    assert run["key"] == {
        "collab_id": "collaboration_1",
        "project_id": "project_1",
        "expt_id": "experiment_1",
        "run_id": "run_1",
    }
    # the guide's values, the extras passed by name, and the defaults of everything else
    assert run["rounds"] == 2 and run["epochs"] == 1 and run["criterion"] == "L1Loss"
    assert run["base_lr"] == 0.0005 and run["max_lr"] == 0.005
    assert run["algorithm"] == "FedProx" and run["lr"] == 0.001 and run["mu"] == 0.1 and run["seed"] == 42
    assert run["batch_size"] is None and run["patience"] == 10 and run["is_snn"] is False

    participant = ok(client.post(f"{CONNECT}/participants", json={"id": "participant_1"}), 201)
    assert participant["key"] == {"participant_id": "participant_1"}
    ok(client.post(f"{CONNECT}/participants", json={"id": "participant_2"}), 201)

    reg = client.post(
        registration_url("participant_1"), json={"role": "guest", "n_count": 1, "node_0": node("172.19.152.154")}
    ).json()
    assert reg["status"] == 201 and reg["method"] == "registration.post"
    assert reg["data"]["role"] == "guest" and reg["data"]["n_count"] == 1
    assert reg["data"]["node_0"] == node("172.19.152.154")
    assert reg["data"]["participant"]["key"] == {"participant_id": "participant_1"}
    tags = client.post(registration_url("participant_1") + "/tags", json=GUIDE_TAGS).json()
    assert tags["status"] == 201 and tags["method"] == "tags.post"
    assert {k: tags["data"][k] for k in GUIDE_TAGS} == GUIDE_TAGS

    project = ok(client.get(f"{P}/project_1"))
    assert [r["key"]["run_id"] for r in project["relations"]["Run"]] == ["run_1"]
    assert [r["key"]["participant_id"] for r in project["relations"]["Registration"]] == ["participant_1"]
    assert "relations" not in project["relations"]["Run"][0]


def test_health_names_the_service(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["success"] == 1 and body["method"] == "health.get"
    assert {k: body["data"][k] for k in ("id", "status")} == {"id": "t", "status": "ok"}
    # the MLflow store was made ready at start-up, before any work
    assert body["data"]["mlflow"]["tracking"] == "ok" and body["data"]["mlflow"]["store"].endswith("mlflow.db")


# ---- reads, updates, deletes ----


def test_reads_list_and_fetch_every_kind(client: TestClient) -> None:
    phase1(client)
    assert [c["key"]["collab_id"] for c in ok(client.get(C))] == ["collaboration_1"]
    assert ok(client.get(f"{C}/collaboration_1"))["mq"] == MQ
    assert [p["key"]["project_id"] for p in ok(client.get(P))] == ["project_1"]
    assert ok(client.get(f"{E}/experiment_1"))["model"] == TABULAR_MODEL
    assert ok(client.get(f"{R}/run_1"))["lr_scheduler"] == "CyclicLR"
    assert [r["key"]["run_id"] for r in ok(client.get(R))] == ["run_1"]
    assert sorted(p["key"]["participant_id"] for p in ok(client.get(f"{CONNECT}/participants"))) == [
        "participant_1",
        "participant_2",
    ]
    assert ok(client.get(registration_url("participant_2")))["node_0"]["host"] == "172.19.152.155"
    assert ok(client.get(registration_url("participant_2") + "/tags"))["predict"] == [["predict"]]

    listings = {
        f"{C}/collaboration_1/registrations": 2,
        f"{P}/project_1/registrations": 2,
        f"{CONNECT}/participants/participant_1/registrations": 1,
        f"{C}/collaboration_1/participants/participant_1/registrations": 1,
        f"{CONNECT}/participants/participant_1/collaborations/collaboration_1/registrations": 1,
    }
    for url, count in listings.items():
        records = ok(client.get(url))
        assert len(records) == count, url
        assert all(r["key"]["collab_id"] == "collaboration_1" for r in records)


def test_updates_merge_and_revalidate(client: TestClient) -> None:
    phase1(client)
    collab = ok(client.put(f"{C}/collaboration_1", json={"mlops": {"host": "mlflow", "ports": {"main": 5500}}}))
    assert collab["mq"] == MQ and collab["mlops"]["host"] == "mlflow"
    collab = ok(client.put(f"{C}/collaboration_1", json={"mq": None}))
    assert "mq" not in collab and collab["mlops"]["host"] == "mlflow"

    project = ok(client.put(f"{P}/project_1", json={"action": "regress"}))
    assert project["action"] == "regress" and project["incentives"] == {"tier_1": [], "tier_2": [], "tier_3": []}

    run = ok(client.put(f"{R}/run_1", json={"rounds": 5, "momentum": 0.9}))
    assert run["rounds"] == 5 and run["momentum"] == 0.9 and run["epochs"] == 1 and run["max_lr"] == 0.005
    error = failed(client.put(f"{R}/run_1", json={"optimizer": "Sideways"}), 422)
    assert "Sideways" in error["detail"]
    assert ok(client.get(f"{R}/run_1"))["optimizer"] == "SGD"

    new_model = [
        {
            "l_type": "Linear",
            "structure": {"in_features": 4, "out_features": 2},
            "activation": "softmax",
            "is_input": True,
        }
    ]
    assert ok(client.put(f"{E}/experiment_1", json={"model": new_model}))["model"] == new_model

    participant = ok(client.put(f"{CONNECT}/participants/participant_1", json={"summary": "a hospital"}))
    assert participant["summary"] == "a hospital"

    reg = ok(
        client.put(
            registration_url("participant_1"),
            json={"n_count": 2, "node_0": node("10.0.0.1"), "node_1": node("10.0.0.2")},
        )
    )
    assert reg["n_count"] == 2 and reg["node_1"]["host"] == "10.0.0.2" and reg["role"] == "guest"
    reg = ok(client.put(registration_url("participant_1"), json={"role": "arbiter"}))
    assert reg["role"] == "arbiter" and reg["n_count"] == 2
    failed(client.put(registration_url("participant_1"), json={"n_count": 3}), 422, "request.invalid")

    tags = ok(client.put(registration_url("participant_1") + "/tags", json={"evaluate": [["eval", "2021"]]}))
    assert tags["evaluate"] == [["eval", "2021"]] and tags["train"] == [["train"]]
    error = failed(client.put(registration_url("participant_1") + "/tags", json={"train": []}), 422)
    assert "train" in error["detail"]


def test_delete_collaboration_cascades_but_keeps_participants(client: TestClient, settings: TTPSettings) -> None:
    phase1(client)
    deleted = client.delete(f"{C}/collaboration_1").json()
    assert deleted["success"] == 1 and deleted["method"] == "collaboration.delete"
    assert deleted["data"]["key"] == {"collab_id": "collaboration_1"}
    assert len(deleted["data"]["relations"]["Registration"]) == 2  # the record as it was

    failed(client.get(f"{C}/collaboration_1"), 404, "collaboration.not_found")
    failed(client.get(f"{P}/project_1"), 404, "collaboration.not_found")
    failed(client.get(registration_url("participant_1") + "/tags"), 404, "collaboration.not_found")
    assert ok(client.get(f"{CONNECT}/participants/participant_1/registrations")) == []
    assert len(ok(client.get(f"{CONNECT}/participants"))) == 2
    counts = table_counts(settings)
    assert counts["participants"] == 2
    assert all(counts[t] == 0 for t in counts if t != "participants"), counts


def test_deletes_cascade_at_every_level(client: TestClient, settings: TTPSettings) -> None:
    phase1(client)
    assert ok(client.delete(f"{R}/run_1"))["key"]["run_id"] == "run_1"
    failed(client.get(f"{R}/run_1"), 404, "run.not_found")
    ok(client.post(R, json=RUN_1), 201)  # the id is free again
    ok(client.delete(f"{E}/experiment_1"))
    assert table_counts(settings)["runs"] == 0

    ok(client.delete(registration_url("participant_1") + "/tags"))
    failed(client.get(registration_url("participant_1") + "/tags"), 404, "tag.not_found")
    ok(client.delete(registration_url("participant_1")))
    failed(client.get(registration_url("participant_1")), 404, "registration.not_found")

    deleted = ok(client.delete(f"{CONNECT}/participants/participant_2"))
    assert [r["key"]["participant_id"] for r in deleted["relations"]["Registration"]] == ["participant_2"]
    counts = table_counts(settings)
    assert counts["registrations"] == counts["registration_nodes"] == counts["tags"] == 0
    assert counts["projects"] == 1 and counts["participants"] == 1

    ok(client.delete(f"{P}/project_1"))
    failed(client.get(f"{P}/project_1"), 404, "project.not_found")
    assert ok(client.get(f"{C}/collaboration_1"))["relations"]["Project"] == []


# ---- conflicts and unknown ids ----


def test_reposting_the_same_body_answers_the_existing_record(client: TestClient) -> None:
    phase1(client)
    again = [
        (C, {"collab_id": "collaboration_1", "mq": MQ}),
        (
            P,
            {"project_id": "project_1", "action": "classify", "incentives": {"tier_1": [], "tier_2": [], "tier_3": []}},
        ),
        (E, {"expt_id": "experiment_1", "model": TABULAR_MODEL}),
        (R, RUN_1),
        (f"{CONNECT}/participants", {"id": "participant_1"}),
        (registration_url("participant_1"), {"role": "guest", "n_count": 1, "node_0": node("172.19.152.154")}),
        (registration_url("participant_1") + "/tags", GUIDE_TAGS),
    ]
    for url, body in again:  # re-running the guide's script works
        response = client.post(url, json=body)
        assert response.status_code == 200, (url, response.json())
        record = response.json()["data"]
        assert record["created_at"] and record["key"]
    assert table_counts(client.app.state.settings)["runs"] == 1


def test_reposting_a_different_body_is_a_conflict_naming_update(client: TestClient) -> None:
    phase1(client)
    duplicates = [
        (C, {"collab_id": "collaboration_1"}, "collaboration.exists"),
        (P, {"project_id": "project_1", "action": "regress"}, "project.exists"),
        (E, {"expt_id": "experiment_1", "model": [dict(TABULAR_MODEL[0], activation=None)]}, "experiment.exists"),
        (R, {**RUN_1, "rounds": 3}, "run.exists"),
        (f"{CONNECT}/participants", {"id": "participant_1", "category": "hospital"}, "participant.exists"),
        (registration_url("participant_1"), {"role": "host", "n_count": 1, "node_0": node("h")}, "registration.exists"),
        (registration_url("participant_1") + "/tags", {"train": [["other"]]}, "tag.exists"),
    ]
    for url, body, code in duplicates:
        error = failed(client.post(url, json=body), 409, code)
        assert "update" in error["detail"]
    assert ok(client.get(f"{P}/project_1"))["action"] == "classify"  # unchanged by the refused POST


def test_unknown_ids_are_404_naming_the_id(client: TestClient) -> None:
    phase1(client)
    cases = [
        (f"{C}/nowhere", "collaboration.not_found", "nowhere"),
        (f"{P}/nothing", "project.not_found", "nothing"),
        (f"{E}/experiment_9", "experiment.not_found", "experiment_9"),
        (f"{R}/run_9", "run.not_found", "run_9"),
        (f"{C}/nowhere/projects/project_1/experiments/experiment_1/runs/run_1", "collaboration.not_found", "nowhere"),
        (f"{CONNECT}/participants/ghost", "participant.not_found", "ghost"),
        (registration_url("ghost"), "participant.not_found", "ghost"),
        (f"{C}/nowhere/registrations", "collaboration.not_found", "nowhere"),
        (f"{CONNECT}/participants/ghost/registrations", "participant.not_found", "ghost"),
    ]
    for url, code, ident in cases:
        for method in ("get", "delete"):
            if url.endswith("registrations") and method == "delete":
                continue
            error = failed(getattr(client, method)(url), 404, code)
            assert ident in error["detail"], (url, error)
    ok(client.post(f"{CONNECT}/participants", json={"id": "participant_3"}), 201)
    failed(client.get(registration_url("participant_3")), 404, "registration.not_found")
    failed(client.put(f"{R}/run_9", json={"rounds": 1}), 404, "run.not_found")


def test_children_of_missing_parents_are_refused(client: TestClient, settings: TTPSettings) -> None:
    phase1(client)
    before = table_counts(settings)
    failed(
        client.post(f"{C}/nowhere/projects", json={"project_id": "p", "action": "classify"}),
        404,
        "collaboration.not_found",
    )
    failed(
        client.post(f"{P}/project_9/experiments", json={"expt_id": "e", "model": TABULAR_MODEL}),
        404,
        "project.not_found",
    )
    failed(client.post(f"{E}/experiment_9/runs", json=RUN_1), 404, "experiment.not_found")
    failed(
        client.post(registration_url("ghost"), json={"role": "host", "n_count": 1, "node_0": node("h")}),
        404,
        "participant.not_found",
    )
    ok(client.post(f"{CONNECT}/participants", json={"id": "participant_3"}), 201)
    failed(client.post(registration_url("participant_3") + "/tags", json=GUIDE_TAGS), 404, "registration.not_found")
    after = table_counts(settings)
    assert after == {**before, "participants": before["participants"] + 1}


# ---- invalid bodies ----


def test_invalid_bodies_are_422_with_field_paths(client: TestClient, settings: TTPSettings) -> None:
    phase1(client)
    before = table_counts(settings)
    cases = [
        (C, {"collab_id": "bad/id"}, "collab_id"),
        (C, {"collab_id": "c9", "mq": {"ports": {"main": 1}}}, "mq.host"),
        (C, {"collab_id": "c9", "mqtt": MQ}, "mqtt"),
        (P, {"project_id": "p9", "action": "cluster"}, "action"),
        (P, {"project_id": "p9"}, "action"),
        (P, {"project_id": "p9", "action": "classify", "collab_id": "other"}, "collab_id"),
        (P, {"project_id": "p9", "action": "classify", "relations": {}}, "relations"),
        (E, {"expt_id": "e9", "model": []}, "model"),
        (E, {"expt_id": "e9", "model": [{"structure": {}}]}, "model.0.l_type"),
        (R, {"run_id": "r9", "rounds": 0}, "rounds"),
        (R, {"run_id": "r9", "algorithm": "FedMagic"}, "algorithm"),
        (f"{CONNECT}/participants", {}, "id"),
        (f"{CONNECT}/participants", {"id": "aggregate"}, "id"),
        (f"{CONNECT}/participants", {"id": "p9", "shoe_size": 42}, "shoe_size"),
        (registration_url("participant_1", project_id="project_1") + "/tags", {"train": [["../etc"]]}, "train"),
    ]
    ok(client.post(f"{CONNECT}/participants", json={"id": "participant_3"}), 201)
    reg3 = registration_url("participant_3")
    cases += [
        (reg3, {"role": "leader", "n_count": 1, "node_0": node("h")}, "role"),
        (reg3, {"role": "host", "n_count": 2, "node_0": node("h")}, "n_count"),
        (reg3, {"role": "host", "n_count": 1, "node_0": node("h"), "colour": "blue"}, "colour"),
        (reg3, {"role": "host", "n_count": 1, "node_0": {"host": "h", "port": 70000, "f_port": 1}}, "node_0.port"),
        (reg3, {"role": "host", "n_count": 1, "node_1": node("h")}, "node_0"),
    ]
    for url, body, path in cases:
        error = failed(client.post(url, json=body), 422)
        paths = [f["path"] for f in error["fields"]]
        assert any(p == path or p.startswith(path + ".") for p in paths), (url, body, error)
        assert error["code"] == "request.invalid"
    failed(client.post(P, content=b"{not json", headers={"content-type": "application/json"}), 422)
    failed(client.put(f"{P}/project_1", json={"project_id": "project_2"}), 422, "request.invalid")
    failed(client.put(f"{CONNECT}/participants/participant_1", json={"id": "participant_2"}), 422)
    assert table_counts(settings) == {**before, "participants": before["participants"] + 1}


def test_ids_in_urls_must_be_plain_names(client: TestClient) -> None:
    error = failed(client.get(f"{C}/bad%20id"), 422, "request.invalid")
    assert error["fields"][0]["path"] == "path.collab_id"
    error = failed(client.post(f"{C}/.hidden/projects", json={"project_id": "p", "action": "classify"}), 422)
    assert error["fields"][0]["path"] == "path.collab_id"
    failed(client.post(f"{CONNECT}/participants/p%241/registrations"), 405)  # listings are read-only
    error = failed(client.get(f"{CONNECT}/participants/p%241/registrations"), 422)
    assert error["fields"][0]["path"] == "path.participant_id"
    assert ok(client.get(C)) == []


@pytest.mark.parametrize(
    "layer, named",
    [
        ({"l_type": "Linearish", "structure": {}}, "Linearish"),
        (
            {"l_type": "Linear", "structure": {"in_features": 2, "out_features": 1}, "activation": "sigmoidal"},
            "sigmoidal",
        ),
        ({"l_type": "Linear", "structure": {"in_feature": 2}}, "Linear"),
    ],
)
def test_unknown_model_names_are_422_and_store_nothing(
    client: TestClient, settings: TTPSettings, layer: dict, named: str
) -> None:
    phase1(client)
    error = failed(client.post(E, json={"expt_id": "experiment_2", "model": [layer]}), 422)
    assert named in error["detail"] and error["fields"][0]["path"].startswith("model.0")
    failed(client.get(f"{E}/experiment_2"), 404, "experiment.not_found")
    assert table_counts(settings)["experiments"] == 1


@pytest.mark.parametrize(
    "change, named",
    [
        ({"criterion": "NotALoss"}, "NotALoss"),
        ({"criterion": "CTCLoss"}, "CTCLoss"),
        ({"optimizer": "Sideways"}, "Sideways"),
        ({"lr_scheduler": "Wobbly"}, "Wobbly"),
        ({"lr_scheduler": "CyclicLR", "base_lr": None, "max_lr": None}, "max_lr"),
    ],
)
def test_unknown_run_names_are_422_and_store_nothing(
    client: TestClient, settings: TTPSettings, change: dict, named: str
) -> None:
    phase1(client)
    body = {**RUN_1, "run_id": "run_2", **change}
    body = {k: v for k, v in body.items() if v is not None}
    error = failed(client.post(R, json=body), 422)
    assert named in error["detail"] and error["fields"]
    failed(client.get(f"{R}/run_2"), 404, "run.not_found")
    assert table_counts(settings)["runs"] == 1


def test_body_over_the_limit_is_413(settings: TTPSettings) -> None:
    settings.max_body_bytes = 2048
    with TestClient(create_app(settings)) as client:
        huge = {"project_id": "p", "action": "classify", "incentives": {"x": "y" * 4096}}
        ok(client.post(C, json={"collab_id": "c"}), 201)
        failed(client.post(f"{C}/c/projects", json=huge), 413, "request.too_large")
        failed(client.get(f"{C}/c/projects/p"), 404, "project.not_found")


def test_collections_answer_with_and_without_trailing_slash(client: TestClient) -> None:
    ok(client.post(C + "/", json={"collab_id": "collaboration_1", "mq": MQ}), 201)
    ok(client.post(P + "/", json={"project_id": "project_1", "action": "classify"}), 201)
    ok(client.post(E + "/", json={"expt_id": "experiment_1", "model": TABULAR_MODEL}), 201)
    ok(client.post(R + "/", json=RUN_1), 201)
    ok(client.post(f"{CONNECT}/participants/", json={"id": "participant_1"}), 201)
    ok(
        client.post(registration_url("participant_1") + "/", json={"role": "host", "n_count": 1, "node_0": node("h")}),
        201,
    )
    collections = [
        C,
        P,
        E,
        R,
        f"{CONNECT}/participants",
        f"{C}/collaboration_1/registrations",
        f"{P}/project_1/registrations",
        f"{CONNECT}/participants/participant_1/registrations",
    ]
    for url in collections:
        plain = client.get(url, follow_redirects=False)
        slashed = client.get(url + "/", follow_redirects=False)
        assert plain.status_code == slashed.status_code == 200, url
        assert ok(plain) == ok(slashed) and len(ok(plain)) == 1


def test_same_project_id_under_two_collaborations_is_independent(client: TestClient) -> None:
    phase1(client)
    ok(client.post(C, json={"collab_id": "collaboration_2"}), 201)
    p2 = f"{C}/collaboration_2/projects"
    ok(client.post(p2, json={"project_id": "project_1", "action": "regress"}), 201)
    ok(client.post(f"{p2}/project_1/experiments", json={"expt_id": "experiment_1", "model": TABULAR_MODEL}), 201)
    ok(
        client.post(
            registration_url("participant_1", "collaboration_2"),
            json={"role": "host", "n_count": 1, "node_0": node("10.9.9.9")},
        ),
        201,
    )

    assert ok(client.get(f"{P}/project_1"))["action"] == "classify"
    other = ok(client.get(f"{p2}/project_1"))
    assert other["action"] == "regress" and other["relations"]["Run"] == []
    assert [r["node_0"]["host"] for r in other["relations"]["Registration"]] == ["10.9.9.9"]
    assert len(ok(client.get(f"{C}/collaboration_1"))["relations"]["Registration"]) == 2

    ok(client.delete(f"{p2}/project_1"))
    first = ok(client.get(f"{P}/project_1"))
    assert len(first["relations"]["Experiment"]) == 1 and len(first["relations"]["Registration"]) == 2
    assert ok(client.get(f"{R}/run_1"))["rounds"] == 2


# ---- the store's orchestration API ----


def test_project_grid_has_the_documented_shape(client: TestClient) -> None:
    phase1(client)
    ok(client.post(f"{CONNECT}/participants", json={"id": "participant_0"}), 201)
    ok(
        client.post(
            registration_url("participant_0"),
            json={"role": "arbiter", "n_count": 2, "node_1": node("10.0.0.2"), "node_0": node("10.0.0.1")},
        ),
        201,
    )
    store = client.app.state.store
    grid = store.project_grid("collaboration_1", "project_1")
    assert [g["participant_id"] for g in grid] == ["participant_0", "participant_1", "participant_2"]
    assert grid[0] == {
        "participant_id": "participant_0",
        "role": "arbiter",
        "nodes": [node("10.0.0.1"), node("10.0.0.2")],
        "tags": {"train": [], "evaluate": [], "predict": []},
    }
    assert grid[1] == {
        "participant_id": "participant_1",
        "role": "guest",
        "nodes": [node("172.19.152.154")],
        "tags": GUIDE_TAGS,
    }
    with pytest.raises(Exception) as raised:
        store.project_grid("collaboration_1", "project_9")
    assert getattr(raised.value, "code", None) == "project.not_found"


def test_store_results_upsert_list_and_cascade(client: TestClient) -> None:
    from synergos_core.errors import NotFound
    from synergos_core.records import Alignment, Model, Validation

    phase1(client)
    store = client.app.state.store
    keys = ("collaboration_1", "project_1")
    run = (*keys, "experiment_1", "run_1")

    store.put_alignment(*keys, "participant_1", {"train": {"X": [1], "y": []}})
    store.put_alignment(*keys, "participant_1", {"train": {"X": [2], "y": []}})
    (alignment,) = store.list_alignments(*keys)  # typed records: the envelope is drawn at the REST edge only
    assert isinstance(alignment, Alignment) and alignment.train is not None and alignment.train.X == [2]

    store.put_model(*run, {"global": {"origin": "ttp"}})
    (model,) = store.list_models(*keys, "experiment_1")
    assert isinstance(model, Model) and model.details() == {"global": {"origin": "ttp"}}
    store.put_validation(*run, "participant_1", {"evaluate": {"statistics": {"accuracy": 0.5}}})
    store.put_validation(*run, "aggregate", {"evaluate": {"statistics": {"accuracy": 0.6}}})
    store.put_prediction("participant_1", *run, {"predict": {"statistics": {}}})
    assert {v.participant_id for v in store.list_validations(*keys)} == {"participant_1", "aggregate"}
    assert len(store.list_validations(*run, participant_id="aggregate")) == 1
    assert len(store.list_predictions("participant_1", "collaboration_1")) == 1
    validations = store.get_run(*run).relations["Validation"]
    assert len(validations) == 2 and all(isinstance(v, Validation) for v in validations)

    with pytest.raises(NotFound) as missing:
        store.put_model(*keys, "experiment_1", "run_9", {})
    assert missing.value.code == "run.not_found"
    with pytest.raises(NotFound):
        store.put_validation(*run, "ghost", {})

    ok(client.delete(f"{CONNECT}/participants/participant_1"))
    assert [v.participant_id for v in store.list_validations(*keys)] == ["aggregate"]
    assert store.list_alignments(*keys) == []
    with pytest.raises(NotFound):
        store.list_predictions("participant_1", "collaboration_1")

    store.set_experiment_model(*keys, "experiment_1", TABULAR_MODEL[:1])
    ok(client.delete(f"{R}/run_1"))
    assert store.list_models(*keys) == [] and store.list_validations(*keys) == []


# ---- reads of scopes that have no records yet ----


def test_an_empty_scope_reads_as_an_empty_list_and_unknown_ids_stay_404(client: TestClient) -> None:
    phase1(client)
    train = "/ttp/train/collaborations/collaboration_1/projects/project_1"
    evaluate = "/ttp/evaluate/collaborations/collaboration_1/projects/project_1"
    predictions = "/ttp/evaluate/participants/participant_1/collaborations/collaboration_1/predictions"
    for url in (
        f"{train}/alignments",
        f"{train}/models",
        f"{train}/models/experiment_1/run_1",
        f"{train}/models/experiment_1/optimizations",
        f"{evaluate}/validations",
        f"{evaluate}/validations/experiment_1/run_1",
        f"{evaluate}/validations/experiment_1/run_1/participant_1",
        predictions,
        f"{predictions}/project_1/experiment_1/run_1",
    ):
        # scripts written for the original Synergos poll `read` until data appears
        assert ok(client.get(url)) == [], url
    for url, code in (
        (f"{train}/models/experiment_9", "experiment.not_found"),
        (f"{evaluate}/validations/experiment_1/run_9", "run.not_found"),
        ("/ttp/train/collaborations/collaboration_1/projects/nothing/alignments", "project.not_found"),
        (predictions.replace("participant_1", "participant_9"), "participant.not_found"),
    ):
        failed(client.get(url), 404, code)
