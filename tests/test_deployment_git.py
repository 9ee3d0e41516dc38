"""Deployments (issue 3), git repositories: branches, commits and their errors, an interpreter
from a spec file in the repository, and cloning over SSH (a real sshd on loopback) with the key
from the secret store. Real repositories made here (tests/deployment_support.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import meadowrun_core as mr
from tests.deployment_support import make_repo, nothing_launched, run_git


def test_git_repo_branch_commit_and_errors(local_cloud: Path, tmp_path: Path) -> None:
    repo, first = make_repo(tmp_path)
    url = f"file://{repo}"

    def deploy(**kwargs: str) -> mr.Deployment:
        return mr.Deployment.git_repo(url, path_to_source="src", **kwargs)

    with pytest.raises(mr.BadInputError, match="branch 'nope' does not exist"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(branch="nope"))
    with pytest.raises(mr.BadInputError, match=f"commit {'0' * 40} does not exist"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(commit="0" * 40))
    with pytest.raises(mr.BadInputError, match="full 40-character"):
        mr.run_function("gitpkg.mod.version", deployment=deploy(commit=first[:8]))
    assert nothing_launched(local_cloud)

    assert mr.run_function("gitpkg.mod.version", deployment=deploy(branch="main")) == "v1"
    (repo / "src" / "gitpkg" / "mod.py").write_text("def version():\n    return 'v2'\n")
    run_git(repo, "commit", "-qam", "v2")
    assert mr.run_function("gitpkg.mod.version", deployment=deploy(branch="main")) == "v2"
    assert mr.run_function("gitpkg.mod.version", deployment=deploy()) == "v2"  # default branch
    assert mr.run_function("gitpkg.mod.version", deployment=deploy(commit=first)) == "v1"
    checkouts = list(local_cloud.glob("instances/*/git/*/[0-9a-f]*"))
    assert len(checkouts) == 2  # one per commit, reused by the default-branch job


def test_git_repo_interpreter_from_spec_file_in_repo(local_cloud: Path, tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path)
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
    repo, _ = make_repo(tmp_path)
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
