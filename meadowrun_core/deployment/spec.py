"""The user-facing ``Deployment`` and interpreter specs.

A spec is inert data; ``prepare`` turns it into a ``PreparedDeployment`` (JSON-safe, with code
already uploaded to the object store) just before a job is sent.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meadowrun_core.exceptions import BadInputError


@dataclass(frozen=True)
class LocalCurrentInterpreter:
    """The caller's environment, recreated on the instance.

    How the local environment is described is detected (uv: ``uv.lock``; poetry:
    ``poetry.lock``; conda: ``conda env export``; else the installed distributions, as pip
    freeze lists them) and an identical environment with the same Python minor version is
    built on the instance. On the local cloud the instance is this machine, so by default the
    caller's own interpreter is used as it is; ``recreate=True`` builds it all the same.
    """

    recreate: bool = False


@dataclass(frozen=True)
class PreinstalledInterpreter:
    """An interpreter that already exists on the instance, at ``path``."""

    path: str


@dataclass(frozen=True)
class PipRequirementsFile:
    """A requirements file; resolved (pinned) once on the client, built with uv."""

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class UvProject:
    """A uv project directory with ``pyproject.toml`` and ``uv.lock`` (required)."""

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class PoetryProjectPath:
    """A poetry project directory with ``poetry.lock`` (required); installed with uv."""

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class CondaEnvironmentFile:
    """A conda ``environment.yml``. Python-and-pip-only files are built with uv; conda
    packages need conda, mamba or micromamba on the instance."""

    path: str


@dataclass(frozen=True)
class ContainerInterpreter:
    """Run the job in a container image (docker or podman on the instance); the image needs
    meadowrun-core installed. ``username_password_secret`` names a secret holding
    ``username:password`` for the registry."""

    repository_name: str
    tag: str = "latest"
    username_password_secret: str | None = None

    @property
    def image(self) -> str:
        if "@" in self.repository_name:
            return self.repository_name  # pinned by digest
        return f"{self.repository_name}:{self.tag}"


Interpreter = (
    LocalCurrentInterpreter
    | PreinstalledInterpreter
    | PipRequirementsFile
    | UvProject
    | PoetryProjectPath
    | CondaEnvironmentFile
    | ContainerInterpreter
)


@dataclass(frozen=True)
class PreparedDeployment:
    """What the agent needs to start a worker, JSON-safe: the interpreter (a path, or an
    environment spec to build: see ``environments.py``), a code manifest, a git checkout and
    environment variables."""

    python: str
    code_manifest: str | None
    environment: Mapping[str, str]
    interpreter: Mapping[str, Any] | None = None
    git: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "python": self.python,
            "code_manifest": self.code_manifest,
            "environment": dict(self.environment),
        }
        if self.interpreter is not None:
            data["interpreter"] = dict(self.interpreter)
        if self.git is not None:
            data["git"] = dict(self.git)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedDeployment:
        return cls(
            data["python"],
            data.get("code_manifest"),
            data.get("environment", {}),
            data.get("interpreter"),
            data.get("git"),
        )

    def key(self) -> str:
        """Workers are reused only between jobs with an identical deployment."""
        raw = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Deployment:
    interpreter: Interpreter = field(default_factory=LocalCurrentInterpreter)
    include_sys_path: bool = True
    additional_sys_paths: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    git: Mapping[str, Any] | None = None

    @classmethod
    def mirror_local(
        cls,
        include_sys_path: bool = True,
        additional_sys_paths: Sequence[str] = (),
        interpreter: Interpreter | None = None,
        globs: Sequence[str] = (),
        environment_variables: Mapping[str, str] | None = None,
    ) -> Deployment:
        """Mirror the caller's code on ``sys.path`` (not stdlib or site-packages)."""
        return cls(
            interpreter=interpreter or LocalCurrentInterpreter(),
            include_sys_path=include_sys_path,
            additional_sys_paths=tuple(additional_sys_paths),
            globs=tuple(globs),
            environment_variables=dict(environment_variables or {}),
        )

    @classmethod
    def preinstalled_interpreter(
        cls, path: str, environment_variables: Mapping[str, str] | None = None
    ) -> Deployment:
        """Use an interpreter that already exists on the instance; mirror no code."""
        return cls(
            interpreter=PreinstalledInterpreter(path),
            include_sys_path=False,
            environment_variables=dict(environment_variables or {}),
        )

    @classmethod
    def git_repo(
        cls,
        repo_url: str,
        branch: str | None = None,
        commit: str | None = None,
        path_to_source: str | None = None,
        interpreter: Interpreter | None = None,
        environment_variables: Mapping[str, str] | None = None,
        ssh_key_secret: str | None = None,
    ) -> Deployment:
        return cls(
            interpreter=interpreter or LocalCurrentInterpreter(),
            include_sys_path=False,
            environment_variables=dict(environment_variables or {}),
            git={
                "repo_url": repo_url,
                "branch": branch,
                "commit": commit,
                "path_to_source": path_to_source,
                "ssh_key_secret": ssh_key_secret,
            },
        )

    @classmethod
    def container_image(
        cls,
        repository_name: str,
        tag: str = "latest",
        username_password_secret: str | None = None,
        environment_variables: Mapping[str, str] | None = None,
    ) -> Deployment:
        return cls(
            interpreter=ContainerInterpreter(repository_name, tag, username_password_secret),
            include_sys_path=False,
            environment_variables=dict(environment_variables or {}),
        )

    def check_supported(self) -> None:
        """Fail before launching anything for a deployment that cannot work."""
        if not isinstance(self.interpreter, Interpreter):
            raise BadInputError(
                f"interpreter must be one of LocalCurrentInterpreter, PipRequirementsFile, "
                f"UvProject, PoetryProjectPath, CondaEnvironmentFile, ContainerInterpreter or "
                f"PreinstalledInterpreter, got {self.interpreter!r}"
            )
        if self.git is not None:
            url = self.git.get("repo_url")
            if not isinstance(url, str) or not url:
                raise BadInputError(f"git_repo needs a repository URL, got {url!r}")
            if self.git.get("branch") and self.git.get("commit"):
                raise BadInputError("git_repo takes a branch or a commit, not both")

    def python_executable(self) -> str:
        if isinstance(self.interpreter, PreinstalledInterpreter):
            return self.interpreter.path
        return sys.executable
