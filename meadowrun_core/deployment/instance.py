"""Instance side: everything a worker needs before it starts (a git checkout, a built
environment or a container launcher), prepared once per deployment and remembered, so the next
job with the same deployment pays a dictionary lookup."""

from __future__ import annotations

import asyncio
import os
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle

from meadowrun_core.deployment import containers
from meadowrun_core.deployment.environments import ensure_environment
from meadowrun_core.deployment.git import ensure_checkout, git_environment, source_dir
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.deployment.runtime import worker_runtime_env
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretReader
from meadowrun_core.serialization import Signer


@dataclass(frozen=True)
class InstanceDeployment:
    """``python`` to start workers with, their ``environment`` (the deployment's variables plus
    what the interpreter and code need), and ``workdir`` (a git checkout) for commands."""

    python: str
    environment: dict[str, str]
    workdir: str | None = None


@dataclass
class InstancePreparer:
    home: Path
    instance_dir: Path
    store: ObjectStore
    signer: Signer
    secrets: SecretReader  # the instance's cloud's secret store
    _ready: dict[str, InstanceDeployment] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def prepare(self, prepared: PreparedDeployment) -> InstanceDeployment:
        """Raises DeploymentError with a clear message when it cannot be prepared."""
        key = prepared.key()
        cached = self._ready.get(key)
        if cached is not None:
            return cached
        if prepared.git is None and (
            prepared.interpreter is None or prepared.interpreter["kind"] == "preinstalled"
        ):
            if prepared.interpreter is not None and not os.access(prepared.python, os.X_OK):
                raise DeploymentError(
                    f"the interpreter {prepared.python!r} does not exist on this instance (or "
                    "is not executable)"
                )
            ready: InstanceDeployment = InstanceDeployment(
                prepared.python, dict(prepared.environment)
            )
        else:
            async with self._locks.setdefault(key, asyncio.Lock()):
                cached = self._ready.get(key)
                if cached is not None:
                    return cached
                ready = await asyncio.to_thread(self._prepare, prepared)
        self._ready[key] = ready
        return ready

    def _prepare(self, prepared: PreparedDeployment) -> InstanceDeployment:
        secrets = self.secrets
        env = dict(prepared.environment)
        python = prepared.python
        pythonpath: list[str] = []
        workdir: str | None = None
        if prepared.git is not None:
            git = prepared.git
            with git_environment(
                git.get("ssh_key_secret"), secrets, self.instance_dir / "git" / "known_hosts"
            ) as (git_env, hide):
                checkout = ensure_checkout(
                    git["repo_url"], git["commit"], self.instance_dir / "git", git_env, hide
                )
            workdir = str(checkout)
            pythonpath.append(str(source_dir(checkout, git.get("path_to_source"))))
        spec = prepared.interpreter
        if spec is not None and spec["kind"] == "container":
            engine = containers.require_engine(spec["image"])
            containers.ensure_image(engine, spec["image"], spec.get("credentials_secret"), secrets)
            directory = self.instance_dir / "containers" / spec["hash"]
            python = containers.write_launcher(
                {
                    "engine": engine.name,
                    "engine_path": engine.path,
                    "image": spec["image"],
                    "run_dir": str(directory),
                    "mounts": [workdir] if workdir else [],
                },
                directory,
            )
            names = [*prepared.environment, *(["PYTHONPATH"] if pythonpath else [])]
            env["MEADOWRUN_CONTAINER_ENV"] = ",".join(names)
        elif spec is not None:
            python = ensure_environment(
                spec, self.store, self.signer, self.instance_dir / "envs", self.home / "env-refs"
            )
            if spec["kind"] in ("venv", "conda"):
                version = spec.get("python_version") or _python_version(python)
                runtime = worker_runtime_env(version, self.instance_dir / "runtime")
                pythonpath.insert(0, runtime.pop("PYTHONPATH"))
                env.update(runtime)
                env_dir = str(Path(python).parent.parent)
                env["CONDA_PREFIX" if spec["kind"] == "conda" else "VIRTUAL_ENV"] = env_dir
                env["PATH"] = f"{env_dir}/bin{os.pathsep}{os.environ.get('PATH', '')}"
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        return InstanceDeployment(python, env, workdir)


def _python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


_preparers: dict[str, InstancePreparer] = {}


def preparer_for(
    home: Path, instance_dir: Path, store: ObjectStore, signer: Signer, secrets: SecretReader
) -> InstancePreparer:
    """One preparer per instance (the agent process), created on first use."""
    key = str(instance_dir)
    if key not in _preparers:
        _preparers[key] = InstancePreparer(home, instance_dir, store, signer, secrets)
    return _preparers[key]


def failure_payload(exc: BaseException) -> bytes:
    """What the worker sends for a failure: (exception, traceback text), pickled."""
    text = "".join(traceback.format_exception_only(exc))
    data: bytes = cloudpickle.dumps((exc, text))
    return data
