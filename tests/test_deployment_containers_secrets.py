"""Deployments (issue 3), secrets and containers: the local secret store and its CLI, a
container deployment with no engine failing before launch, and the engine commands keeping
secrets off the command line. Split from the deployment tests: neither needs a build."""

from __future__ import annotations

import os
from pathlib import Path

import deployment_helpers
import pytest

import meadowrun_core as mr
from tests.deployment_support import nothing_launched


def test_local_secret_store_and_cli(local_cloud: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from meadowrun_core.cli import app
    from meadowrun_core.local.secrets import LocalSecretStore

    runner = CliRunner()
    result = runner.invoke(app, ["secret", "set", "token"], input="s3cret-value")
    assert result.exit_code == 0, result.output
    assert "s3cret-value" not in result.output
    store = LocalSecretStore(local_cloud)
    assert store.get("token") == "s3cret-value"
    assert stat_mode(local_cloud / "secrets.json") == 0o600
    assert runner.invoke(app, ["secret", "list"]).output.split() == ["token"]
    with pytest.raises(mr.BadInputError, match="no secret named 'other'"):
        store.get("other")
    assert store.delete("token") and store.names() == []


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_container_without_engine_fails_before_launch(
    local_cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")  # no daemon answers here
    for engine in ("docker", "podman"):
        fake = tmp_path / engine
        fake.write_text("#!/bin/sh\necho 'Cannot connect to the engine daemon' >&2\nexit 1\n")
        fake.chmod(0o755)
    deployment = mr.Deployment.container_image("python", tag="3.11-slim")
    with pytest.raises(mr.BadInputError, match=r"needs docker or podman .*Cannot connect"):
        mr.run_function(deployment_helpers.env_info, args=("six",), deployment=deployment)
    assert nothing_launched(local_cloud)


def test_container_commands_keep_secrets_off_the_command_line() -> None:
    from meadowrun_core.deployment import containers

    engine = containers.Engine("docker", "/usr/bin/docker")
    argv = containers.run_command(
        engine,
        "registry.example.com/team/app:1.2",
        name="meadowrun-abc",
        mounts=["/home/u/.meadowrun", "/tmp/handoff"],
        env_names=["MEADOWRUN_HOME", "API_TOKEN"],
        command=["python", "-c", containers.HANDOFF_SHIM],
    )
    uid = f"{os.getuid()}:{os.getgid()}"
    assert argv[:17] == [
        "/usr/bin/docker", "run", "--rm", "--interactive", "--init", "--name", "meadowrun-abc",
        "--network", "host", "--pid", "host", "--user", uid,
        "--volume", "/home/u/.meadowrun:/home/u/.meadowrun",
        "--volume", "/tmp/handoff:/tmp/handoff",
    ]  # fmt: skip
    assert argv[17:22] == [
        "--env", "MEADOWRUN_HOME", "--env", "API_TOKEN", "registry.example.com/team/app:1.2",
    ]  # fmt: skip
    assert containers.login_command(engine, "registry.example.com", "bob") == [
        "/usr/bin/docker", "login", "--username", "bob", "--password-stdin", "registry.example.com",
    ]  # fmt: skip
    assert containers.registry_of("registry.example.com/team/app:1.2") == "registry.example.com"
    assert containers.registry_of("python:3.11") == "docker.io"
    assert containers.parse_credentials('{"username": "u", "password": "p:w"}') == ("u", "p:w")
    assert containers.parse_credentials("u:p:w") == ("u", "p:w")
