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
    """The interpreter the caller runs in, recreated on the instance.

    On the local cloud the instance is this machine, so it is the same executable.
    """


@dataclass(frozen=True)
class PreinstalledInterpreter:
    path: str


@dataclass(frozen=True)
class PipRequirementsFile:
    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class UvProject:
    path: str


@dataclass(frozen=True)
class PoetryProjectPath:
    path: str


@dataclass(frozen=True)
class CondaEnvironmentFile:
    path: str


@dataclass(frozen=True)
class ContainerInterpreter:
    repository_name: str
    tag: str = "latest"
    username_password_secret: str | None = None


Interpreter = (
    LocalCurrentInterpreter
    | PreinstalledInterpreter
    | PipRequirementsFile
    | UvProject
    | PoetryProjectPath
    | CondaEnvironmentFile
    | ContainerInterpreter
)

_NOT_BUILT = (
    PipRequirementsFile,
    UvProject,
    PoetryProjectPath,
    CondaEnvironmentFile,
    ContainerInterpreter,
)


@dataclass(frozen=True)
class PreparedDeployment:
    """What the agent needs to start a worker: an interpreter path, a code manifest and env."""

    python: str
    code_manifest: str | None
    environment: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "code_manifest": self.code_manifest,
            "environment": dict(self.environment),
        }

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
        """Fail before launching anything for parts that are not built yet."""
        if self.git is not None:
            raise BadInputError(
                "Deployment.git_repo is not built yet in meadowrun-core (see README, 'Not built "
                "yet'); use Deployment.mirror_local() with a local checkout instead"
            )
        if isinstance(self.interpreter, _NOT_BUILT):
            raise BadInputError(
                f"{type(self.interpreter).__name__} is not built yet in meadowrun-core (see "
                "README, 'Not built yet'); use LocalCurrentInterpreter() or "
                "Deployment.preinstalled_interpreter(path)"
            )

    def python_executable(self) -> str:
        if isinstance(self.interpreter, PreinstalledInterpreter):
            return self.interpreter.path
        return sys.executable
