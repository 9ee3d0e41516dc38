"""How the caller's own environment is described: a uv project, a poetry project, a conda
environment (its ``conda-meta/`` records, read with py-rattler: no conda needed), or a plain
set of installed distributions (what ``pip freeze`` lists)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.deployment.conda import export_prefix
from meadowrun_core.deployment.process import find_uv, run_tool, uv_env
from meadowrun_core.exceptions import BadInputError


@dataclass(frozen=True)
class DetectedEnvironment:
    """``kind`` is uv, poetry, conda or pip; ``path`` the project directory (uv, poetry) or
    the environment (conda); ``text`` the exported description (conda: the explicit lock, pip:
    pinned requirements); ``pip``: a conda environment's pip-installed distributions, pinned."""

    kind: str
    python_version: str
    path: str = ""
    text: str = ""
    pip: str = ""


def python_minor() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _ancestors(start: Path) -> list[Path]:
    return [start, *start.parents]


def detect_local_environment(
    prefix: str | None = None, cwd: str | None = None, python: str | None = None
) -> DetectedEnvironment:
    """Detect how the environment at ``prefix`` (default: this interpreter's) is described."""
    prefix_path = Path(prefix or sys.prefix).resolve()
    cwd_path = Path(cwd or os.getcwd()).resolve()
    version = python_minor()
    # uv: the environment is the project's .venv (or UV_PROJECT_ENVIRONMENT) next to uv.lock
    project_env = os.environ.get("UV_PROJECT_ENVIRONMENT")
    for directory in _ancestors(prefix_path.parent):
        if (directory / "uv.lock").is_file() and (
            prefix_path == directory / ".venv"
            or (project_env and Path(project_env).resolve() == prefix_path)
        ):
            return DetectedEnvironment("uv", version, path=str(directory))
    for directory in _ancestors(cwd_path):
        if (directory / "uv.lock").is_file() and prefix_path == directory / ".venv":
            return DetectedEnvironment("uv", version, path=str(directory))
        if (directory / "poetry.lock").is_file() and (
            prefix_path == directory / ".venv" or "pypoetry" in prefix_path.parts
        ):
            return DetectedEnvironment("poetry", version, path=str(directory))
    if (prefix_path / "conda-meta").is_dir():
        lock = export_prefix(prefix_path)
        return DetectedEnvironment(
            "conda",
            lock.python_version or version,
            path=str(prefix_path),
            text=lock.lock,
            pip=lock.pip,
        )
    return DetectedEnvironment("pip", version, text=freeze(python or sys.executable))


def freeze(python: str) -> str:
    """The installed distributions of ``python``'s environment, pinned, without the user's own
    editable or local-path installs (their code is mirrored instead)."""
    out = run_tool(
        [find_uv(), "pip", "freeze", "--python", python, "--exclude-editable"],
        "listing the installed packages (uv pip freeze)",
        env=uv_env(),
        error=BadInputError,
    )
    kept = [
        line
        for line in out.splitlines()
        if line.strip() and " @ file://" not in line and not line.startswith("-e ")
    ]
    return "\n".join(kept) + "\n"
