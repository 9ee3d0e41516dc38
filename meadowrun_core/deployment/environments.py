"""Instance side: build (once) the environment an environment spec describes, and return its
python. Built environments live in ``<cache>/<hash>``, marked ready only when complete, under
a file lock, so concurrent jobs build once and the next job with the same spec pays nothing.

A built virtualenv is relocatable; when building was slow it is also stored (a signed tar in
the object store, found by the spec's hash through a signed reference), so a fresh instance
unpacks it instead of resolving and downloading again. ``MEADOWRUN_ENV_ARCHIVE`` = ``auto``
(store builds slower than ``MEADOWRUN_ENV_ARCHIVE_SECONDS``, default 10), ``always`` or
``never``.

Conda environments (``kind`` conda) are installed from an exact lock with py-rattler, no conda
binary needed (``conda.py``); their packages are cached per instance in ``<cache>/.conda-pkgs``.
A conda prefix is not relocatable, so they are not stored in the object store.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meadowrun_core.deployment import conda
from meadowrun_core.deployment.locks import file_lock
from meadowrun_core.deployment.process import (
    DeploymentError,
    extract_tar,
    find_uv,
    run_tool,
    uv_env,
)
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

log = logging.getLogger(__name__)

_READY = ".meadowrun-ready"
_MAX_ARCHIVE_BYTES = 2 * 2**30


def ensure_environment(
    spec: Mapping[str, Any],
    store: ObjectStore,
    signer: Signer,
    cache_dir: Path,
    refs_dir: Path | None = None,
) -> str:
    """The python of the environment ``spec`` describes, built here if not built before."""
    kind = spec["kind"]
    if kind in ("current", "preinstalled"):
        python = str(spec["python"])
        if not os.access(python, os.X_OK):
            raise DeploymentError(
                f"the interpreter {python!r} does not exist on this instance (or is not executable)"
            )
        return python
    if kind not in ("venv", "conda"):
        raise DeploymentError(f"unknown environment kind {kind!r}")
    target = cache_dir / str(spec["hash"])
    python = str(target / "bin" / "python")
    if (target / _READY).exists():
        return python
    with file_lock(cache_dir / f".{spec['hash']}.lock"):
        if (target / _READY).exists():
            return python
        shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
        if kind == "venv" and refs_dir and _unpack(spec, store, signer, target, refs_dir):
            return python
        started = time.monotonic()
        try:
            if kind == "venv":
                _build_venv(spec, store, signer, target)
            else:
                _build_conda(spec, store, signer, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        (target / _READY).touch()
        seconds = time.monotonic() - started
        log.info("built environment %s in %.1f s", spec["hash"], seconds)
        if kind == "venv" and refs_dir is not None and _should_archive(seconds):
            _archive(spec, store, signer, target, refs_dir)
    return python


def _build_venv(spec: Mapping[str, Any], store: ObjectStore, signer: Signer, target: Path) -> None:
    version = str(spec["python_version"])
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    uv = find_uv()
    run_tool(
        [
            uv,
            "venv",
            "--relocatable",
            "--quiet",
            "--no-project",
            "--python",
            sys.executable if version == mine else version,
            str(target),
        ],
        f"Python {version} is not available on this instance",
        env=uv_env(),
    )
    requirements = target.parent / f".{spec['hash']}.requirements.txt"
    requirements.write_bytes(signer.verify(store.get(str(spec["requirements"]))))
    try:
        run_tool(
            [
                uv,
                "pip",
                "sync",
                "--quiet",
                "--python",
                str(target / "bin" / "python"),
                str(requirements),
            ],
            f"building the environment ({spec.get('source', 'pip')}, Python {version}) failed",
            env=uv_env(),
        )
    finally:
        requirements.unlink(missing_ok=True)


def _build_conda(spec: Mapping[str, Any], store: ObjectStore, signer: Signer, target: Path) -> None:
    """Install the locked conda packages with py-rattler (no conda binary), then the pip
    packages with uv into the environment's python (as ``conda env create`` runs pip)."""
    lock = signer.verify(store.get(str(spec["lock"]))).decode()
    try:
        count = conda.install_lock(lock, target, target.parent / ".conda-pkgs")
    except Exception as exc:  # rattler's errors: a download, a checksum, a link that failed
        raise DeploymentError(f"installing the conda environment failed: {exc}") from None
    python = target / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise DeploymentError("the conda environment has no bin/python; add python to it")
    log.info("installed %d conda packages into %s", count, target)
    if not spec.get("pip"):
        return
    requirements = target.parent / f".{spec['hash']}.pip.txt"
    requirements.write_bytes(signer.verify(store.get(str(spec["pip"]))))
    try:
        run_tool(
            [
                find_uv(),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(python),
                "-r",
                str(requirements),
            ],
            "installing the pip packages of the conda environment failed",
            env=uv_env(),
        )
    finally:
        requirements.unlink(missing_ok=True)


# --- archives in the object store -------------------------------------------------------
def _should_archive(build_seconds: float) -> bool:
    mode = os.environ.get("MEADOWRUN_ENV_ARCHIVE", "auto")
    if mode == "always":
        return True
    if mode == "never":
        return False
    threshold = float(os.environ.get("MEADOWRUN_ENV_ARCHIVE_SECONDS", "10"))
    return build_seconds >= threshold


def _ref_path(refs_dir: Path, spec: Mapping[str, Any]) -> Path:
    return refs_dir / str(spec["hash"])


def _archive(
    spec: Mapping[str, Any], store: ObjectStore, signer: Signer, target: Path, refs_dir: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(target, arcname=".")
    if buffer.tell() > _MAX_ARCHIVE_BYTES:
        return
    key = store.put(signer.sign(buffer.getvalue()))
    refs_dir.mkdir(parents=True, exist_ok=True)
    ref = _ref_path(refs_dir, spec)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_bytes(signer.sign(f"{spec['hash']}:{key}".encode()))
    os.replace(tmp, ref)
    log.info("stored environment %s in the object store (%d bytes)", spec["hash"], buffer.tell())


def _unpack(
    spec: Mapping[str, Any], store: ObjectStore, signer: Signer, target: Path, refs_dir: Path
) -> bool:
    """Unpack a stored build of this spec; False if there is none or it does not fit here."""
    try:
        name, _, key = signer.verify(_ref_path(refs_dir, spec).read_bytes()).decode().partition(":")
        if name != spec["hash"]:
            return False
        data = signer.verify(store.get(key))
    except (OSError, KeyError, UnauthenticatedDataError):
        return False
    tmp = target.with_name(f".{target.name}.{os.getpid()}.unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        extract_tar(tar, tmp, "tar")
    if not _base_python_exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    os.rename(tmp, target)
    log.info("unpacked environment %s from the object store", spec["hash"])
    return True


def _base_python_exists(env: Path) -> bool:
    """A virtualenv runs only where its base interpreter (pyvenv.cfg ``home``) exists."""
    try:
        lines = (env / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).is_dir() and (env / "bin" / "python").exists()
    return False
