"""Client side: turn an interpreter spec into a JSON-safe *environment spec* the instance can
build, with every check that can fail done here, before anything is launched.

Environment specs (``kind``):
- ``current``: the caller's interpreter, used as it is (local cloud only)
- ``preinstalled``: an interpreter path on the instance
- ``venv``: pinned requirements (a signed blob) plus a Python minor version, built with uv.
  Requirements files are resolved here (``uv pip compile``), uv projects exported from
  ``uv.lock``, poetry projects read from ``poetry.lock``, pip-only conda files compiled, and
  the caller's environment detected. ``hash`` names the built environment on the instance.
- ``conda``: an ``environment.yml`` with conda packages, or the caller's conda environment:
  solved here with py-rattler to an exact lock (a signed blob), installed on the instance with
  py-rattler (no conda binary), plus the pip packages installed with uv
- ``container``: an image run with docker or podman
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meadowrun_core.deployment import conda, containers
from meadowrun_core.deployment.detect import (
    DetectedEnvironment,
    detect_local_environment,
    python_minor,
)
from meadowrun_core.deployment.lockfiles import parse_environment_yml, poetry_lock_to_requirements
from meadowrun_core.deployment.process import find_uv, run_tool, uv_env
from meadowrun_core.deployment.spec import (
    CondaEnvironmentFile,
    ContainerInterpreter,
    Interpreter,
    LocalCurrentInterpreter,
    PipRequirementsFile,
    PoetryProjectPath,
    PreinstalledInterpreter,
    UvProject,
)
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.serialization import Signer

EnvSpec = dict[str, Any]

_memo: dict[tuple[Any, ...], Any] = {}
_memo_lock = threading.Lock()


class Resolver:
    """Resolves interpreter specs; ``local_instance`` says the instance is this machine, so its
    interpreters and tools can be checked here."""

    def __init__(
        self, store: ObjectStore, signer: Signer, cache_dir: Path, local_instance: bool
    ) -> None:
        self.store = store
        self.signer = signer
        self.cache_dir = cache_dir
        self.local_instance = local_instance

    def resolve(self, interpreter: Interpreter, base_dir: Path) -> EnvSpec:
        """``base_dir``: where relative spec paths point (the caller's cwd, or a checkout)."""
        if isinstance(interpreter, LocalCurrentInterpreter):
            if self.local_instance and not interpreter.recreate:
                return {"kind": "current", "python": sys.executable}
            return self._detected(_memoized(("detect", os.getcwd()), detect_local_environment))
        if isinstance(interpreter, PreinstalledInterpreter):
            if self.local_instance and not os.access(interpreter.path, os.X_OK):
                raise BadInputError(
                    f"the preinstalled interpreter {interpreter.path!r} does not exist on the "
                    "instance (or is not executable)"
                )
            return {"kind": "preinstalled", "python": interpreter.path}
        if isinstance(interpreter, PipRequirementsFile):
            path = _existing(base_dir, interpreter.path, "requirements file")
            version = interpreter.python_version or python_minor()
            return self._venv(
                self._compile(path.read_text(), version, path.parent, str(path)), version, "pip"
            )
        if isinstance(interpreter, UvProject):
            project = _existing(base_dir, interpreter.path, "uv project directory")
            return self._uv_project(project, interpreter.python_version)
        if isinstance(interpreter, PoetryProjectPath):
            project = _existing(base_dir, interpreter.path, "poetry project directory")
            return self._poetry_project(project, interpreter.python_version)
        if isinstance(interpreter, CondaEnvironmentFile):
            path = _existing(base_dir, interpreter.path, "conda environment file")
            return self._conda(path.read_text(), str(path), path.parent)
        if isinstance(interpreter, ContainerInterpreter):
            return self._container(interpreter)
        raise BadInputError(f"unknown interpreter {interpreter!r}")

    # --- kinds --------------------------------------------------------------------------
    def _detected(self, detected: DetectedEnvironment) -> EnvSpec:
        if detected.kind == "uv":
            return self._uv_project(Path(detected.path), detected.python_version)
        if detected.kind == "poetry":
            return self._poetry_project(Path(detected.path), detected.python_version)
        if detected.kind == "conda":
            lock = conda.CondaLock(detected.text, detected.pip, detected.python_version)
            return self._conda_lock(lock, f"the conda environment {detected.path}")
        requirements = self._compile(
            detected.text, detected.python_version, Path.cwd(), "the current environment"
        )
        return self._venv(requirements, detected.python_version, "current")

    def _uv_project(self, project: Path, python_version: str | None) -> EnvSpec:
        if not (project / "pyproject.toml").is_file():
            raise BadInputError(f"{project} has no pyproject.toml, so it is not a uv project")
        lock = project / "uv.lock"
        if not lock.is_file():
            raise BadInputError(
                f"{project} has no uv.lock; UvProject needs a lock file for an exact "
                "environment: run `uv lock` there"
            )
        version = python_version or _python_version_file(project) or python_minor()
        inputs = ((project / "pyproject.toml").read_bytes(), lock.read_bytes())
        requirements = _memoized(
            ("uv-export", hashlib.sha256(b"\0".join(inputs)).hexdigest()),
            lambda: run_tool(
                [
                    find_uv(),
                    "export",
                    "--frozen",
                    "--format",
                    "requirements.txt",
                    "--no-emit-project",
                    "--no-emit-workspace",
                    "--no-emit-local",
                    "--no-header",
                    "--quiet",
                    "--project",
                    str(project),
                ],
                f"reading {lock} (uv export)",
                env=uv_env(),
                error=BadInputError,
            ),
        )
        self._check_python(version)
        return self._venv(requirements, version, "uv")

    def _poetry_project(self, project: Path, python_version: str | None) -> EnvSpec:
        lock = project / "poetry.lock"
        if not lock.is_file():
            raise BadInputError(
                f"{project} has no poetry.lock; PoetryProjectPath needs a lock file for an "
                "exact environment: run `poetry lock` there"
            )
        version = python_version or _python_version_file(project) or python_minor()
        requirements = poetry_lock_to_requirements(lock.read_text(), str(lock))
        self._check_python(version)
        return self._venv(requirements, version, "poetry")

    def _conda(self, text: str, where: str, base_dir: Path) -> EnvSpec:
        env = parse_environment_yml(text, where)
        version = env.python_version or python_minor()
        if not env.conda_only:  # python and pip packages only: uv builds it
            requirements = self._compile("\n".join(env.pip) + "\n", version, base_dir, where)
            return self._venv(requirements, version, "conda-pip")
        digest = _digest("conda-solve", conda.target_subdir(), str(base_dir), text)
        cached = self.cache_dir / "conda-locks" / f"{digest}.json"
        try:
            lock = conda.CondaLock(**json.loads(cached.read_text()))
        except FileNotFoundError:
            lock = conda.lock_environment(env.conda, env.channels, env.pip, where, base_dir)
            _write_atomic(cached, json.dumps(lock.__dict__))
        return self._conda_lock(lock, where)

    def _conda_lock(self, lock: conda.CondaLock, where: str) -> EnvSpec:
        if lock.python_version is None:
            raise BadInputError(
                f"{where} installs no python; a job needs one: add python to its dependencies"
            )
        return {
            "kind": "conda",
            "lock": self.store.put(self.signer.sign(lock.lock.encode())),
            "pip": self.store.put(self.signer.sign(lock.pip.encode())) if lock.pip else "",
            "python_version": lock.python_version,
            "hash": _digest("conda", lock.lock, lock.pip),
        }

    def _container(self, interpreter: ContainerInterpreter) -> EnvSpec:
        if self.local_instance:
            containers.require_engine(interpreter.image, BadInputError)
        return {
            "kind": "container",
            "image": interpreter.image,
            "credentials_secret": interpreter.username_password_secret,
            "hash": _digest("container", interpreter.image),
        }

    # --- helpers ------------------------------------------------------------------------
    def _venv(self, requirements: str, version: str, source: str) -> EnvSpec:
        key = self.store.put(self.signer.sign(requirements.encode()))
        return {
            "kind": "venv",
            "python_version": version,
            "requirements": key,
            "source": source,
            "hash": _digest("venv", version, requirements),
        }

    def _check_python(self, version: str) -> None:
        """On the local cloud, fail now if the instance (this machine) lacks the version."""
        if not self.local_instance or version == python_minor():
            return
        _memoized(
            ("python", version),
            lambda: run_tool(
                [find_uv(), "python", "find", version],
                f"Python {version} is not available on the instance",
                env=uv_env(),
                error=BadInputError,
            ),
        )

    def _compile(self, text: str, version: str, cwd: Path, where: str) -> str:
        """Pin every requirement (and its dependencies) once; later calls read the result, so
        an unchanged file costs nothing and the environment's hash stays the same."""
        self._check_python(version)
        digest = _digest("compile", version, str(cwd), text)
        cached = self.cache_dir / "resolved" / f"{digest}.txt"
        try:
            return cached.read_text()
        except FileNotFoundError:
            pass
        pinned = run_tool(
            [
                find_uv(),
                "pip",
                "compile",
                "-",
                "--python-version",
                version,
                "--no-header",
                "--no-annotate",
                "--quiet",
            ],
            f"resolving {where} for Python {version} failed (a package that does not exist, "
            "a version that cannot be satisfied, or a requirement that fails to build)",
            env=uv_env(),
            cwd=cwd,
            stdin=text.encode(),
            error=BadInputError,
        )
        _write_atomic(cached, pinned)
        return pinned


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _digest(*parts: str) -> str:
    raw = json.dumps([*parts, platform.machine(), sys.platform]).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def _memoized(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    value = compute()
    with _memo_lock:
        _memo[key] = value
    return value


def _existing(base_dir: Path, path: str, what: str) -> Path:
    full = (base_dir / path).resolve()
    if not full.exists():
        raise BadInputError(f"the {what} {path!r} does not exist (looked at {full})")
    return full


def _python_version_file(project: Path) -> str | None:
    try:
        line = (project / ".python-version").read_text().split()[0]
    except (OSError, IndexError):
        return None
    parts = line.split(".")
    return f"{parts[0]}.{parts[1]}" if len(parts) >= 2 and parts[0].isdigit() else None
