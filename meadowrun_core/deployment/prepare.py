"""Client side: turn a ``Deployment`` into a ``PreparedDeployment`` (JSON-safe, everything
uploaded), with every check that can be made here made before anything is launched."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from meadowrun_core.deployment.code_mirror import CodeMirror
from meadowrun_core.deployment.code_roots import code_roots
from meadowrun_core.deployment.git import (
    ensure_checkout,
    git_environment,
    git_spec,
    resolve_commit,
)
from meadowrun_core.deployment.interpreters import Resolver
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.deployment.spec import (
    ContainerInterpreter,
    Deployment,
    LocalCurrentInterpreter,
    PreinstalledInterpreter,
    PreparedDeployment,
)
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretReader
from meadowrun_core.serialization import Signer


def prepare(
    deployment: Deployment,
    *,
    home: Path,
    store: ObjectStore,
    signer: Signer,
    mirror: CodeMirror | None,
    secrets: SecretReader,
    local_instance: bool = True,
) -> PreparedDeployment:
    """``secrets`` reads the secret store of the cloud the job goes to (deployments name
    their git key or registry credentials there)."""
    cache = _client_cache(home)
    resolver = Resolver(store, signer, cache, local_instance)
    base_dir = _as_path(os.getcwd())
    git = None
    if deployment.git is not None:
        git, checkout = _prepare_git(deployment, cache, secrets)
        if checkout is not None:
            base_dir = checkout
    spec = resolver.resolve(deployment.interpreter, base_dir)
    manifest = None
    if mirror is not None and (deployment.include_sys_path or deployment.additional_sys_paths):
        roots = code_roots(deployment.include_sys_path, deployment.additional_sys_paths)
        manifest = mirror.upload(roots, deployment.globs)
    if spec["kind"] == "current":
        python, interpreter = str(spec["python"]), None
    else:
        python, interpreter = str(spec.get("python", "")), spec
    return PreparedDeployment(
        python=python or sys.executable,
        code_manifest=manifest,
        environment=dict(deployment.environment_variables),
        interpreter=interpreter,
        git=git,
    )


# (paths made once: building a Path was a twentieth of a warm call's preparation)
@functools.lru_cache(maxsize=16)
def _client_cache(home: Path) -> Path:
    return home / "client-cache"


@functools.lru_cache(maxsize=64)
def _as_path(directory: str) -> Path:
    return Path(directory)


def _prepare_git(
    deployment: Deployment, cache: Path, secrets: SecretReader
) -> tuple[dict[str, object], Path | None]:
    """Resolve the commit here (a missing branch or commit fails before launch); fetch it here
    too when the interpreter's spec files must be read from the repository."""
    assert deployment.git is not None
    spec = deployment.git
    interpreter = deployment.interpreter
    reads_files = not isinstance(
        interpreter, LocalCurrentInterpreter | PreinstalledInterpreter | ContainerInterpreter
    )
    try:
        with git_environment(spec.get("ssh_key_secret"), secrets, cache / "known_hosts") as (
            env,
            hide,
        ):
            commit = resolve_commit(
                spec["repo_url"], spec.get("branch"), spec.get("commit"), env, BadInputError
            )
            checkout = None
            if reads_files or spec.get("commit"):
                checkout = ensure_checkout(spec["repo_url"], commit, cache / "git", env, hide)
    except DeploymentError as exc:
        raise BadInputError(str(exc)) from None
    return git_spec(spec, commit), checkout
