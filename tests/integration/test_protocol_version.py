"""The federation protocol's version handshake against a real Worker process: a client naming
another version (or none) is refused with a text naming both, after the token check, so that a
client without the run's token learns nothing; and the TTP surfaces either side's refusal as a
clear `federation.protocol_mismatch`."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

import synergos_ttp.grid as grid_module
from synergos_core.errors import FederationError
from synergos_core.federation import recv_header, send_message
from synergos_core.identity import Credentials
from synergos_core.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, Close, Closed, new_nonce, parse_reply
from synergos_core.settings import FederationLimits
from synergos_ttp.grid import GridNode, GridRun, WorkerClient

from .conftest import IDENTITIES, REST, WORKER_HOSTS, WS, http, tls

W1 = WORKER_HOSTS["worker_1"]
WORKER = f"https://{W1}:{REST}"
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]
RUN = ("version", "proj", "expt", "run")
TAGS = {"train": [["breast_cancer", "train"]], "evaluate": [["breast_cancer", "evaluate"]]}
HYPERPARAMETERS = {"criterion": "BCELoss", "lr_scheduler": "none"}


@pytest.fixture(scope="module")
def run_token(grid):
    token = secrets.token_urlsafe(32)
    body = {
        "action": "classify",
        "tags": TAGS,
        "model": MODEL,
        "hyperparameters": HYPERPARAMETERS,
        "token": token,
        "participant_id": "p1",
    }
    resp = http("ttp", "ttp").post(f"{WORKER}/worker/initialise/{'/'.join(RUN)}", json=body)
    assert resp.status_code in (200, 201), resp.text
    yield token
    http("ttp", "ttp").post(f"{WORKER}/worker/terminate/{'/'.join(RUN)}")


def _open(token: str, version: str | None, run: tuple[str, ...] = RUN):
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers[PROTOCOL_HEADER] = version
    return connect(
        f"wss://{W1}:{WS}/federation/{'/'.join(run)}",
        additional_headers=headers,
        compression=None,
        ssl=tls("ttp", "ttp"),
    )


def _refusal(token: str, version: str | None, run: tuple[str, ...] = RUN) -> InvalidStatus:
    async def attempt() -> None:
        async with _open(token, version, run):
            pass

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(attempt())
    return info.value


@pytest.mark.parametrize(
    "version, said",
    [
        ("1", f"federation protocol 1 is not supported; this Worker speaks {PROTOCOL_VERSION}"),
        ("0", f"federation protocol 0 is not supported; this Worker speaks {PROTOCOL_VERSION}"),
        ("one", f"federation protocol one is not supported; this Worker speaks {PROTOCOL_VERSION}"),
        (None, f"no federation protocol version was named ({PROTOCOL_HEADER}); this Worker speaks {PROTOCOL_VERSION}"),
    ],
)
def test_a_valid_token_with_another_protocol_version_is_refused_naming_both(run_token, version, said):
    refused = _refusal(run_token, version)
    assert refused.response.status_code == 426
    assert refused.response.body.decode().strip() == said
    assert refused.response.headers[PROTOCOL_HEADER] == str(PROTOCOL_VERSION)


def test_a_wrong_token_learns_nothing_not_even_the_version(run_token):
    refused = _refusal("wrong-token-0123456789", "2")
    assert refused.response.status_code == 401
    assert PROTOCOL_HEADER not in refused.response.headers and b"protocol" not in refused.response.body


def test_the_right_version_is_accepted_and_announced(run_token):
    async def exchange():
        async with _open(run_token, str(PROTOCOL_VERSION)) as ws:
            announced = ws.response.headers.get(PROTOCOL_HEADER)
            request = Close(run="/".join(RUN), round=0, nonce=new_nonce())
            await send_message(ws, request)
            return announced, request, parse_reply(await recv_header(ws, 10))

    announced, request, reply = asyncio.run(exchange())
    assert announced == str(PROTOCOL_VERSION)
    assert isinstance(reply, Closed) and reply.reply_to == request.nonce


def _grid_run(host: str, port: int, http: WorkerClient, keys: tuple[str, str, str, str] = RUN) -> GridRun:
    node = GridNode("party_1", host, port, REST, tags=TAGS)
    return GridRun(keys, [node], "classify", MODEL, HYPERPARAMETERS, FederationLimits(open_timeout_s=5), http)


def test_a_ttp_of_another_version_gets_the_workers_clear_refusal(grid, monkeypatch):
    # a TTP built for the next protocol, run against the real Worker (which speaks this one)
    monkeypatch.setattr(grid_module, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    keys = ("version", "proj", "expt", "ttp_v2")
    tokens = []

    async def run() -> None:
        async with WorkerClient(Credentials.load(IDENTITIES.folder("ttp", "ttp")), 30.0) as http:
            grid_run = _grid_run(W1, WS, http, keys)
            tokens.append(grid_run.token)
            async with grid_run:
                pass

    with pytest.raises(FederationError) as info:
        asyncio.run(run())
    assert info.value.code == "federation.protocol_mismatch"
    assert info.value.detail == (
        f"party_1's node refused the channel: federation protocol {PROTOCOL_VERSION + 1} is not supported; "
        f"this Worker speaks {PROTOCOL_VERSION}"
    )
    # and the run it had initialised is terminated on the Worker: its token opens nothing any more
    assert _refusal(tokens[0], str(PROTOCOL_VERSION), keys).response.status_code == 401


@pytest.mark.parametrize("announced", ["1", None])
def test_the_ttp_refuses_a_node_that_accepts_without_speaking_its_version(announced):
    # a stand-in for a Worker of another version (or an unversioned one) that accepts anything
    def announce(connection, request, response):
        if announced is not None:
            response.headers[PROTOCOL_HEADER] = announced

    async def run() -> FederationError:
        async def handler(ws) -> None:
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, process_response=announce) as server:
            port = server.sockets[0].getsockname()[1]
            async with WorkerClient(None, 30.0) as http:  # a plain stand-in: no TLS on either side
                grid_run = _grid_run("127.0.0.1", port, http)
                try:
                    await grid_run._connect(grid_run.nodes[0])
                except FederationError as exc:
                    return exc
        raise AssertionError("the channel was accepted")

    error = asyncio.run(run())
    assert error.code == "federation.protocol_mismatch"
    if announced is None:
        assert error.detail == (
            f"party_1's node: no federation protocol version was named ({PROTOCOL_HEADER}); "
            f"this TTP speaks {PROTOCOL_VERSION}"
        )
    else:
        assert error.detail == (
            f"party_1's node: federation protocol {announced} is not supported; this TTP speaks {PROTOCOL_VERSION}"
        )
