"""Trust against real processes: only identities of the collaboration reach a route, only a TTP or
a Director commands a Worker, participants act for themselves alone, and a Worker serves only
the collaborations its operator chose."""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from synergos_core.identity import Credentials, Role, provision
from synergos_core.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from synergos_core.settings import DirectorSettings, TTPSettings, WorkerSettings
from synergos_local import topology

from .conftest import BLOCK, IDENTITIES, REST, TTP_HOST, WORKER_HOSTS, WS, http, register_parties, tls

W1 = WORKER_HOSTS["worker_1"]
TTP = f"https://{TTP_HOST}:{REST}"
WORKER = f"https://{W1}:{REST}"
DIRECTOR_HOST, GUARDED_HOST = f"{BLOCK}.5", f"{BLOCK}.6"
DIRECTOR = f"https://{DIRECTOR_HOST}:{REST}"
GUARDED = f"https://{GUARDED_HOST}:{REST}"
MODEL = [{"l_type": "Linear", "structure": {"in_features": 30, "out_features": 1}, "activation": "sigmoid"}]


def _routes(app) -> list[tuple[str, str]]:
    """Every (method, concrete path) an app serves but /health, its path parameters filled in."""
    found = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if path == "/health":
            continue
        methods = sorted(route.methods - {"HEAD"}) if isinstance(route, APIRoute) else ["GET"]
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        found += [(m, concrete) for m in methods]
    return found


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    # the apps' own route tables (built in-process, never served), so no route is forgotten
    from synergos_director.app import create_app as director_app
    from synergos_ttp.app import create_app as ttp_app
    from synergos_worker.app import create_app as worker_app

    root = tmp_path_factory.mktemp("routes")
    dirs = {"data_dir": root / "d", "outputs_dir": root / "o", "mlflow_dir": root / "m", "insecure": True}
    return {
        TTP: _routes(ttp_app(TTPSettings(**dirs))),
        DIRECTOR: _routes(director_app(DirectorSettings(**dirs))),
        WORKER: _routes(worker_app(WorkerSettings(**dirs), federation=False)),
    }


@pytest.fixture(scope="module")
def services(grid):
    """A Director, and a Worker whose operator serves only collaboration `guarded` and trusts
    only the TTP named `ttp`, beside the session's grid (same CA)."""
    logs = grid.workspace / "logs"
    with topology.Topology(grid.identities) as topo:
        topo.add(topology.director("director", DIRECTOR_HOST, REST, grid.workspace / "director", logs))
        guarded = topology.worker(
            "guarded_worker",
            GUARDED_HOST,
            REST,
            WS,
            grid.workspace / "worker_1" / "data",
            grid.workspace / "guarded" / "outputs",
            logs,
            extra=["--collaboration", "guarded", "--trust", "ttp"],
        )
        topo.add(guarded)
        topo.wait()
        yield {"guarded": guarded}


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> ssl.SSLContext:
    """A client holding a certificate of another collaboration's CA (an orchestrator there)."""
    root = tmp_path_factory.mktemp("other_collaboration")
    folder = provision(root, {Role.ORCHESTRATOR: ["mallory"], Role.TTP: ["rogue_ttp"]})["rogue_ttp"]
    ctx = Credentials.load(folder).client_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # it cannot verify our servers either
    return ctx


def _anonymous() -> httpx.Client:
    return httpx.Client(verify=Credentials.load(IDENTITIES.user()).client_context_without_identity(), timeout=10)


def _refused(call) -> str:
    """How a request was refused: its status (401/403), or 'handshake' if TLS never completed."""
    try:
        return str(call().status_code)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError):
        return "handshake"


def test_every_route_but_health_refuses_a_client_without_a_certificate(services, routes):
    with _anonymous() as client:
        for base, table in routes.items():
            assert client.get(f"{base}/health").status_code == 200, base
            for method, path in table:
                resp = client.request(method, base + path, json={})
                assert resp.status_code == 401, (base, method, path, resp.text)
                assert resp.json()["error"]["code"] == "auth.required"


def test_another_collaborations_certificate_reaches_no_route(services, routes, stranger):
    with httpx.Client(verify=stranger, timeout=10) as client:
        for base, table in routes.items():
            for method, path in table:
                url = base + path
                assert _refused(lambda m=method, u=url: client.request(m, u, json={})) in {"handshake", "401", "403"}


def test_a_worker_obeys_only_a_ttp_or_director(services):
    body = {"action": "classify", "tags": {"train": [["breast_cancer", "train"]]}}
    for name, role in (("orchestrator", "orchestrator"), ("someone", "participant"), ("worker_2", "worker")):
        resp = http(name, role).post(f"{WORKER}/worker/poll/c/p", json=body)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "auth.forbidden", (name, resp.text)
    assert http("ttp", "ttp").post(f"{WORKER}/worker/poll/c/p", json=body).status_code != 403


def _ws_refusal(ctx: ssl.SSLContext | None, host: str = W1) -> str:
    async def attempt() -> str:
        headers = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        try:
            async with connect(
                f"wss://{host}:{WS}/federation/c/p/e/r", additional_headers=headers, ssl=ctx, open_timeout=5
            ):
                return "opened"
        except InvalidStatus as exc:
            return str(exc.response.status_code)
        except (ssl.SSLError, OSError, TimeoutError, InvalidMessage):
            return "handshake"  # the TLS handshake failed, so no HTTP answer came

    return asyncio.run(attempt())


def test_only_a_ttp_or_director_opens_a_federation_socket(services, stranger):
    anonymous = Credentials.load(IDENTITIES.user()).client_context_without_identity()
    assert _ws_refusal(anonymous) == "401"
    assert _ws_refusal(stranger) in {"handshake", "401", "403"}
    assert _ws_refusal(tls()) == "403"  # an orchestrator user is no TTP
    assert _ws_refusal(tls("worker_2", "worker")) == "403"
    # a TTP gets past identity checks to the run token, which it lacks here
    assert _ws_refusal(tls("ttp", "ttp")) == "401"


def test_the_operators_choice_of_collaborations_and_ttps_holds(services):
    body = {"action": "classify", "tags": {"train": [["breast_cancer", "train"]]}}
    other = http("ttp", "ttp").post(f"{GUARDED}/worker/poll/other/p", json=body)
    assert other.status_code == 403 and other.json()["error"]["code"] == "auth.wrong_collaboration"
    assert http("ttp", "ttp").post(f"{GUARDED}/worker/poll/guarded/p", json=body).status_code == 200
    # a TTP the operator did not name is refused even in the chosen collaboration
    untrusted = http("ttp_2", "ttp").post(f"{GUARDED}/worker/poll/guarded/p", json=body)
    assert untrusted.status_code == 403 and "trusts" in untrusted.json()["error"]["detail"]
    assert _ws_refusal(tls("ttp_2", "ttp"), GUARDED_HOST) == "403"


def test_a_participant_acts_only_for_itself(grid):
    driver = grid.driver()
    register_parties(driver, "roles", "p", "breast_cancer")
    driver.experiments.create(collab_id="roles", project_id="p", expt_id="e", model=MODEL)
    own, other = "roles_participant_1", "roles_participant_2"
    client = http(own, "participant")
    base = f"{TTP}/ttp/connect/collaborations/roles/projects/p"
    # no runs, experiments or collaborations of its own making
    refused = [
        client.post(f"{base}/experiments/e/runs", json={"run_id": "r", "base_lr": 0.001, "max_lr": 0.01}),
        client.post(f"{TTP}/ttp/connect/collaborations", json={"collab_id": "mine"}),
        client.get(f"{TTP}/ttp/connect/participants"),
        client.get(f"{TTP}/ttp/evaluate/participants/{other}/collaborations/roles/predictions"),
        client.post(f"{TTP}/ttp/evaluate/participants/{other}/collaborations/roles/predictions/p/e/r", json={}),
        client.get(f"{TTP}/ttp/connect/participants/{other}"),
        client.post(f"{TTP}/ttp/connect/participants", json={"id": "impostor"}),
        client.get(f"{TTP}/ttp/status/jobs"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    # its own records and results
    assert client.get(f"{TTP}/ttp/connect/participants/{own}").status_code == 200
    assert client.get(f"{base}/participants/{own}/registration").status_code == 200
    assert client.get(f"{base}/participants/{own}/registration/tags").status_code == 200
    assert client.get(f"{TTP}/ttp/evaluate/participants/{own}/collaborations/roles/predictions").status_code == 200
    assert client.post(f"{TTP}/ttp/connect/participants", json={"id": own}).status_code in (200, 409)
    # and a Worker's identity commands no TTP
    assert http("worker_1", "worker").get(f"{TTP}/ttp/connect/collaborations").status_code == 403


def test_a_service_without_credentials_refuses_to_start_and_insecure_is_loud(tmp_path: Path):
    args = [sys.executable, "-m", "synergos_worker", "--host", "127.0.0.1", "--port", "1", "--data_dir", str(tmp_path)]
    args += ["--outputs_dir", str(tmp_path / "outputs")]
    env = {k: v for k, v in __import__("os").environ.items() if k != "SYNERGOS_CREDENTIALS"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "synergos-provision" in result.stderr and "--insecure" in result.stderr
    logs = tmp_path / "logs"
    host = f"{BLOCK}.7"
    with topology.Topology(insecure=True) as topo:
        service = topo.add(topology.worker("open_worker", host, REST, WS, tmp_path, tmp_path / "out", logs))
        topo.wait()
        assert "INSECURE MODE" in service.log_path.read_text()
        assert httpx.get(f"http://{host}:{REST}/health").status_code == 200


def test_provisioning_writes_a_folder_per_identity_with_its_role(tmp_path: Path):
    cli = Path(sys.executable).with_name("synergos-provision")
    out = tmp_path / "kit"
    command = [str(cli), str(out), "--ttp", "ttp", "--director", "director", "--worker", "w1", "w2", "--user", "u"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name, role in (
        ("ttp", "ttp"),
        ("director", "director"),
        ("w1", "worker"),
        ("w2", "worker"),
        ("u", "orchestrator"),
    ):
        assert sorted(p.name for p in (out / name).iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        assert (out / name / "key.pem").stat().st_mode & 0o077 == 0  # the key is its owner's alone
        credentials = Credentials.load(out / name)
        assert credentials.identity.name == name and credentials.identity.role.value == role
    before = (out / "w1" / "cert.pem").read_bytes()
    again = subprocess.run([str(cli), str(out), "--worker", "w1", "w3"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (out / "w1" / "cert.pem").read_bytes() == before  # kept, w3 added
    assert (out / "w3" / "ca.pem").read_bytes() == (out / "w1" / "ca.pem").read_bytes()
