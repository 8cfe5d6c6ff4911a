"""Security baseline against real processes: authenticated channels, safe frames, confined tags,
clear 4xx errors for bad input, and no request that makes a service fail."""

from __future__ import annotations

import asyncio
import json
import pickle
import secrets

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from synergos_core.federation import new_nonce
from synergos_core.model import build_model
from synergos_core.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, Error, Loss, parse_reply
from synergos_core.wire import encode_control, encode_state

from .conftest import REST, TTP_HOST, WORKER_HOSTS, WS, http, register_parties, tls

W1 = WORKER_HOSTS["worker_1"]
TTP = f"https://{TTP_HOST}:{REST}"
WORKER = f"https://{W1}:{REST}"
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]
RUN = ("sec", "proj", "expt", "run")


@pytest.fixture(scope="module")
def session_token(grid):
    token = secrets.token_urlsafe(32)
    body = {
        "action": "classify",
        "tags": {"train": [["breast_cancer", "train"]], "evaluate": [["breast_cancer", "evaluate"]]},
        "model": MODEL,
        "hyperparameters": {"criterion": "BCELoss", "lr_scheduler": "none"},
        "token": token,
        "participant_id": "p1",
    }
    resp = http("ttp", "ttp").post(f"{WORKER}/worker/initialise/{'/'.join(RUN)}", json=body)
    assert resp.status_code in (200, 201), resp.text
    yield token
    http("ttp", "ttp").post(f"{WORKER}/worker/terminate/{'/'.join(RUN)}")


def _uri() -> str:
    return f"wss://{W1}:{WS}/federation/{'/'.join(RUN)}"


def _connect(token: str | None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
    return connect(_uri(), additional_headers=headers, compression=None, ssl=tls("ttp", "ttp"), **kw)


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
def test_federation_channel_refuses_missing_or_wrong_token(session_token, token):
    async def attempt():
        async with _connect(token):
            pass

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(attempt())
    assert info.value.response.status_code == 401


def _evaluate_request(state):
    header = {"op": "evaluate", "run": "/".join(RUN), "round": 0, "nonce": new_nonce(), "meta": "evaluate"}
    frames = list(encode_state(state, 1 << 20))
    return encode_control({**header, "shards": len(frames)}), frames


def test_authenticated_channel_answers_and_refuses_a_replayed_request(session_token):
    state = build_model(MODEL, seed=1).state_dict()

    async def exchange():
        async with _connect(session_token) as ws:
            control, frames = _evaluate_request(state)
            for message in (control, *frames):
                await ws.send(message)
            first = parse_reply(json.loads((await ws.recv())[1:]))
            for message in (control, *frames):  # the very same request again
                await ws.send(message)
            second = parse_reply(json.loads((await ws.recv())[1:]))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return first, second

    first, second = asyncio.run(exchange())
    assert isinstance(first, Loss) and first.n_samples > 0 and first.loss > 0
    assert isinstance(second, Error) and second.code == "federation.replay"


@pytest.mark.parametrize(
    "change",
    [
        {"op": "evaluat"},  # an op the protocol does not name
        {"meta": "../../etc"},  # a meta that is not one of the splits
        {"assess": "yes"},  # a string where a boolean must be
        {"shards": -1},
        {"round": float("nan")},  # json writes NaN; the protocol refuses it
        {"pickle": "cos\nsystem\n"},  # a field the protocol does not name
    ],
)
def test_malformed_request_is_refused_as_a_protocol_error_and_closes_the_channel(session_token, change):
    state = build_model(MODEL, seed=1).state_dict()

    async def exchange():
        async with _connect(session_token) as ws:
            control, _ = _evaluate_request(state)
            await ws.send(encode_control({**json.loads(control[1:]), **change}))
            reply = parse_reply(json.loads((await ws.recv())[1:]))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return reply, closed.value.rcvd.code

    reply, code = asyncio.run(exchange())
    assert isinstance(reply, Error) and reply.code == "federation.protocol", reply
    assert code == 1008


@pytest.mark.parametrize(
    "frame",
    [
        pickle.dumps({"op": "train"}),  # pickle is never decoded
        b"\x02" + b"\x00" * 64,  # a tensor frame where a header must be
        "a text frame",  # text frames are not part of the protocol
    ],
)
def test_foreign_frames_close_the_channel(session_token, frame):
    async def send():
        async with _connect(session_token) as ws:
            await ws.send(frame)
            while True:
                try:
                    await ws.recv()
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(send()) == 1008


def test_oversized_frame_is_refused(session_token):
    async def send():
        ws = await _connect(session_token, max_size=None)
        try:
            await ws.send(b"\x01" + b" " * (17 * 1024 * 1024))
            await ws.recv()
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        return ws.close_code

    assert asyncio.run(send()) == 1009


@pytest.mark.parametrize("tag", [[".."], ["/etc"], ["..", "etc"], ["a/b"], ["x\u0000"], ["~root"]])
def test_tags_that_could_leave_the_data_root_are_refused(grid, tag):
    resp = http("ttp", "ttp").post(f"{WORKER}/worker/poll/c/p", json={"action": "classify", "tags": {"train": [tag]}})
    assert 400 <= resp.status_code < 500
    assert resp.json()["success"] == 0
    driver = grid.driver()
    register_parties(driver, f"tags{abs(hash(str(tag))) % 10**6}", "p", "penguins")
    ttp = http().post(
        f"{TTP}/ttp/connect/collaborations/tags{abs(hash(str(tag))) % 10**6}/projects/p/participants/"
        f"tags{abs(hash(str(tag))) % 10**6}_participant_1/registration/tags",
        json={"train": [tag]},
    )
    assert ttp.status_code in (409, 422)


def test_symlink_out_of_the_data_root_reads_nothing(grid):
    outside = grid.workspace / "outside" / "secret"
    outside.mkdir(parents=True)
    (outside / "metadata.json").write_text('{"datatype": "tabular", "operations": {}}')
    (outside / "schema.json").write_text('{"x": "float64", "target": "int64"}')
    (outside / "data.csv").write_text("x,target\n31337,1\n")
    link = grid.workspace / "worker_1" / "data" / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        resp = http("ttp", "ttp").post(
            f"{WORKER}/worker/poll/c/p", json={"action": "classify", "tags": {"train": [["escape"]]}}
        )
        assert 400 <= resp.status_code < 500 and "31337" not in resp.text
    finally:
        link.unlink()


def test_invalid_bodies_get_422_with_field_paths(grid):
    driver = grid.driver()
    register_parties(driver, "invalid", "p", "penguins")
    base = f"{TTP}/ttp/connect/collaborations/invalid/projects/p"
    resp = http().post(f"{base}/experiments/e/runs", json={"run_id": "r", "rounds": "many"})
    assert resp.status_code in (404, 422)
    http().post(f"{base}/experiments", json={"expt_id": "e", "model": MODEL})
    resp = http().post(f"{base}/experiments/e/runs", json={"run_id": "r", "rounds": "many"})
    assert resp.status_code == 422
    assert "rounds" in [f["path"] for f in resp.json()["error"]["fields"]]
    resp = http().post(
        f"{base}/participants/invalid_participant_1/registration",
        json={"role": "guest", "n_count": 1, "node_0": {"host": "h", "port": 99999, "f_port": 5000}},
    )
    assert resp.status_code == 422 and any("port" in f["path"] for f in resp.json()["error"]["fields"])
    resp = http("ttp", "ttp").post(f"{WORKER}/worker/initialise/a/b/c/d", json={"action": "guess"})
    assert resp.status_code == 422 and resp.json()["error"]["fields"]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("l_type", "Linaer", "Linaer"),
        ("activation", "__import__", "__import__"),
    ],
)
def test_unknown_layer_or_activation_is_422_naming_it_and_stores_nothing(grid, field, value, expected):
    driver = grid.driver()
    collab = f"names{field}"
    register_parties(driver, collab, "p", "penguins")
    layer = {**MODEL[0], field: value}
    base = f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments"
    resp = http().post(base, json={"expt_id": "bad", "model": [layer]})
    assert resp.status_code == 422 and expected in resp.json()["error"]["detail"]
    assert http().get(f"{base}/bad").status_code == 404


@pytest.mark.parametrize(
    "field, value",
    [("criterion", "NoSuchLoss"), ("criterion", "CTCLoss"), ("optimizer", "Sgd"), ("lr_scheduler", "NoSuchLR")],
)
def test_unknown_loss_optimizer_or_scheduler_is_422_naming_it(grid, field, value):
    driver = grid.driver()
    collab = f"recipe{field}{value}".lower()
    register_parties(driver, collab, "p", "penguins")
    base = f"{TTP}/ttp/connect/collaborations/{collab}/projects/p/experiments"
    http().post(base, json={"expt_id": "e", "model": MODEL})
    resp = http().post(f"{base}/e/runs", json={"run_id": "r", field: value, "base_lr": 0.001, "max_lr": 0.01})
    assert resp.status_code == 422 and value in resp.json()["error"]["detail"]
    assert http().get(f"{base}/e/runs/r").status_code == 404


def test_oversized_bodies_get_413(grid):
    big = b'{"x": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    for url in (f"{TTP}/ttp/connect/collaborations", f"{WORKER}/worker/poll/c/p"):
        resp = http("ttp", "ttp").post(url, content=big, headers={"content-type": "application/json"})
        assert resp.status_code == 413

        def chunks():
            yield big

        resp = http("ttp", "ttp").post(url, content=chunks(), headers={"content-type": "application/json"})
        assert resp.status_code == 413


GARBAGE = [
    None,
    [],
    "x",
    0,
    {"a": {"b": [1, 2, {"c": None}]}},
    {"collab_id": "../../etc"},
    {"id": 10**40},
    {"tags": {"p": [[".."]]}},
    {"model": "Linear"},
    {"run_id": "r", "rounds": -1, "lr": "NaN"},
]
PATHS = [
    "/ttp/connect/collaborations",
    "/ttp/connect/collaborations/zz",
    "/ttp/connect/collaborations/zz/projects",
    "/ttp/connect/collaborations/zz/projects/p/experiments",
    "/ttp/connect/participants",
    "/ttp/connect/collaborations/zz/projects/p/participants/q/registration",
    "/ttp/train/collaborations/zz/projects/p/alignments",
    "/ttp/train/collaborations/zz/projects/p/models",
    "/ttp/evaluate/collaborations/zz/projects/p/validations",
    "/ttp/evaluate/participants/q/collaborations/zz/predictions",
]


def test_no_request_makes_a_service_fail(grid):
    for path in PATHS:
        for body in GARBAGE:
            for method in ("POST", "PUT", "GET", "DELETE"):
                resp = http().request(method, TTP + path, json=body)
                assert resp.status_code < 500, (method, path, body, resp.text)
                assert resp.json()["success"] in (0, 1)
    for path in ("/worker/poll/c/p", "/worker/initialise/a/b/c/d", "/worker/terminate/a/b/c/d"):
        for body in GARBAGE:
            resp = http("ttp", "ttp").post(WORKER + path, json=body)
            assert resp.status_code < 500, (path, body, resp.text)
    resp = http().post(
        f"{TTP}/ttp/connect/collaborations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    # and training against a participant whose node is down is a clear 502, not a crash
    driver = grid.driver()
    register_parties(driver, "down", "p", "penguins")
    http().put(
        f"{TTP}/ttp/connect/collaborations/down/projects/p/participants/down_participant_2/registration",
        json={"node_0": {"host": "127.0.0.250", "port": 8020, "f_port": 5000}},
    )
    resp = http().post(f"{TTP}/ttp/train/collaborations/down/projects/p/alignments", json={})
    assert resp.status_code == 502 and "127.0.0.250" in resp.json()["error"]["detail"]
    # the services are still up
    assert (
        http().get(f"{TTP}/health").status_code == 200 and http("ttp", "ttp").get(f"{WORKER}/health").status_code == 200
    )
