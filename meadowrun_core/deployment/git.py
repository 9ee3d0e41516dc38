"""Git deployments: resolve a branch to its head commit (``git ls-remote``), fetch exactly that
commit (shallow) and check it out once per commit, as a plain directory.

The same ``ensure_checkout`` runs on the client (to read the interpreter's spec files from the
repository, and to fail before launching for a commit that does not exist) and on the
instance. An SSH key comes from the secret store by name; it is written to a private temporary
file only for the duration of one git command, and deleted after.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meadowrun_core.deployment.locks import file_lock
from meadowrun_core.deployment.process import DeploymentError, extract_tar, run_tool

SecretReader = Callable[[str], str]

_SHA = re.compile(r"[0-9a-f]{40}")
_READY = ".meadowrun-ready"


@contextmanager
def git_environment(
    ssh_key_secret: str | None, secrets: SecretReader | None, known_hosts: Path
) -> Iterator[tuple[dict[str, str], list[str]]]:
    """The environment for git commands (and the secret values to keep out of messages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    if ssh_key_secret is None:
        yield env, []
        return
    if secrets is None:
        raise DeploymentError("this git deployment names an SSH key secret, but no secret store")
    key = secrets(ssh_key_secret)
    if not key.endswith("\n"):
        key += "\n"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="meadowrun-git-") as private:
        os.chmod(private, 0o700)
        key_file = Path(private) / "key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts}"
        )
        try:
            yield env, [key.strip()]
        finally:
            key_file.unlink(missing_ok=True)


def resolve_commit(
    repo_url: str,
    branch: str | None,
    commit: str | None,
    env: Mapping[str, str],
    error: type[Exception] = DeploymentError,
) -> str:
    """The full commit a branch (or the default branch) points to, or ``commit`` checked."""
    if commit is not None:
        commit = commit.strip().lower()
        if not _SHA.fullmatch(commit):
            raise error(
                f"commit {commit!r} must be a full 40-character commit id (a branch or tag goes "
                "in branch=)"
            )
        return commit
    ref = f"refs/heads/{branch}" if branch else "HEAD"
    out = run_tool(
        ["git", "ls-remote", "--", repo_url, ref, *([f"refs/tags/{branch}"] if branch else [])],
        f"cannot read the git repository {repo_url}",
        env=env,
        timeout=120,
        error=error,
    )
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name in (ref, f"refs/tags/{branch}"):
            return sha
    if branch:
        raise error(f"branch {branch!r} does not exist in the git repository {repo_url}")
    raise error(f"the git repository {repo_url} has no HEAD (is it empty?)")


def ensure_checkout(
    repo_url: str, commit: str, cache_dir: Path, env: Mapping[str, str], hide: list[str]
) -> Path:
    """A plain directory with the files of ``commit`` (fetched once, shared by every job)."""
    repo_dir = cache_dir / hashlib.sha256(repo_url.encode()).hexdigest()[:16]
    target = repo_dir / commit
    if (target / _READY).exists():
        return target
    with file_lock(repo_dir / ".lock"):
        if (target / _READY).exists():
            return target
        bare = repo_dir / "repo.git"
        if not (bare / "HEAD").exists():
            run_tool(["git", "init", "--quiet", "--bare", str(bare)], "git init", env=env)
        if not _has_commit(bare, commit, env):
            try:
                run_tool(
                    [
                        "git",
                        "--git-dir",
                        str(bare),
                        "fetch",
                        "--quiet",
                        "--depth",
                        "1",
                        "--no-tags",
                        "--",
                        repo_url,
                        commit,
                    ],
                    f"cannot fetch commit {commit} from {repo_url}",
                    env=env,
                    timeout=1800,
                    hide=hide,
                )
            except DeploymentError as exc:
                if "not our ref" in str(exc) or "unadvertised object" in str(exc):
                    raise DeploymentError(
                        f"commit {commit} does not exist in the git repository {repo_url}"
                    ) from None
                raise
        archive = subprocess.run(
            ["git", "--git-dir", str(bare), "archive", "--format=tar", commit],
            capture_output=True,
            env=dict(env),
            check=False,
        )
        if archive.returncode != 0:
            raise DeploymentError(
                f"cannot check out commit {commit}: {archive.stderr.decode(errors='replace')}"
            )
        tmp = repo_dir / f".{commit}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            extract_tar(tar, tmp, "data")
        (tmp / _READY).touch()
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    return target


def _has_commit(bare: Path, commit: str, env: Mapping[str, str]) -> bool:
    return (
        subprocess.run(
            ["git", "--git-dir", str(bare), "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True,
            env=dict(env),
            check=False,
        ).returncode
        == 0
    )


def source_dir(checkout: Path, path_to_source: str | None) -> Path:
    """The directory that goes on ``sys.path``: the checkout, or a sub-directory of it."""
    if not path_to_source:
        return checkout
    path = (checkout / path_to_source).resolve()
    if checkout.resolve() not in [path, *path.parents]:
        raise DeploymentError(f"path_to_source {path_to_source!r} is outside the repository")
    return path


def git_spec(deployment_git: Mapping[str, Any], commit: str) -> dict[str, Any]:
    """What the instance needs: the URL, the resolved commit, the source path, the secret's
    name (never its value)."""
    return {
        "repo_url": deployment_git["repo_url"],
        "commit": commit,
        "path_to_source": deployment_git.get("path_to_source"),
        "ssh_key_secret": deployment_git.get("ssh_key_secret"),
    }
