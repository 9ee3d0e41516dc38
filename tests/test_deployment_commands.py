"""Deployments (issue 3) for commands and clients: run_command sees the mirrored code, a built
environment and a git checkout; a client in a plain venv recreates its interpreter on the
instance (LocalCurrentInterpreter(recreate=True)) end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import meadowrun_core as mr
from tests.deployment_support import SIX, make_repo


def _command_output(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    prefix = f"[{job_id}] "
    return [
        r.getMessage()[len(prefix) :]
        for r in caplog.records
        if r.name == "meadowrun_core.job" and r.getMessage().startswith(prefix)
    ]


def test_command_sees_mirrored_code_and_built_environment(
    local_cloud: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meadowrun_core.job")
    mirrored = mr.run_command(["python", "-c", "import workloads; print(workloads.double(21))"])
    assert isinstance(mirrored, mr.CommandResult) and mirrored.return_code == 0
    assert _command_output(caplog, mirrored.job_id) == ["42"]

    (tmp_path / "requirements.txt").write_text(f"{SIX}\n")
    deployment = mr.Deployment.mirror_local(
        interpreter=mr.PipRequirementsFile(str(tmp_path / "requirements.txt"))
    )
    built = mr.run_command(
        ["python", "-c", "import six, sys; print(six.__version__, sys.prefix != sys.base_prefix)"],
        deployment=deployment,
    )
    assert isinstance(built, mr.CommandResult) and built.return_code == 0
    assert _command_output(caplog, built.job_id) == ["1.17.0 True"]


def test_command_runs_in_git_checkout(
    local_cloud: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meadowrun_core.job")
    repo, _ = make_repo(tmp_path)
    result = mr.run_command(
        ["sh", "-c", "ls src/gitpkg"],
        deployment=mr.Deployment.git_repo(f"file://{repo}", path_to_source="src"),
    )
    assert isinstance(result, mr.CommandResult) and result.return_code == 0
    assert "mod.py" in _command_output(caplog, result.job_id)


RECREATE_CLIENT = """
import json, sys
sys.path.insert(0, {tests!r})
import deployment_helpers
import meadowrun_core as mr

info = mr.run_function(
    deployment_helpers.env_info,
    args=("six",),
    # the .pth entries below are not this venv's code: mirror only the tests' helpers
    deployment=mr.Deployment.mirror_local(
        include_sys_path=False,
        additional_sys_paths=({tests!r},),
        interpreter=mr.LocalCurrentInterpreter(recreate=True),
    ),
)
print(json.dumps(info))
"""


def test_local_current_interpreter_recreated_end_to_end(local_cloud: Path, tmp_path: Path) -> None:
    """A client in a plain venv with six: recreate=True detects it (pip freeze), builds an
    identical environment on the instance and runs the job there, not in the client's venv."""
    import site

    venv = tmp_path / "client-venv"
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv), SIX], check=True)
    # the client venv also sees meadowrun-core (through a .pth, so `pip freeze` lists only six)
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "meadowrun_dev.pth").write_text(
        "\n".join([*site.getsitepackages(), str(Path(__file__).parent.parent)]) + "\n"
    )
    script = tmp_path / "client.py"
    script.write_text(RECREATE_CLIENT.format(tests=str(Path(__file__).parent)))
    out = subprocess.run(
        [str(venv / "bin" / "python"), str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MEADOWRUN_HOME": str(local_cloud)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["version"] == "1.17.0"  # the client's six, rebuilt
    assert info["has_typer"] is False, info  # exactly the client's packages, nothing of ours
    assert Path(str(info["prefix"])).resolve() != venv.resolve()  # a new environment
    assert str(local_cloud) in str(info["prefix"])  # built on the instance
