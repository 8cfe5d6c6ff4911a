"""The deployment files cannot drift from the code: `docker/*.Dockerfile`, `compose.yaml`,
`docker/README.md` (the guide's six `docker run` commands), `docker/mq/*` and `.dockerignore`
are read statically (no Docker engine) and checked against the packages themselves: console
scripts in pyproject.toml, each service's real command line, its settings defaults, the
container paths of `default_dir`, and the MQ topology that `synergos_mq.topology.declare` builds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import importlib
import json
import logging
import os
import re
import runpy
import shlex
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from synergos_core.settings import ServiceSettings, default_dir
from synergos_mq import topology
from synergos_mq.connection import DEFAULT_PORT as AMQP_PORT

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
README = ROOT / "README.md"  # "Deploy on six VMs" carries the guide's docker run lines
DOCKER_README = DOCKER / "README.md"
COMPOSE = ROOT / "compose.yaml"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SCRIPTS: dict[str, str] = PROJECT.get("scripts", {})
TAG = "v" + PROJECT["version"]

IMAGES = {
    "synergos_mq",
    "synergos_director",
    "synergos_ttp",
    "synergos_ttp_cluster",
    "synergos_worker",
    "synergos_mlops",
}
MQ_IMAGE = "synergos_mq"
MLOPS_IMAGE = "synergos_mlops"  # MLflow: its health probe asks the UI page, /
MANAGEMENT_UI_PORT = 15672
# On one host the TTP cannot publish the port the Director publishes (5000); its REST port
# serves only /health in cluster mode, so compose.yaml leaves it unpublished.
UNPUBLISHED_ON_ONE_HOST = {"ttp": {5000}}


# ---------------------------------------------------------------- Dockerfiles


@dataclass
class Image:
    """What `docker build -f DOCKERFILE --target NAME` produces, as far as these checks need."""

    name: str
    dockerfile: Path
    base: str  # the external image at the root of the stage chain
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments) along the chain, root first
    copied_from: list[str] = field(default_factory=list)  # stages named by COPY --from
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    expose: set[int] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None


def _instructions(text: str) -> list[tuple[str, str]]:
    out, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        keyword, _, rest = (buffer + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buffer = ""
    return out


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], m[0]), text)


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return value


def parse_dockerfile(path: Path) -> dict[str, Image]:
    global_args: dict[str, str] = {}
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, f"{path.name}: cannot read FROM {rest}"
            current = []
            stages[match[2] or f"stage{len(stages)}"] = (_substitute(match[1], global_args), current)
        elif current is None:
            assert keyword == "ARG", f"{path.name}: only ARG may precede the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            current.append((keyword, rest))

    def resolve(name: str) -> Image:
        chain = [name]
        while stages[chain[-1]][0] in stages:
            chain.append(stages[chain[-1]][0])
        image = Image(name, path, stages[chain[-1]][0], [i for s in reversed(chain) for i in stages[s][1]])
        for keyword, rest in image.instructions:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                image.args[key] = default
            elif keyword == "ENV":
                image.env.update(token.split("=", 1) for token in shlex.split(rest))
            elif keyword == "EXPOSE":
                image.expose |= {int(port.split("/")[0]) for port in rest.split()}
            elif keyword == "VOLUME":
                image.volumes |= set(_exec_form(rest) if rest.startswith("[") else rest.split())
            elif keyword == "USER":
                image.user = rest
            elif keyword == "ENTRYPOINT":
                image.entrypoint, image.cmd = _exec_form(rest), None  # Docker resets CMD too
            elif keyword == "CMD":
                image.cmd = _exec_form(rest)
            elif keyword == "HEALTHCHECK":
                command = re.sub(r"^(--\S+\s+)*", "", rest)
                assert command.startswith("CMD "), f"{name}: HEALTHCHECK must use CMD [..]: {rest}"
                image.healthcheck = _exec_form(command[4:])
            elif keyword == "COPY":
                image.copied_from += re.findall(r"--from=(\S+)", rest)
        return image

    return {name: resolve(name) for name in stages}


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
ALL_STAGES = {path: parse_dockerfile(path) for path in DOCKERFILES}
TARGETS: dict[str, Image] = {
    name: image for stages in ALL_STAGES.values() for name, image in stages.items() if name.startswith("synergos_")
}
PYTHON_IMAGES = sorted(name for name in TARGETS if name != MQ_IMAGE)


def stage(image: Image, name: str) -> Image:
    return ALL_STAGES[image.dockerfile][name]


# ---------------------------------------------------------------- the guide's docker run lines

RUN_OPTIONS_WITH_VALUE = {"-p", "--publish", "-v", "--volume", "-e", "--env", "--name"}
RUN_FLAGS = {"-it", "-i", "-t", "-d", "--rm", "--detach", "--interactive", "--tty"}


@dataclass
class Run:
    """One `docker run` command of docker/README.md."""

    image: str
    tag: str
    args: list[str]
    name: str | None = None
    ports: list[tuple[int, int]] = field(default_factory=list)  # (host, container)
    volumes: list[tuple[str, str]] = field(default_factory=list)  # (source, target)
    env: dict[str, str] = field(default_factory=dict)


def shell_commands(markdown: str, program: str) -> list[list[str]]:
    """`docker run ...` / `docker build ...` commands of the ```sh blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens[:2] == ["docker", program]:
                commands.append(tokens[2:])
    return commands


def parse_run(tokens: list[str]) -> Run:
    options: list[tuple[str, str]] = []
    while tokens[0].startswith("-"):
        option = tokens.pop(0)
        if option in RUN_OPTIONS_WITH_VALUE:
            options.append((option, tokens.pop(0)))
        else:
            assert option in RUN_FLAGS, f"docker run option this test does not know: {option}"
    image, _, tag = tokens.pop(0).partition(":")
    run = Run(image, tag, tokens)
    for option, value in options:
        if option in ("-p", "--publish"):
            host, container = value.rsplit(":", 2)[-2:]
            run.ports.append((int(host), int(container)))
        elif option in ("-v", "--volume"):
            source, target = value.split(":")[:2]
            run.volumes.append((source.rstrip("/"), target.rstrip("/")))
        elif option in ("-e", "--env"):
            key, _, val = value.partition("=")
            run.env[key] = val
        else:
            run.name = value
    return run


def _is_credentials(target: str) -> bool:
    """Each service's identity: a read-only bind mount of the operator's provisioned folder."""
    return target.endswith("/credentials")


README_TEXT = README.read_text()
GUIDE_RUNS = [parse_run(tokens) for tokens in shell_commands(README_TEXT, "run")]


# ---------------------------------------------------------------- compose.yaml

COMPOSE_DATA: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE_DATA["services"]


def image_name(reference: str) -> tuple[str, str]:
    name, _, tag = reference.partition(":")
    return name, tag


def compose_volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each mount, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
        else:
            source, target, *mode = volume.split(":")
            mounts.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return mounts


def compose_ports(service: dict) -> list[tuple[int, int]]:
    """(host, container) of each published port."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((int(port["published"]), int(port["target"])))
        else:
            host, container = str(port).rsplit(":", 2)[-2:]
            ports.append((int(host), int(container)))
    return ports


def effective_args(image: str, args: list[str] | None) -> list[str]:
    """The arguments the entrypoint gets: the ones given, else the image's default CMD."""
    return list(args) if args else list(TARGETS[image].cmd or [])


def flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def service_key(image: str, args: list[str] | None) -> tuple[str, str | None]:
    """Guide runs and compose services are matched by image and --id."""
    return image, flag_value(effective_args(image, args), "--id") if image != MQ_IMAGE else None


def compose_command(service: dict) -> list[str] | None:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else command


COMPOSE_BY_KEY = {service_key(image_name(s["image"])[0], compose_command(s)): name for name, s in SERVICES.items()}


def compose_service_for(run: Run) -> str:
    key = service_key(run.image, run.args)
    assert key in COMPOSE_BY_KEY, f"compose.yaml has no service for the guide's {run.image} --id {key[1]}"
    return COMPOSE_BY_KEY[key]


# ---------------------------------------------------------------- running a service's real CLI


class _Stop(Exception):
    """Raised where a CLI's main() would first touch the machine: dirs, ports, processes."""


@dataclass
class Parsed:
    namespace: argparse.Namespace
    settings: ServiceSettings  # the last settings main() built
    role: str | None  # what main() passed to `resolve_dirs`, if it resolves the role's dirs


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture):
    """Run a console script's real `main()` on ARGS, inside an image's environment, and stop it
    once its command line and settings are built, before it binds a port or starts a process.

    Nothing is refactored for this: argparse and ServiceSettings record what they built, and
    main() is stopped at the first of `ServiceSettings.resolve_dirs`, `uvicorn.run`, a subprocess
    or an exec (MLOps's MLflow launcher). Logging it configured is undone afterwards.
    """

    def run(script: str, args: list[str], env: dict[str, str]) -> Parsed:
        assert script in SCRIPTS, f"{script} is not a console script in pyproject.toml [project.scripts]"
        module_name, _, function = SCRIPTS[script].partition(":")
        parsed: list[argparse.Namespace] = []
        built: list[ServiceSettings] = []
        roles: list[str] = []
        parse_known_args, settings_init = argparse.ArgumentParser.parse_known_args, ServiceSettings.__init__

        def recording_parse(self, *a, **k):
            namespace, extras = parse_known_args(self, *a, **k)
            parsed.append(namespace)
            return namespace, extras

        def recording_init(self, *a, **k):
            settings_init(self, *a, **k)
            built.append(self)

        def stop_at_dirs(self: ServiceSettings, role: str) -> None:
            roles.append(role)
            raise _Stop

        def stop(*_a: Any, **_k: Any) -> None:
            raise _Stop

        monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording_parse)
        monkeypatch.setattr(ServiceSettings, "__init__", recording_init)
        monkeypatch.setattr(ServiceSettings, "resolve_dirs", stop_at_dirs)
        monkeypatch.setattr(uvicorn, "run", stop)
        monkeypatch.setattr(subprocess.Popen, "__init__", stop)
        monkeypatch.setattr(os, "execv", stop)
        monkeypatch.setattr(os, "execve", stop)
        for logger in [logging.root, *logging.Logger.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger):
                for attribute in ("handlers", "level", "propagate"):
                    value = getattr(logger, attribute)
                    monkeypatch.setattr(logger, attribute, list(value) if attribute == "handlers" else value)
        monkeypatch.chdir(tmp_path)
        for key in [k for k in os.environ if k.startswith(("SYNERGOS_", "GUNICORN_"))]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith(("SYNERGOS_", "GUNICORN_")):
                monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", [script, *args])
        main = getattr(importlib.import_module(module_name), function)
        capsys.readouterr()
        try:
            main()
        except _Stop:
            pass
        except SystemExit as exc:
            pytest.fail(f"`{script} {shlex.join(args)}` was refused (exit {exc.code}):\n{capsys.readouterr().err}")
        assert parsed and built, f"{script}'s main() built no command line or no ServiceSettings"
        return Parsed(parsed[-1], built[-1], roles[-1] if roles else None)

    return run


def invocations() -> list[Any]:
    """Every way the deployment files start a Python image: its default CMD, each compose
    service and each guide `docker run` (whose own arguments, when it gives none, are the CMD)."""
    cases = [pytest.param(name, TARGETS[name].cmd or [], {}, id=f"CMD:{name}") for name in PYTHON_IMAGES]
    for name, service in SERVICES.items():
        image = image_name(service["image"])[0]
        if image != MQ_IMAGE:
            cases.append(
                pytest.param(
                    image,
                    effective_args(image, compose_command(service)),
                    service.get("environment") or {},
                    id=f"compose:{name}",
                )
            )
    for run in GUIDE_RUNS:
        if run.image != MQ_IMAGE:
            cases.append(pytest.param(run.image, effective_args(run.image, run.args), run.env, id=f"guide:{run.name}"))
    return cases


def parse_default(run_cli, name: str) -> Parsed:
    image = TARGETS[name]
    return run_cli(image.entrypoint[0], image.cmd or [], image.env)


# ================================================================ images and tags


def test_the_six_images_are_dockerfile_targets() -> None:
    assert set(TARGETS) == IMAGES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_images_are_built_from_their_dockerfile_target(name: str) -> None:
    service = SERVICES[name]
    image, tag = image_name(service["image"])
    assert tag == TAG, f"{name}: tag {tag!r}, the package is {TAG}"
    build = service["build"]
    dockerfile = (ROOT / build.get("context", ".") / build["dockerfile"]).resolve()
    assert dockerfile in ALL_STAGES, f"{name}: {build['dockerfile']} is not one of docker/*.Dockerfile"
    assert build["target"] == image and image in ALL_STAGES[dockerfile], (
        f"{name}: image {image} must be built from the target of the same name in {dockerfile.name}"
    )


def test_readme_builds_every_image_from_its_target() -> None:
    built = {}
    for tokens in shell_commands(DOCKER_README.read_text(), "build"):
        dockerfile, target, tag = (flag_value(tokens, flag) for flag in ("-f", "--target", "-t"))
        assert tokens[-1] == ".", f"build from the repository root: docker build {shlex.join(tokens)}"
        assert tag == f"{target}:{TAG}", f"docker build {shlex.join(tokens)}"
        assert target in ALL_STAGES[(ROOT / dockerfile).resolve()], f"{dockerfile} has no target {target}"
        built[target] = dockerfile
    assert set(built) == IMAGES


def test_guide_runs_the_six_vms_with_these_images() -> None:
    assert len(GUIDE_RUNS) == 6
    assert {(run.image, run.tag) for run in GUIDE_RUNS} == {(i, TAG) for i in IMAGES - {"synergos_ttp"}}
    assert {compose_service_for(run) for run in GUIDE_RUNS} == set(SERVICES)


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_entrypoint_is_a_console_script(name: str) -> None:
    entrypoint = TARGETS[name].entrypoint
    assert entrypoint and len(entrypoint) == 1, f"{name}: ENTRYPOINT must be exactly the console script"
    assert entrypoint[0] in SCRIPTS, f"{name}: {entrypoint[0]} is not in pyproject.toml [project.scripts]"


# ================================================================ command lines


@pytest.mark.parametrize(("image", "args", "env"), invocations())
def test_flags_are_accepted_by_the_service_cli(run_cli, image: str, args: list[str], env: dict) -> None:
    target = TARGETS[image]
    parsed = run_cli(target.entrypoint[0], args, {**target.env, **env})
    assert parsed.settings.id == flag_value(args, "--id")
    assert parsed.settings.host == "0.0.0.0", "in a container a service must bind every interface"


@pytest.mark.parametrize("name", [n for n in SERVICES if "--queue" in (compose_command(SERVICES[n]) or [])])
def test_compose_queue_flag_names_the_mq_service(run_cli, name: str) -> None:
    service = SERVICES[name]
    image = TARGETS[image_name(service["image"])[0]]
    parsed = run_cli(image.entrypoint[0], compose_command(service), image.env)
    kind, host, port = parsed.settings.queue
    assert kind == "rabbitmq" and host in SERVICES, f"{name}: --queue names no compose service: {host}"
    assert image_name(SERVICES[host]["image"])[0] == MQ_IMAGE and int(port) in TARGETS[MQ_IMAGE].expose
    assert host in service.get("depends_on", {}), f"{name} must start after {host}"


def test_image_env_sets_a_real_settings_variable() -> None:
    prefix = ServiceSettings.model_config["env_prefix"]
    for name in PYTHON_IMAGES:
        for key in TARGETS[name].env:
            if key.startswith(prefix):
                assert key[len(prefix) :].lower() in ServiceSettings.model_fields, f"{name}: {key} is read by nothing"


# ================================================================ ports


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_exposed_ports_are_the_service_ports(run_cli, name: str) -> None:
    image = TARGETS[name]
    guide_ports = {c for run in GUIDE_RUNS if run.image == name for _, c in run.ports}
    parsed = parse_default(run_cli, name)
    rest_port = parsed.settings.port
    assert image.expose == {getattr(parsed.settings, f) for f in ("port", "ws_port") if hasattr(parsed.settings, f)}
    assert guide_ports <= image.expose
    # the health probe asks the service's REST port, in python (slim images have no curl)
    program, script, url, *credentials = image.healthcheck
    # the probe speaks HTTPS when the role's credentials folder holds the collaboration CA
    role = name.removeprefix("synergos_").removesuffix("_cluster")
    assert credentials == ([] if name == MLOPS_IMAGE else [f"/{role}/credentials"])
    assert program == "python" and re.search(
        rf"COPY docker/healthcheck\.py {re.escape(script)}$", "\n".join(f"{k} {r}" for k, r in image.instructions), re.M
    )
    path = "/" if name == MLOPS_IMAGE else "/health"
    assert url == f"http://127.0.0.1:{rest_port}{path}"


def test_mq_exposes_amqp_and_the_management_ui() -> None:
    image = TARGETS[MQ_IMAGE]
    assert image.expose == {AMQP_PORT, MANAGEMENT_UI_PORT}
    (run,) = [r for r in GUIDE_RUNS if r.image == MQ_IMAGE]
    assert {c for _, c in run.ports} == image.expose
    assert image.healthcheck, "compose gates the Director and the TTP on the MQ's health"


@pytest.mark.parametrize("run", GUIDE_RUNS, ids=lambda r: r.name)
def test_compose_publishes_the_guides_ports(run: Run) -> None:
    name = compose_service_for(run)
    published = compose_ports(SERVICES[name])
    assert all(host == container for host, container in published)
    assert {c for _, c in published} <= TARGETS[run.image].expose
    expected = {c for _, c in run.ports} - UNPUBLISHED_ON_ONE_HOST.get(name, set())
    assert {c for _, c in published} == expected


# ================================================================ container paths


def container_dirs(monkeypatch: pytest.MonkeyPatch, role: str, service_id: str) -> set[str]:
    """default_dir's answers for ROLE inside an image, where /ROLE exists."""
    is_dir = Path.is_dir
    with monkeypatch.context() as patch:
        patch.setattr(Path, "is_dir", lambda self: self == Path("/") / role or is_dir(self))
        return {str(default_dir(role, service_id, leaf)) for leaf in ("data", "outputs", "mlflow")}


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_volumes_are_the_container_paths_created_for_a_non_root_user(run_cli, monkeypatch, name: str) -> None:
    image = TARGETS[name]
    mounted = {target for run in GUIDE_RUNS if run.image == name for _, target in run.volumes}
    # the credentials folder is a read-only bind mount of the operator's, never an anonymous volume
    credentials = {t for t in mounted if _is_credentials(t)}
    if mounted:
        assert image.volumes == mounted - credentials, f"{name}: VOLUME must be the guide's mount points"
    for path in credentials:
        runs = [rest for keyword, rest in image.instructions if keyword == "RUN"]
        assert any(re.search(rf"install -d .*(?<!\S){re.escape(path)}(?!\S)", r) for r in runs), path
    parsed = parse_default(run_cli, name)
    if parsed.role is not None:
        assert image.volumes <= container_dirs(monkeypatch, parsed.role, parsed.settings.id)
        assert {f"/{parsed.role}/data", f"/{parsed.role}/outputs"} <= image.volumes
    assert image.user and image.user not in ("root", "0"), f"{name} must not run as root"
    runs = [rest for keyword, rest in image.instructions if keyword == "RUN"]
    for path in image.volumes:
        assert any(re.search(rf"install -d -o {image.user} .*(?<!\S){re.escape(path)}(?!\S)", r) for r in runs), (
            f"{name}: {path} must be created owned by {image.user} before VOLUME"
        )


def test_python_base_is_pinned_and_torch_comes_first_from_the_cpu_index() -> None:
    requires = PROJECT["requires-python"].removeprefix(">=")
    (torch_pin,) = [d.split("==")[1] for d in PROJECT["dependencies"] if re.match(r"torch\s*==", d)]
    for name in PYTHON_IMAGES:
        image = TARGETS[name]
        assert re.fullmatch(rf"python:{re.escape(requires)}\.\d+-slim-bookworm", image.base), image.base
        (builder,) = [stage(image, s) for s in image.copied_from]
        assert builder.base == image.base
        steps = [f"{k} {r}" for k, r in builder.instructions]
        torch = next(i for i, s in enumerate(steps) if "torch==" in s)
        assert "--index-url" in steps[torch]
        assert builder.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert builder.args["TORCH_VERSION"] == torch_pin, "the image's torch must be pyproject's pin"
        package = next(i for i, s in enumerate(steps) if re.fullmatch(r"COPY src \S+", s))
        assert torch < package, "torch must be installed before the package (else pip pulls CUDA torch)"


# ================================================================ the MQ


class RecordingChannel:
    """pika's BlockingChannel calls `declare` makes, with pika's defaults filled in."""

    def __init__(self) -> None:
        self.exchanges: dict[str, dict] = {}
        self.queues: dict[str, dict] = {}
        self.bindings: set[tuple[str, str, str]] = set()

    def exchange_declare(
        self,
        exchange,
        exchange_type="direct",
        passive=False,
        durable=False,
        auto_delete=False,
        internal=False,
        arguments=None,
    ):
        self.exchanges[exchange] = {
            "type": exchange_type,
            "durable": durable,
            "auto_delete": auto_delete,
            "internal": internal,
            "arguments": arguments or {},
        }

    def queue_declare(self, queue, passive=False, durable=False, exclusive=False, auto_delete=False, arguments=None):
        self.queues[queue] = {"durable": durable, "auto_delete": auto_delete, "arguments": arguments or {}}

    def queue_bind(self, queue, exchange, routing_key=None, arguments=None):
        # pika binds with the queue's name when no routing key is given
        self.bindings.add((exchange, queue, queue if routing_key is None else routing_key))


def mq_file(image: Image, name: str) -> tuple[Path, str]:
    """The repository file COPYed into the MQ image whose source ends in NAME, and its image path."""
    for keyword, rest in image.instructions:
        tokens = [t for t in rest.split() if not t.startswith("--")]
        if keyword == "COPY" and tokens[0].endswith(name):
            return ROOT / tokens[0], tokens[1]
    raise AssertionError(f"{image.dockerfile.name} copies no {name}")


def test_definitions_declare_exactly_the_topology() -> None:
    channel = RecordingChannel()
    topology.declare(channel)
    source, _ = mq_file(TARGETS[MQ_IMAGE], "definitions.json")
    definitions = json.loads(source.read_text())
    exchanges = {
        e["name"]: {k: e[k] for k in ("type", "durable", "auto_delete", "internal", "arguments")}
        for e in definitions["exchanges"]
    }
    queues = {q["name"]: {k: q[k] for k in ("durable", "auto_delete", "arguments")} for q in definitions["queues"]}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert exchanges == channel.exchanges
    assert queues == channel.queues
    assert bindings == channel.bindings
    assert all(b["destination_type"] == "queue" and not b.get("arguments") for b in definitions["bindings"])
    assert {e["vhost"] for e in (*definitions["exchanges"], *definitions["queues"], *definitions["bindings"])} == {"/"}


def test_definitions_keep_the_guest_user_the_guide_logs_in_with() -> None:
    source, _ = mq_file(TARGETS[MQ_IMAGE], "definitions.json")
    definitions = json.loads(source.read_text())
    assert definitions["vhosts"] == [{"name": "/"}]
    (user,) = definitions["users"]
    assert user["name"] == "guest" and user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    digest = base64.b64decode(user["password_hash"])
    salt, hashed = digest[:4], digest[4:]
    assert hashlib.sha256(salt + b"guest").digest() == hashed, "guest's password must be guest"
    assert definitions["permissions"] == [
        {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    ]


def test_rabbitmq_conf_loads_the_definitions_and_lets_guest_in_remotely() -> None:
    image = TARGETS[MQ_IMAGE]
    assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+-management", image.base), f"pin the broker: {image.base}"
    conf_source, conf_path = mq_file(image, "rabbitmq.conf")
    assert re.fullmatch(r"/etc/rabbitmq/(rabbitmq\.conf|conf\.d/[\w.-]+\.conf)", conf_path)
    settings = dict(
        line.split("=", 1)
        for line in conf_source.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    settings = {k.strip(): v.strip() for k, v in settings.items()}
    _, definitions_path = mq_file(image, "definitions.json")
    assert settings["management.load_definitions"] == definitions_path
    assert settings["loopback_users"] == "none"


# ================================================================ compose.yaml


@pytest.mark.parametrize("run", GUIDE_RUNS, ids=lambda r: r.name)
def test_compose_mounts_what_the_guide_mounts(run: Run) -> None:
    mounts = compose_volumes(SERVICES[compose_service_for(run)])
    assert {target for _, target, _ in mounts} == {target for _, target in run.volumes}
    if run.image != MLOPS_IMAGE and run.image != MQ_IMAGE:
        role = run.image.removeprefix("synergos_").removesuffix("_cluster")
        assert (f"./deploy/credentials/{compose_service_for(run)}", f"/{role}/credentials", True) in mounts
    if run.image == "synergos_worker":  # a party's rows are only ever read (DESIGN.md section 1)
        assert all(read_only for _, target, read_only in mounts if target == "/worker/data")


def test_compose_shares_volumes_exactly_where_the_guide_shares_directories() -> None:
    guide = {
        (compose_service_for(run), target): source
        for run in GUIDE_RUNS
        for source, target in run.volumes
        if not _is_credentials(target)
    }
    compose = {
        (name, target): source
        for name, s in SERVICES.items()
        for source, target, _ in compose_volumes(s)
        if not _is_credentials(target)
    }
    assert set(guide) == set(compose)
    mounts = sorted(guide)
    for i, a in enumerate(mounts):
        for b in mounts[i + 1 :]:
            assert (guide[a] == guide[b]) == (compose[a] == compose[b]), (
                f"{a} and {b}: the guide {'shares' if guide[a] == guide[b] else 'separates'} them"
            )
    shared = {compose[m] for m in mounts if list(guide.values()).count(guide[m]) > 1}
    assert shared and shared <= set(COMPOSE_DATA.get("volumes") or {}), "shared mounts are named volumes"
    sharing = {name for (name, _), source in compose.items() if source in shared}
    assert sharing == {"director", "ttp", "mlops"}


def test_compose_starts_services_after_the_ones_they_need_are_healthy() -> None:
    workers = {n for n, s in SERVICES.items() if image_name(s["image"])[0] == "synergos_worker"}
    expected = {"director": {"mq", "mlops"}, "ttp": {"mq", "mlops", *workers}}
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        assert set(depends) == expected.get(name, set()), name
        for needed, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {needed}"
            assert TARGETS[image_name(SERVICES[needed]["image"])[0]].healthcheck or SERVICES[needed].get(
                "healthcheck"
            ), f"{needed} has no health check, so {name} would never start"


@pytest.mark.parametrize("run", [r for r in GUIDE_RUNS if r.env], ids=lambda r: r.name)
def test_compose_sets_the_guides_environment(run: Run) -> None:
    environment = SERVICES[compose_service_for(run)].get("environment") or {}
    assert {k: environment.get(k) for k in run.env} == run.env


def test_compose_comment_prepares_the_workers_data(tmp_path: Path) -> None:
    (command,) = re.findall(r"^#\s*\.venv/bin/python -c (\".*\")$", COMPOSE.read_text(), re.M)
    subprocess.run([sys.executable, "-c", shlex.split(command)[0]], cwd=tmp_path, check=True, timeout=120)
    comment = "\n".join(line.lstrip("# ") for line in COMPOSE.read_text().splitlines() if line.startswith("#"))
    (provision,) = re.findall(r"(\.venv/bin/synergos-provision .*?) &&", comment.replace("\\\n", " "), re.S)
    argv = shlex.split(provision)
    subprocess.run([str(Path(sys.executable).with_name("synergos-provision")), *argv[1:]], cwd=tmp_path, check=True)
    for name, service in SERVICES.items():
        for source, target, _ in compose_volumes(service):
            if source.startswith("./") and _is_credentials(target):  # the documented provisioning fills it
                assert {p.name for p in (tmp_path / source).iterdir()} == {"ca.pem", "cert.pem", "key.pem"}, name
            elif source.startswith("./"):  # a bind mount: the documented command must fill it
                assert any((tmp_path / source).rglob("metadata.json")), f"{name}: nothing prepared in {source}"


# ================================================================ .dockerignore and the probe


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for needed in (".venv", ".git", "demo_workspace", "deploy", ".pytest_cache"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    sources = {
        s
        for image in TARGETS.values()
        for keyword, rest in image.instructions
        if keyword == "COPY" and "--from=" not in rest
        for s in [t for t in rest.split() if not t.startswith("--")][:-1]
    }
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not any(fnmatch(source, p) or fnmatch(source.split("/")[0], p) for p in patterns), (
            f".dockerignore hides {source}, which an image COPYs"
        )


def test_healthcheck_probe_passes_on_2xx_only(tmp_path: Path) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = runpy.run_path(str(DOCKER / "healthcheck.py"))["main"]
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert probe(f"{base}/health") == 0
        assert probe(f"{base}/other") == 1
    finally:
        server.shutdown()
        server.server_close()
    assert probe(base + "/health") == 1  # nothing listens any more
