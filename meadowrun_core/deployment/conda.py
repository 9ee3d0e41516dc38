"""Conda environments without a conda binary: solved and installed with py-rattler.

The client turns an ``environment.yml`` (or the caller's own conda environment, read from its
``conda-meta/`` records) into an explicit *lock*: every package's URL, checksum and metadata
for the instance's platform, in rattler's lock-file format. A solve that fails (a package that
does not exist, a channel that cannot be reached, conflicting versions) fails here, before
anything is launched. The instance installs exactly the locked packages with
``rattler.install`` (no resolution there) into ``<cache>/<hash>``; packages are downloaded
once per instance into a package cache beside the environments. The ``pip:`` section (and the
pip-installed distributions of a mirrored conda environment) is installed after that with uv
into the environment's python, as ``conda env create`` runs pip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meadowrun_core.exceptions import BadInputError

if TYPE_CHECKING:
    import rattler

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_ENVIRONMENT = "default"
# conda's own default channel, when an environment.yml names none
DEFAULT_CHANNELS = ("conda-forge",)
# ``defaults`` is conda's name for Anaconda's channels; rattler has no such alias
_DEFAULTS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
_SUBDIRS = {"x86_64": "linux-64", "amd64": "linux-64", "aarch64": "linux-aarch64"}
_SUBDIRS["arm64"] = "linux-aarch64"


@dataclass(frozen=True)
class CondaLock:
    """An exact conda environment: the lock text (rattler's format), the pip requirements
    to add on top, and the python minor version the lock installs (None: no python)."""

    lock: str
    pip: str
    python_version: str | None


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one of rattler's coroutines to completion, also from inside an event loop (an
    async caller): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def target_subdir() -> str:
    """The conda platform of the instances (Linux, this machine's architecture)."""
    machine = platform.machine().lower()
    return _SUBDIRS.get(machine, f"linux-{machine}")


def channel_urls(channels: list[str], base_dir: Path | None = None) -> list[str]:
    """Channel names and URLs as rattler takes them; local directories (absolute, or relative
    to ``base_dir``: the environment file's directory) as ``file://`` URLs."""
    urls: list[str] = []
    for channel in channels or DEFAULT_CHANNELS:
        if channel == "defaults":
            urls.extend(_DEFAULTS)
        elif channel.startswith("/"):
            urls.append(Path(channel).as_uri())
        elif channel.startswith(("./", "../")):
            urls.append(((base_dir or Path.cwd()) / channel).resolve().as_uri())
        else:
            urls.append(channel)
    return urls


def _virtual_packages(subdir: str) -> list[rattler.GenericVirtualPackage | rattler.VirtualPackage]:
    import rattler

    if sys.platform == "linux" and subdir == target_subdir():
        return list(rattler.VirtualPackage.detect())
    # a client on another OS solving for Linux instances: what a current Linux image offers
    arch = "aarch64" if subdir.endswith("aarch64") else "x86_64"
    return [
        rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(version), rattler.BuildString(build)
        )
        for name, version, build in (
            ("__unix", "0", "0"),
            ("__linux", "5.10", "0"),
            ("__glibc", "2.28", "0"),
            ("__archspec", "1", arch),
        )
    ]


def solve(specs: list[str], urls: list[str], where: str) -> list[rattler.RepoDataRecord]:
    """Solve ``specs`` against the channels ``urls`` for the instances' platform
    (BadInputError when it cannot be solved)."""
    import rattler

    subdir = target_subdir()
    virtual = _virtual_packages(subdir)
    try:
        records: list[rattler.RepoDataRecord] = _run(
            lambda: rattler.solve(
                sources=urls,
                specs=specs,
                platforms=[rattler.Subdir(subdir), rattler.Subdir("noarch")],
                virtual_packages=virtual,
            )
        )
    except Exception as exc:  # rattler raises its own exception types for every failure
        raise BadInputError(
            f"solving the conda packages of {where} ({', '.join(specs)}) against "
            f"{', '.join(urls)} failed: {exc}"
        ) from None
    log.info("solved %s: %d conda packages", where, len(records))
    return records


def write_lock(records: list[rattler.RepoDataRecord], channels: list[str]) -> str:
    import rattler

    subdir = target_subdir()
    lock_platform = rattler.LockPlatform(subdir)
    lock = rattler.LockFile([lock_platform])
    lock.set_channels(LOCK_ENVIRONMENT, [rattler.LockChannel(url) for url in channels])
    for record in sorted(records, key=lambda r: str(r.url)):
        lock.add_conda_package(LOCK_ENVIRONMENT, lock_platform, record)
    with tempfile.TemporaryDirectory(prefix="meadowrun-conda-") as tmp:
        path = Path(tmp) / "conda.lock"
        lock.to_path(path)
        return path.read_text()


def read_lock(text: str) -> list[rattler.RepoDataRecord]:
    """The locked records for this instance's platform."""
    import rattler

    with tempfile.TemporaryDirectory(prefix="meadowrun-conda-") as tmp:
        path = Path(tmp) / "conda.lock"
        path.write_text(text)
        lock = rattler.LockFile.from_path(path)
    environment = lock.environment(LOCK_ENVIRONMENT)
    if environment is None:
        raise ValueError("the conda lock has no environment")
    by_platform = environment.conda_repodata_records()
    subdir = target_subdir()
    if subdir not in by_platform:
        locked = ", ".join(by_platform) or "none"
        raise ValueError(f"the conda lock has no packages for {subdir} (it has: {locked})")
    return list(by_platform[subdir])


def _python_version(records: list[rattler.RepoDataRecord]) -> str | None:
    for record in records:
        if record.name.normalized == "python":
            parts = str(record.version).split(".")
            return ".".join(parts[:2])
    return None


def lock_environment(
    specs: list[str], channels: list[str], pip: list[str], where: str, base_dir: Path
) -> CondaLock:
    """Client: an environment.yml's conda dependencies solved to an exact lock."""
    urls = channel_urls(channels, base_dir)
    records = solve(specs, urls, where)
    return CondaLock(
        write_lock(records, urls),
        "\n".join(pip) + "\n" if pip else "",
        _python_version(records),
    )


# --- the caller's own conda environment -----------------------------------------------------
def export_prefix(prefix: Path) -> CondaLock:
    """Client: the conda environment at ``prefix`` as a lock, from its ``conda-meta/`` records
    (no conda needed). On Linux the records are locked as they are (the exact builds); on
    another OS the packages the user asked for are solved again for Linux at their installed
    versions. Distributions pip installed into the environment become pinned requirements."""
    import rattler

    meta = prefix / "conda-meta"
    records = [rattler.PrefixRecord.from_path(path) for path in sorted(meta.glob("*.json"))]
    if not records:
        raise BadInputError(f"the conda environment {prefix} has no packages in {meta}")
    channels = sorted({str(r.channel).rstrip("/") for r in records if r.channel})
    where = f"the conda environment {prefix}"
    subdirs = {r.subdir for r in records} - {"noarch"}
    if subdirs <= {target_subdir()}:
        locked: list[rattler.RepoDataRecord] = list(records)
    else:
        requested = [spec for r in records for spec in _requested(r)]
        if not requested:
            raise BadInputError(
                f"{where} is for {', '.join(sorted(subdirs))}, and its records do not say which "
                "packages were asked for, so it cannot be rebuilt for Linux instances; pass "
                "CondaEnvironmentFile(path) instead"
            )
        locked = solve(requested, channels, where)
    owned = {str(path) for r in records for path in r.files}
    pip = sorted(_pip_installed(prefix, owned))
    return CondaLock(
        write_lock(locked, channels),
        "\n".join(pip) + "\n" if pip else "",
        _python_version(locked),
    )


def _requested(record: rattler.PrefixRecord) -> list[str]:
    """The record pinned at its version, if the user asked for it (not a dependency)."""
    if not (list(record.requested_specs) or record.requested_spec):
        return []
    return [f"{record.name.normalized} =={record.version}"]


def _site_packages(prefix: Path) -> Iterator[Path]:
    yield from sorted(prefix.glob("lib/python3*/site-packages"))


def _pip_installed(prefix: Path, conda_files: set[str]) -> Iterator[str]:
    """Distributions in the environment that no conda package installed, pinned; the user's
    editable and local-path installs are left out (their code is mirrored)."""
    for site in _site_packages(prefix):
        for info in sorted(site.glob("*.dist-info")):
            if os.path.relpath(info / "METADATA", prefix) in conda_files:
                continue
            dist = importlib.metadata.PathDistribution(info)
            if (dist.read_text("INSTALLER") or "").strip() == "conda":
                continue
            direct = dist.read_text("direct_url.json") or ""
            if '"file://' in direct or '"editable"' in direct:
                continue
            yield f"{dist.metadata['Name']}=={dist.version}"


# --- instance -------------------------------------------------------------------------------
def install_lock(lock_text: str, target: Path, package_cache: Path) -> int:
    """Instance: install exactly the locked packages into ``target``; the number installed."""
    import rattler

    records = read_lock(lock_text)
    package_cache.mkdir(parents=True, exist_ok=True)
    _run(lambda: rattler.install(records, target, cache_dir=package_cache, show_progress=False))
    return len(records)
