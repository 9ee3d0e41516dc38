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
    """The caller's environment, recreated on the instance (the default interpreter).

    How the local environment is described is detected (uv: ``uv.lock``; poetry:
    ``poetry.lock``; conda: its ``conda-meta/`` records, read with py-rattler; else the
    installed distributions, as pip freeze lists them) and an identical environment with the
    same Python minor version is built on the instance. On the local cloud the instance is this
    machine, so by default the caller's own interpreter is used as it is.

    ``recreate`` (default False): True builds the environment on the local cloud all the same.

    Example::

        mr.Deployment.mirror_local(interpreter=mr.LocalCurrentInterpreter(recreate=True))
    """

    recreate: bool = False


@dataclass(frozen=True)
class PreinstalledInterpreter:
    """An interpreter that already exists on the instance.

    ``path``: its executable on the instance, e.g. ``"/usr/bin/python3"``.

    Example::

        mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter("/opt/py/bin/python"))
    """

    path: str


@dataclass(frozen=True)
class PipRequirementsFile:
    """A requirements file; resolved (pinned) once on the client, built with uv on the
    instance and cached by its pinned contents.

    ``path``: the file, relative to the working directory. ``python_version`` (default None:
    the caller's Python minor version): e.g. ``"3.12"``.

    Example::

        mr.Deployment.mirror_local(interpreter=mr.PipRequirementsFile("requirements.txt"))
    """

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class UvProject:
    """A uv project directory with ``pyproject.toml`` and ``uv.lock`` (required).

    ``path``: the project directory. ``python_version`` (default None: the project's
    ``.python-version``, else the caller's Python minor version).

    Example::

        mr.Deployment.mirror_local(interpreter=mr.UvProject("."))
    """

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class PoetryProjectPath:
    """A poetry project directory with ``poetry.lock`` (required); installed with uv.

    ``path``: the project directory. ``python_version`` (default None: the caller's Python
    minor version).

    Example::

        mr.Deployment.mirror_local(interpreter=mr.PoetryProjectPath("."))
    """

    path: str
    python_version: str | None = None


@dataclass(frozen=True)
class CondaEnvironmentFile:
    """A conda ``environment.yml``. Python-and-pip-only files are built with uv; files with
    conda packages are solved on the client and installed on the instance with py-rattler (no
    conda, mamba or micromamba needed), then their ``pip:`` section with uv.

    ``path``: the environment file.

    Example::

        mr.Deployment.mirror_local(interpreter=mr.CondaEnvironmentFile("environment.yml"))
    """

    path: str


@dataclass(frozen=True)
class ContainerInterpreter:
    """Run the job in a container image (docker or podman on the instance); the image needs
    meadowrun-core installed.

    ``repository_name``: the image, e.g. ``"ghcr.io/me/img"`` (``name@sha256:...`` pins a
    digest). ``tag`` (default "latest"). ``username_password_secret`` (default None: no login):
    the name of a secret holding ``username:password`` for the registry.

    Example::

        mr.Deployment.mirror_local(interpreter=mr.ContainerInterpreter("ghcr.io/me/img", "v1"))
    """

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
        """Workers are reused only between jobs with an identical deployment. (Worked out once
        per object: the agent asks twice per job.)"""
        known: str | None = self.__dict__.get("_key")
        if known is None:
            raw = json.dumps(self.to_json(), sort_keys=True).encode()
            known = hashlib.sha256(raw).hexdigest()[:16]
            object.__setattr__(self, "_key", known)  # frozen: not a field, no effect on ==
        return known


@dataclass(frozen=True)
class Deployment:
    """What a job runs with: an interpreter (Python and libraries) plus code. Build one with
    a constructor: ``mirror_local`` (the default: the caller's code and environment),
    ``git_repo``, ``container_image`` or ``preinstalled_interpreter``.

    ``interpreter`` (default ``LocalCurrentInterpreter()``): the Python environment.
    ``include_sys_path`` (default True): mirror the caller's code on ``sys.path``.
    ``additional_sys_paths`` (default ()): more directories to mirror. ``globs`` (default ()):
    more files to mirror (e.g. data files). ``environment_variables`` (default {}): set for the
    job. ``git`` (default None): a repository to check out instead (``git_repo``).

    Example::

        mr.run_function(f, deployment=mr.Deployment.mirror_local(
            interpreter=mr.UvProject("."), environment_variables={"K": "V"}))
    """

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
        """Mirror the caller's code on ``sys.path`` (not the standard library or
        site-packages) and recreate its environment; only changed files are uploaded.

        ``include_sys_path`` (default True): mirror the code on ``sys.path``.
        ``additional_sys_paths`` (default ()): more directories to mirror. ``interpreter`` (default
        None: ``LocalCurrentInterpreter()``): the environment (``UvProject``,
        ``PipRequirementsFile``, ...). ``globs`` (default ()): more files to mirror, as glob
        patterns relative to the working directory. ``environment_variables`` (default None):
        set for the job.

        Example::

            mr.Deployment.mirror_local(globs=["data/*.csv"], environment_variables={"K": "V"})
        """
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
        """Use an interpreter that already exists on the instance; mirror no code.

        ``path``: its executable on the instance. ``environment_variables`` (default None): set for
        the job.

        Example::

            mr.Deployment.preinstalled_interpreter("/opt/conda/bin/python")
        """
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
        """Run code checked out from a git repository instead of the caller's code.

        ``repo_url``: the repository (https, ssh or a local path). ``branch`` (default None: the
        default branch) or ``commit`` (default None), not both. ``path_to_source`` (default None:
        the repository root): the directory inside it to put on ``sys.path``. ``interpreter``
        (default None: ``LocalCurrentInterpreter()``): the environment, paths in it relative to the
        checkout. ``environment_variables`` (default None): set for the job. ``ssh_key_secret``
        (default None): the name of a secret holding an SSH key for a private repository.

        Example::

            mr.run_function("pkg.mod.main", deployment=mr.Deployment.git_repo(
                "https://github.com/me/repo", branch="main", interpreter=mr.UvProject(".")))
        """
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
        """Run the job in a container image (docker or podman on the instance); the image needs
        meadowrun-core installed; no code is mirrored.

        ``repository_name``: the image. ``tag`` (default "latest"). ``username_password_secret``
        (default None): a secret holding ``username:password`` for the registry.
        ``environment_variables`` (default None): set for the job.

        Example::

            mr.Deployment.container_image("ghcr.io/me/img", tag="v1")
        """
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
