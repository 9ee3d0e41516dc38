"""Running the tools a deployment needs (uv, git, ssh, container engines) with errors that
carry the tail of the tool's log, and finding those tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from meadowrun_core.exceptions import MeadowrunError

_TAIL_LINES = 25


class DeploymentError(MeadowrunError):
    """A deployment could not be prepared (environment build, git fetch, container pull)."""


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_tool(
    argv: Sequence[str],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 1800,
    error: type[Exception] = DeploymentError,
    hide: Sequence[str] = (),
) -> str:
    """Run ``argv``; return its stdout, or raise ``error`` naming ``what`` with the log's tail.

    ``hide`` lists strings (secrets) that must never appear in an error message.
    """
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise error(f"{what}: {argv[0]!r} is not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: {argv[0]} did not finish within {timeout:g} s") from None
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        log = tail(proc.stderr.decode(errors="replace") + "\n" + out)
        for secret in hide:
            if secret:
                log = log.replace(secret, "***")
        raise error(f"{what} (exit code {proc.returncode}):\n{log}")
    return out


def find_uv() -> str:
    """The uv binary: ``MEADOWRUN_UV``, the ``uv`` Python package, else ``uv`` on PATH."""
    explicit = os.environ.get("MEADOWRUN_UV")
    if explicit:
        return explicit
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found, unused-ignore]

        found: str = find_uv_bin()
        return found
    except (ImportError, FileNotFoundError):
        pass
    path = shutil.which("uv")
    if path is None:
        raise DeploymentError(
            "uv is needed to build environments but was not found: `pip install uv`, or set "
            "MEADOWRUN_UV to the uv binary"
        )
    return path


def uv_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment uv runs in: no inherited virtualenv or project, quiet, no color."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")
    }
    env.update(NO_COLOR="1", UV_NO_PROGRESS="1")
    env.setdefault("UV_COMPILE_BYTECODE", "1")
    if extra:
        env.update(extra)
    return env


def extract_tar(tar: tarfile.TarFile, target: Path, policy: Literal["data", "tar"]) -> None:
    """``tar.extractall`` with Python's extraction ``policy`` ("data" or "tar"); where this
    Python predates extraction filters (3.11.3 and older, as some images ship), the same
    refusals by hand: no absolute paths, nothing outside ``target``, for "data" no links that
    leave it and no device files."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter=policy)
        return
    root = os.path.realpath(target)
    for member in tar.getmembers():
        path = os.path.realpath(os.path.join(root, member.name))
        if member.name.startswith("/") or os.path.commonpath([root, path]) != root:
            raise tarfile.TarError(f"{member.name!r} would be written outside {target}")
        if member.isdev():
            raise tarfile.TarError(f"{member.name!r} is a device file")
        if policy == "data" and (member.issym() or member.islnk()):
            base = os.path.dirname(path) if member.issym() else root
            link = os.path.realpath(os.path.join(base, member.linkname))
            if member.linkname.startswith("/") or os.path.commonpath([root, link]) != root:
                raise tarfile.TarError(f"{member.name!r} links outside {target}")
    tar.extractall(target)  # every member was checked above
