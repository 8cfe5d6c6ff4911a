"""How `synergos-mlops` chooses its bind address and builds the MLflow server command."""

from __future__ import annotations

import itertools
import sys

import pytest

from synergos_mlops import cli, server
from synergos_mlops import settings as mlops_settings
from synergos_mlops.cli import main
from synergos_mlops.settings import MLOpsSettings


@pytest.fixture
def outside_container(monkeypatch):
    monkeypatch.setattr(mlops_settings, "in_container", lambda: False)
    monkeypatch.setattr(server, "in_container", lambda: False)


@pytest.mark.parametrize(
    ("explicit", "gunicorn", "expected"),
    [
        ("127.0.0.156", "--bind=0.0.0.0", "127.0.0.156"),
        (None, "--bind=0.0.0.0", "0.0.0.0"),
        (None, "--workers 2 --bind=10.1.2.3:5500", "10.1.2.3"),
        (None, "-b [::]:5500", "::"),
        (None, "--bind unix:/tmp/sock", "127.0.0.1"),
        (None, "", "127.0.0.1"),
    ],
)
def test_bind_host_prefers_the_flag_then_gunicorn_args_then_loopback(outside_container, explicit, gunicorn, expected):
    assert server.bind_host(explicit, {"GUNICORN_CMD_ARGS": gunicorn}) == expected


def test_inside_a_container_the_server_listens_on_all_interfaces_and_stores_in_slash_mlflow(monkeypatch):
    monkeypatch.setattr(server, "in_container", lambda: True)
    assert server.bind_host(None, {}) == "0.0.0.0"


def test_the_command_runs_mlflow_from_this_environment_on_the_service_store(outside_container, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = MLOpsSettings(id="mlops")
    mlflow_dir = settings.resolve_mlflow_dir()
    assert mlflow_dir == tmp_path / "mlops" / "mlflow" and (mlflow_dir / "artifacts").is_dir()
    command = server.build_command(settings, mlflow_dir, "127.0.0.156")
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    opts = dict(itertools.pairwise(command))
    assert opts["--backend-store-uri"] == f"sqlite:///{tmp_path}/mlops/mlflow/mlflow.db"
    assert opts["--artifacts-destination"] == str(tmp_path / "mlops" / "mlflow" / "artifacts")
    assert "--serve-artifacts" in command and opts["--port"] == "5500" and opts["--host"] == "127.0.0.156"
    allowed = opts["--allowed-hosts"].split(",")
    assert "127.*" in allowed and "127.0.0.156" in allowed and "192.168.*" in allowed

    postgres = MLOpsSettings(db_url="postgresql://mlflow@db/mlflow", allowed_hosts="mlflow.example.org")
    command = server.build_command(postgres, mlflow_dir, "0.0.0.0")
    opts = dict(itertools.pairwise(command))
    assert opts["--backend-store-uri"] == "postgresql://mlflow@db/mlflow"
    assert opts["--allowed-hosts"] == "mlflow.example.org"


def test_the_child_does_not_inherit_gunicorn_args():
    env = server.child_env({"GUNICORN_CMD_ARGS": "--bind=0.0.0.0", "PATH": "/bin"})
    assert "GUNICORN_CMD_ARGS" not in env and env["PATH"] == "/bin"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"


@pytest.mark.parametrize(
    "argv", [["--port", "0"], ["--port", "x"], ["--logging_variant", "syslog"], ["--workers", "0"]]
)
def test_bad_flags_are_refused_before_anything_starts(argv, monkeypatch):
    monkeypatch.setattr(cli, "serve", lambda settings: pytest.fail("must not start"))
    with pytest.raises(SystemExit) as exited:
        main(["--id", "mlops", *argv])
    assert exited.value.code == 2
