"""Deployments (issue 3): the code mirror, environments built with uv, git repositories,
containers and secrets. Real uv builds (one tiny package from the index, cached by uv), real git
repositories made here, a real agent."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import deployment_helpers
import pytest

import meadowrun_core as mr
from meadowrun_core.deployment import code_roots
from meadowrun_core.deployment.code_materialize import materialize
from meadowrun_core.deployment.code_mirror import CodeMirror
from meadowrun_core.deployment.code_roots import CodeRoot
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.serialization import Signer

SIX = "six==1.17.0"
GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]


def _nothing_launched(home: Path) -> bool:
    return SqliteAllocationTable(home / "state.db").list_instances() == []


def _store(tmp_path: Path) -> tuple[FileObjectStore, Signer]:
    return FileObjectStore(tmp_path / "objects"), Signer(b"k" * 32)


# --- code mirror ----------------------------------------------------------------------------
def _tree(root: Path, dirs: int, files: int, size: int = 1000) -> None:
    for d in range(dirs):
        pkg = root / f"pkg{d}"
        pkg.mkdir(parents=True)
        for f in range(files):
            (pkg / f"m{f}.py").write_text(f"X = {d * 1000 + f}\n" + "#" * size)


def test_mirror_uploads_only_what_changed(tmp_path: Path) -> None:
    store, signer = _store(tmp_path)
    src = tmp_path / "src"
    _tree(src, dirs=20, files=20)
    (src / "data.csv").write_text("not code")
    mirror = CodeMirror(store, signer)
    first = mirror.upload([CodeRoot(src)])
    assert mirror.bytes_uploaded > 400 * 1000
    before = mirror.bytes_uploaded
    assert mirror.upload([CodeRoot(src)]) == first
    assert mirror.bytes_uploaded == before  # unchanged: nothing uploaded
    fresh = CodeMirror(store, signer)  # a new process: trusts nothing, sends one pack
    assert fresh.upload([CodeRoot(src)]) == first and fresh.requests == 2  # pack + manifest
    (src / "pkg3" / "m7.py").write_text("X = 'changed'\n" + "#" * 10_000)
    second = mirror.upload([CodeRoot(src)])
    changed = mirror.bytes_uploaded - before
    assert second != first and 10_000 < changed < 20_000  # the file and 3 small nodes

    cache = tmp_path / "cache"
    (old,) = materialize(store, signer, first, cache)
    (new,) = materialize(store, signer, second, cache)
    assert "'changed'" in (Path(new.path) / "pkg3" / "m7.py").read_text()
    assert "X = 3007" in (Path(old.path) / "pkg3" / "m7.py").read_text()
    assert not (Path(new.path) / "data.csv").exists()
    # unchanged directories are shared between the two versions, not written twice
    assert os.readlink(Path(new.path) / "pkg4") == os.readlink(Path(old.path) / "pkg4")
    assert len(list((cache / "nodes").iterdir())) == 1 + 20 + 2


def test_mirror_returns_the_last_manifest_until_something_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every directory watched and no event since, an upload returns the last manifest
    without reading the tree; any change, deep or shallow, is still seen."""
    store, signer = _store(tmp_path)
    src = tmp_path / "src"
    _tree(src, dirs=3, files=2)
    mirror = CodeMirror(store, signer)
    first = mirror.upload([CodeRoot(src)])
    assert mirror.upload([CodeRoot(src)]) == first  # from the watched cache: remembered
    scans: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scans.append(path) or real_scandir(path))
    signed: list[bytes] = []
    real_sign = signer.sign
    monkeypatch.setattr(signer, "sign", lambda body: signed.append(body) or real_sign(body))
    assert mirror.upload([CodeRoot(src)]) == first and scans == [] and signed == []
    (src / "pkg2" / "m1.py").write_text("X = 'deep change'\n")
    second = mirror.upload([CodeRoot(src)])
    assert second != first and scans == [str(src / "pkg2")]
    (src / "pkg1" / "sub").mkdir()
    (src / "pkg1" / "sub" / "new.py").write_text("Y = 1\n")
    third = mirror.upload([CodeRoot(src)])
    assert third != second
    (root,) = materialize(store, signer, third, tmp_path / "cache")
    assert (Path(root.path) / "pkg1" / "sub" / "new.py").read_text() == "Y = 1\n"
    assert "deep change" in (Path(root.path) / "pkg2" / "m1.py").read_text()
    mirror.close()  # no watcher: every upload reads the tree, and still sees changes
    scans.clear()
    assert mirror.upload([CodeRoot(src)]) == third and scans
    (src / "pkg0" / "m0.py").write_text("X = 'after close'\n")
    assert mirror.upload([CodeRoot(src)]) != third


def test_mirror_globs_and_editable_finder(tmp_path: Path) -> None:
    store, signer = _store(tmp_path)
    src = tmp_path / "proj"
    (src / "mypkg").mkdir(parents=True)
    (src / "mypkg" / "__init__.py").write_text("V = 1\n")
    (src / "mypkg" / "table.csv").write_text("a,b\n")
    finder = tmp_path / "__editable___mypkg_0_1_finder.py"
    mapping = {"mypkg": str(src / "mypkg")}
    finder.write_text(f"import sys\nMAPPING: dict[str, str] = {mapping!r}\n")
    assert code_roots._read_finder(finder) == {"mypkg": src / "mypkg"}
    mirror = CodeMirror(store, signer)
    key = mirror.upload([CodeRoot(src / "mypkg", "back", prefix="mypkg")], ("mypkg/*.csv",))
    (root,) = materialize(store, signer, key, tmp_path / "cache")
    assert (Path(root.path) / "mypkg" / "__init__.py").read_text() == "V = 1\n"
    assert (Path(root.path) / "mypkg" / "table.csv").exists()
    assert root.position == "back"


def test_mirror_local_restores_paths_in_order(local_cloud: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, value in ((first, "first"), (second, "second")):
        directory.mkdir()
        (directory / "mr_order_mod.py").write_text(f"def where():\n    return {value!r}\n")
    (second / "mr_only_second.py").write_text("OK = True\n")
    deployment = mr.Deployment.mirror_local(additional_sys_paths=[str(first), str(second)])
    path = mr.run_function(deployment_helpers.sys_path, deployment=deployment)
    mirrored = [p for p in path if "/code/nodes/" in p]
    assert len(mirrored) >= 3  # tests/ (front) ... first, second (back, in order)
    assert path.index(mirrored[-2]) < path.index(mirrored[-1])
    assert mr.run_function("mr_order_mod.where", deployment=deployment) == "first"
    # a change to one file reaches the worker (a new deployment key, a new worker)
    (first / "mr_order_mod.py").write_text("def where():\n    return 'edited'\n")
    assert mr.run_function("mr_order_mod.where", deployment=deployment) == "edited"


# --- environments ---------------------------------------------------------------------------
def test_requirements_file_environment_built_once(local_cloud: Path, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six>=1.16\n")
    deployment = mr.Deployment.mirror_local(
        interpreter=mr.PipRequirementsFile(str(tmp_path / "requirements.txt"))
    )
    info = mr.run_function(deployment_helpers.env_info, args=("six",), deployment=deployment)
    assert info["version"] == "1.17.0"
    assert info["has_typer"] is False, info  # exactly the spec: meadowrun's own packages are hidden
    assert info["prefix"] != sys.prefix and "/envs/" in str(info["prefix"])
    assert info["virtual_env"] == info["prefix"]
    envs = list(local_cloud.glob("instances/*/envs/*/.meadowrun-ready"))
    assert len(envs) == 1
    built = envs[0].stat().st_mtime_ns
    started = time.perf_counter()
    again = mr.run_function(deployment_helpers.env_info, args=("six",), deployment=deployment)
    assert again["prefix"] == info["prefix"] and envs[0].stat().st_mtime_ns == built
    assert time.perf_counter() - started < 1.0


def test_uv_project_and_missing_lock(local_cloud: Path, tmp_path: Path) -> None:
    project = tmp_path / "uvproj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "uvproj"\nversion = "0.1"\nrequires-python = ">=3.11"\n'
        f'dependencies = ["{SIX}"]\n'
    )
    with pytest.raises(mr.BadInputError, match=r"no uv\.lock"):
        mr.run_function(
            deployment_helpers.env_info,
            args=("six",),
            deployment=mr.Deployment.mirror_local(interpreter=mr.UvProject(str(project))),
        )
    assert _nothing_launched(local_cloud)
    subprocess.run(["uv", "lock", "--quiet", "--project", str(project)], check=True)
    info = mr.run_function(
        deployment_helpers.env_info,
        args=("six",),
        deployment=mr.Deployment.mirror_local(interpreter=mr.UvProject(str(project))),
    )
    assert info["version"] == "1.17.0" and info["has_typer"] is False


POETRY_LOCK = """# This file is automatically @generated by Poetry 2.1.3.

[[package]]
name = "six"
version = "1.17.0"
description = "Python 2 and 3 compatibility utilities"
optional = false
python-versions = "!=3.0.*,!=3.1.*,!=3.2.*,>=2.7"
groups = ["main"]
files = [
    {file = "six-1.17.0-py2.py3-none-any.whl", hash = "sha256:4721f391ed90541fddacab5acf947aa0d\
3dc7d27b2e1e8eda2be8970586c3274"},
]

[[package]]
name = "colorama"
version = "0.4.6"
description = "Cross-platform colored terminal text."
optional = false
python-versions = "!=3.0.*,!=3.1.*,!=3.2.*,!=3.3.*,!=3.4.*,!=3.5.*,!=3.6.*,>=2.7"
groups = ["main"]
markers = "sys_platform == \\"win32\\""
files = []

[metadata]
lock-version = "2.1"
python-versions = ">=3.11"
content-hash = "0"
"""


def test_poetry_project(local_cloud: Path, tmp_path: Path) -> None:
    project = tmp_path / "poetryproj"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.poetry]\nname = "p"\nversion = "0.1"\n')
    with pytest.raises(mr.BadInputError, match=r"no poetry\.lock"):
        mr.run_function(
            deployment_helpers.env_info,
            args=("six",),
            deployment=mr.Deployment.mirror_local(interpreter=mr.PoetryProjectPath(str(project))),
        )
    (project / "poetry.lock").write_text(POETRY_LOCK)
    info = mr.run_function(
        deployment_helpers.env_info,
        args=("six",),
        deployment=mr.Deployment.mirror_local(interpreter=mr.PoetryProjectPath(str(project))),
    )
    assert info["version"] == "1.17.0" and info["has_typer"] is False


def test_conda_file_pip_only_is_built_with_uv(local_cloud: Path, tmp_path: Path) -> None:
    """Conda files with conda packages are built with py-rattler: tests/test_conda.py."""
    env_file = tmp_path / "environment.yml"
    env_file.write_text(
        "name: t\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n"
        f"  - pip:\n    - {SIX}\n"
    )
    deployment = mr.Deployment.mirror_local(interpreter=mr.CondaEnvironmentFile(str(env_file)))
    info = mr.run_function(deployment_helpers.env_info, args=("six",), deployment=deployment)
    assert info["version"] == "1.17.0"


def test_environment_errors_before_launch(local_cloud: Path, tmp_path: Path) -> None:
    def run(interpreter: object) -> None:
        mr.run_function(
            deployment_helpers.env_info,
            args=("six",),
            deployment=mr.Deployment.mirror_local(interpreter=interpreter),  # type: ignore[arg-type]
        )

    missing = tmp_path / "missing.txt"
    missing.write_text("meadowrun-no-such-package-xyz-31337\n")
    with pytest.raises(mr.BadInputError, match="meadowrun-no-such-package-xyz-31337"):
        run(mr.PipRequirementsFile(str(missing)))
    broken = tmp_path / "broken_pkg"
    broken.mkdir()
    (broken / "setup.py").write_text("raise RuntimeError('THIS PACKAGE REFUSES TO BUILD')\n")
    (tmp_path / "broken.txt").write_text(f"broken-pkg @ file://{broken}\n")
    with pytest.raises(mr.BadInputError, match="THIS PACKAGE REFUSES TO BUILD"):
        run(mr.PipRequirementsFile(str(tmp_path / "broken.txt")))
    (tmp_path / "ok.txt").write_text(SIX + "\n")
    with pytest.raises(mr.BadInputError, match=r"Python 3\.99 is not available"):
        run(mr.PipRequirementsFile(str(tmp_path / "ok.txt"), python_version="3.99"))
    with pytest.raises(mr.BadInputError, match="does not exist"):
        run(mr.PipRequirementsFile(str(tmp_path / "nope.txt")))
    with pytest.raises(mr.BadInputError, match="does not exist on the instance"):
        run(mr.PreinstalledInterpreter("/no/such/python"))
    assert _nothing_launched(local_cloud)


def test_built_environment_is_stored_and_unpacked_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meadowrun_core.deployment.environments import ensure_environment
    from meadowrun_core.deployment.interpreters import Resolver

    store, signer = _store(tmp_path)
    (tmp_path / "r.txt").write_text(SIX + "\n")
    spec = Resolver(store, signer, tmp_path / "client", True).resolve(
        mr.PipRequirementsFile("r.txt"), tmp_path
    )
    monkeypatch.setenv("MEADOWRUN_ENV_ARCHIVE", "always")
    python = ensure_environment(spec, store, signer, tmp_path / "i1" / "envs", tmp_path / "refs")
    assert list((tmp_path / "refs").iterdir())
    monkeypatch.setenv("MEADOWRUN_UV", "/bin/false")  # a fresh instance must not build
    other = ensure_environment(spec, store, signer, tmp_path / "i2" / "envs", tmp_path / "refs")
    assert other != python
    out = subprocess.run([other, "-c", "import six; print(six.__version__)"], capture_output=True)
    assert out.stdout.decode().strip() == "1.17.0", out.stderr


def test_detects_how_the_local_environment_is_described(tmp_path: Path) -> None:
    from meadowrun_core.deployment.detect import detect_local_environment

    uvproj = tmp_path / "uvproj"
    (uvproj / ".venv").mkdir(parents=True)
    (uvproj / "uv.lock").write_text("version = 1\n")
    assert detect_local_environment(str(uvproj / ".venv"), str(tmp_path)).kind == "uv"
    poetry = tmp_path / "poetryproj"
    (poetry / ".venv").mkdir(parents=True)
    (poetry / "poetry.lock").write_text(POETRY_LOCK)
    assert detect_local_environment(str(poetry / ".venv"), str(poetry)).kind == "poetry"
    # conda environments (read without conda): tests/test_conda.py
    venv = tmp_path / "plain"
    subprocess.run(["uv", "venv", "-q", str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv), SIX], check=True)
    detected = detect_local_environment(str(venv), str(tmp_path), str(venv / "bin" / "python"))
    assert detected.kind == "pip" and detected.text.strip() == SIX


# --- git ------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    out = subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _make_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "src" / "gitpkg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "src" / "gitpkg" / "__init__.py").write_text(
        "import importlib.util\n\n\ndef info():\n    import six\n\n"
        "    return six.__version__, importlib.util.find_spec('typer') is not None\n"
    )
    (repo / "src" / "gitpkg" / "mod.py").write_text("def version():\n    return 'v1'\n")
    (repo / "requirements.txt").write_text(SIX + "\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    return repo, _git(repo, "rev-parse", "HEAD")


def test_git_repo_branch_commit_and_errors(local_cloud: Path, tmp_path: Path) -> None:
    repo, first = _make_repo(tmp_path)
    url = f"file://{repo}"

    def deploy(**kwargs: str) -> mr.Deployment:
        return mr.Deployment.git_repo(url, path_to_source="src", **kwargs)

    with pytest.raises(mr.BadInputError, match="branch 'nope' does not exist"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(branch="nope"))
    with pytest.raises(mr.BadInputError, match=f"commit {'0' * 40} does not exist"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(commit="0" * 40))
    with pytest.raises(mr.BadInputError, match="full 40-character"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(commit=first[:8]))
    assert _nothing_launched(local_cloud)

    assert mr.run_function("gitpkg.mod.version", deployment=deploy(branch="main")) == "v1"
    (repo / "src" / "gitpkg" / "mod.py").write_text("def version():\n    return 'v2'\n")
    _git(repo, "commit", "-qam", "v2")
    assert mr.run_function("gitpkg.mod.version", deployment=deploy(branch="main")) == "v2"
    assert mr.run_function("gitpkg.mod.version", deployment=deploy()) == "v2"  # default branch
    assert mr.run_function("gitpkg.mod.version", deployment=deploy(commit=first)) == "v1"
    checkouts = list(local_cloud.glob("instances/*/git/*/[0-9a-f]*"))
    assert len(checkouts) == 2  # one per commit, reused by the default-branch job


def test_git_repo_interpreter_from_spec_file_in_repo(local_cloud: Path, tmp_path: Path) -> None:
    repo, _ = _make_repo(tmp_path)
    deployment = mr.Deployment.git_repo(
        f"file://{repo}",
        branch="main",
        path_to_source="src",
        interpreter=mr.PipRequirementsFile("requirements.txt"),
    )
    assert mr.run_function("gitpkg.info", deployment=deployment) == ("1.17.0", False)
    assert mr.run_function("gitpkg.mod.version", deployment=deployment) == "v1"
    missing = mr.Deployment.git_repo(
        f"file://{repo}", interpreter=mr.UvProject("."), path_to_source="src"
    )
    with pytest.raises(mr.BadInputError, match="pyproject"):
        mr.run_function("gitpkg.mod.version", deployment=missing)


# --- secrets and containers ----------------------------------------------------------------
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
    assert _nothing_launched(local_cloud)


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


@pytest.fixture
def ssh_server(tmp_path: Path) -> object:
    """A real sshd on 127.0.0.1 that accepts one generated key (for root, this machine)."""
    import shutil
    import socket

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or os.getuid() != 0:
        pytest.fail("needs openssh-server and root: scripts/test installs it with apt-get")
    conf = tmp_path / "sshd"
    conf.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", conf / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", conf / "id"], check=True)
    (conf / "authorized_keys").write_text((conf / "id.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (conf / "config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {conf / 'host'}\n"
        f"AuthorizedKeysFile {conf / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile {conf / 'pid'}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(conf / "config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port, (conf / "id").read_text()
    proc.terminate()
    proc.wait(timeout=10)


def test_git_repo_over_ssh_with_key_from_secret_store(
    local_cloud: Path, tmp_path: Path, ssh_server: tuple[int, str]
) -> None:
    from meadowrun_core.local.secrets import LocalSecretStore

    port, key = ssh_server
    repo, _ = _make_repo(tmp_path)
    url = f"ssh://root@127.0.0.1:{port}{repo}"
    deployment = mr.Deployment.git_repo(
        url, branch="main", path_to_source="src", ssh_key_secret="deploy-key"
    )
    with pytest.raises(mr.BadInputError, match="no secret named 'deploy-key'"):
        mr.run_function("gitpkg.mod.version", deployment=deployment)
    LocalSecretStore(local_cloud).put("deploy-key", key)
    assert mr.run_function("gitpkg.mod.version", deployment=deployment) == "v1"
    # the key is on no disk but the secret store's private file, and in no log
    marker = key.strip().splitlines()[1]
    for path in local_cloud.rglob("*"):
        if path.is_file() and path.name != "secrets.json":
            assert marker not in path.read_text(errors="ignore"), path
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("meadowrun-git-*"))


# --- commands use the deployment too --------------------------------------------------------
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
    repo, _ = _make_repo(tmp_path)
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
