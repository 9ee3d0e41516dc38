"""The agent bundle: meadowrun-core and its runtime dependencies, packed for one platform.

A fresh instance from a stock image has a ``python3`` and nothing else of ours; it may have
no route to PyPI (a private subnet), and meadowrun-core at the client's exact version may not
be on PyPI at all (a developer's checkout never is). So the client ships what the agent
needs: one gzipped tar, content-addressed in the cloud's object store, holding
``site-packages/`` (meadowrun-core at the client's exact files, and the closure of its
runtime requirements at the versions the client has installed) and ``bin/`` (binaries that
come with them, e.g. uv's). The instance unpacks it into a venv (``instance_script``).

Where the instance's platform is the client's (Linux, same machine architecture), the
client's own installed files are packed: nothing is downloaded. Otherwise uv installs the
same pinned versions for the instance's platform (``--python-platform``), which needs the
client to reach its package index. Bundles are cached in ``~/.cache/meadowrun/agent-bundles``
by a fingerprint of their contents, so a client builds each one once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

log = logging.getLogger(__name__)

OWN_DISTRIBUTION = "meadowrun-core"
# The import packages our distribution provides (an editable install lists none of them).
OWN_PACKAGES = ("meadowrun_core", "meadowrun_prefect", "meadowrun_airflow", "meadowrun_dask")
# Libraries the agent needs once the client uses an integration: its jobs (Dask's scheduler
# and workers, Prefect's task engine) import them on the instance. Keyed by the module whose
# import in the client process means the integration is in use.
INTEGRATION_REQUIREMENTS: dict[str, tuple[str, frozenset[str]]] = {
    "distributed": ("dask", frozenset({"distributed", "array"})),
    "prefect": ("prefect", frozenset()),
}
KEPT_BUNDLES = 6  # per client machine: a few Python versions x architectures x integrations
Root = tuple[str, frozenset[str]]  # a distribution and the extras wanted of it
_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class AgentBundle:
    path: Path  # the .tar.gz on the client
    sha256: str
    python: str  # "3.11": the instance's Python must have this minor version
    arch: str  # "x86_64" or "arm64"

    @property
    def key(self) -> str:
        """Its name in an object store: by content."""
        return f"bootstrap/agent-{self.python}-{self.arch}-{self.sha256}.tar.gz"


def client_arch() -> str:
    return _MACHINE_ARCH.get(platform.machine().lower(), platform.machine().lower())


def agent_requirements(cloud_extra: str) -> list[Root]:
    """meadowrun-core with the cloud's extra, plus what the integrations in use need."""
    roots: list[Root] = [(OWN_DISTRIBUTION, frozenset({cloud_extra}))]
    for module, root in INTEGRATION_REQUIREMENTS.items():
        if module in sys.modules:
            roots.append(root)
    return roots


def agent_bundle(roots: Iterable[Root], arch: str, cache_dir: Path | None = None) -> AgentBundle:
    """The bundle for an instance of ``arch`` running this client's Python minor version."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    requirements = requirement_closure(list(roots), arch)
    same_platform = sys.platform == "linux" and arch == client_arch()
    fingerprint = _fingerprint(requirements, python, arch)
    cache = cache_dir or _default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{fingerprint}.tar.gz"
    digest_file = path.with_suffix(".sha256")
    if path.exists() and digest_file.exists():
        path.touch()  # recently used: kept by the pruning below
        return AgentBundle(path, digest_file.read_text().strip(), python, arch)
    log.info(
        "packing meadowrun's agent for %s Python %s (%d distributions, once)",
        arch, python, len(requirements),
    )  # fmt: skip
    fd, temp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(temp, "w:gz", compresslevel=1) as tar:
            for dist in requirements:
                if canonicalize_name(dist.metadata["Name"]) == OWN_DISTRIBUTION:
                    _add_own_distribution(tar, dist)
                elif same_platform:
                    _add_installed(tar, dist)
            if not same_platform:
                _add_for_platform(tar, requirements, python, arch)
        digest = _sha256(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    digest_file.write_text(digest + "\n")
    _prune(cache, keep=KEPT_BUNDLES)
    return AgentBundle(path, digest, python, arch)


def _prune(cache: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used bundles (~55 MB each).

    Every change to the client's code or libraries makes a new bundle; without this a
    developer's cache grows by one per edit.
    """
    bundles = sorted(cache.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in bundles[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    for leftover in cache.glob("*.tmp"):
        if time.time() - leftover.stat().st_mtime > 3600:  # a packing that was killed
            leftover.unlink(missing_ok=True)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meadowrun" / "agent-bundles"


def requirement_closure(roots: list[Root], arch: str) -> list[importlib.metadata.Distribution]:
    """The ``roots`` and everything they require on a Linux instance of ``arch``, as
    installed here. A requirement this environment lacks is an error naming it."""
    environment = {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "aarch64" if arch == "arm64" else "x86_64",
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    found: dict[str, importlib.metadata.Distribution] = {}
    done: dict[str, set[str]] = {}
    pending: list[tuple[str, set[str]]] = [(name, set(extras)) for name, extras in roots]
    while pending:
        wanted, wanted_extras = pending.pop()
        key = canonicalize_name(wanted)
        if key in done and wanted_extras <= done[key]:
            continue
        done.setdefault(key, set()).update(wanted_extras)
        try:
            dist = found.get(key) or importlib.metadata.distribution(wanted)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(
                f"{wanted} is needed by meadowrun's agent ({roots}) but not installed here; "
                "install it in this environment"
            ) from None
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not _applies(
                requirement.marker, environment, done[key]
            ):
                continue
            pending.append((requirement.name, set(requirement.extras)))
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _applies(marker: Marker, environment: dict[str, str], extras: set[str]) -> bool:
    return any(
        marker.evaluate({**environment, "extra": extra}) for extra in (sorted(extras) or [""])
    )


def _fingerprint(
    requirements: list[importlib.metadata.Distribution], python: str, arch: str
) -> str:
    digest = hashlib.sha256(f"{python} {arch}\n".encode())
    for dist in requirements:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
        if canonicalize_name(dist.metadata["Name"]) == OWN_DISTRIBUTION:
            for source, _ in _own_files():
                digest.update(f"{source}\n".encode())
                digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def _own_files() -> Iterator[tuple[Path, str]]:
    """(file, path in site-packages) of our own import packages, from wherever they are
    imported (an editable checkout included), with their compiled bytecode."""
    for package in OWN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".pyc", ".typed", ".json", ".txt"):
                yield path, f"{package}/{path.relative_to(root)}"


def _add_own_distribution(tar: tarfile.TarFile, dist: importlib.metadata.Distribution) -> None:
    for source, name in _own_files():
        tar.add(source, f"site-packages/{name}", recursive=False)
    info = f"site-packages/{_dist_info_name(dist)}"
    for name in ("METADATA", "entry_points.txt"):
        text = dist.read_text(name)
        if text is not None:
            _add_bytes(tar, f"{info}/{name}", text.encode())


def _dist_info_name(dist: importlib.metadata.Distribution) -> str:
    name = dist.metadata["Name"].replace("-", "_")
    return f"{name}-{dist.version}.dist-info"


def _add_installed(tar: tarfile.TarFile, dist: importlib.metadata.Distribution) -> None:
    """A distribution's installed files (its RECORD), with bytecode compiled next to them;
    binaries installed beside the interpreter go to ``bin/``, text scripts are left out
    (their first line names this machine's interpreter)."""
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file)))
        if not source.is_file():
            continue
        parts = file.parts
        if parts and parts[0] == "..":
            if "bin" in parts and not _is_script(source):
                tar.add(source, f"bin/{source.name}", recursive=False)
            continue
        tar.add(source, f"site-packages/{file.as_posix()}", recursive=False)
        if source.suffix == ".py":
            cached = importlib.util.cache_from_source(str(source))
            if os.path.exists(cached):
                tar.add(cached, f"site-packages/{_relative_cache(file.as_posix())}")


def _relative_cache(relative_py: str) -> str:
    folder, _, name = relative_py.rpartition("/")
    compiled = Path(importlib.util.cache_from_source(name)).as_posix()
    return f"{folder}/{compiled}" if folder else compiled


def _is_script(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"#!"


def _add_for_platform(
    tar: tarfile.TarFile,
    requirements: list[importlib.metadata.Distribution],
    python: str,
    arch: str,
) -> None:
    """Another platform's files: uv installs the same pinned versions for it."""
    from uv import find_uv_bin

    pins = [
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in requirements
        if canonicalize_name(dist.metadata["Name"]) != OWN_DISTRIBUTION
    ]
    with tempfile.TemporaryDirectory() as temp:
        target = Path(temp) / "target"
        command = [
            find_uv_bin(), "pip", "install", "--quiet", "--no-deps",
            "--target", str(target),
            "--python-platform", f"{'aarch64' if arch == 'arm64' else 'x86_64'}-manylinux_2_28",
            "--python-version", python, "--only-binary", ":all:", *pins,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not get meadowrun's dependencies for a {arch} instance: "
                f"{result.stderr.strip()[-2000:]}"
            )
        for path in sorted(target.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(target).as_posix()
            if relative.startswith("bin/"):
                if not _is_script(path):
                    tar.add(path, relative, recursive=False)
            else:
                tar.add(path, f"site-packages/{relative}", recursive=False)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
