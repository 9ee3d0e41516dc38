"""Conda environments without a conda binary (issue 16, item 7): solved on the client and
installed on the instance with py-rattler, offline, from a local channel this test builds.

The channel holds packages assembled by hand in the conda package format (``.tar.bz2`` with
``info/index.json`` and ``info/paths.json``), indexed with ``rattler.index``:
- ``python``: no real Python can be downloaded here, so the test's ``python`` package is a
  small venv-style shim (``bin/python`` a symlink to this machine's interpreter, plus
  ``pyvenv.cfg``), so the prefix has its own ``site-packages``. A real user gets python from
  conda-forge; everything else below runs the real path;
- ``mrtestpkg``: a ``noarch: python`` package (a module installed into site-packages);
- ``mrhello``: a ``noarch: generic`` package (a script in ``bin/`` and a data file).
Real jobs run on the real local cloud; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import conda_helpers
import deployment_helpers
import pytest
import rattler

import meadowrun_core as mr
from meadowrun_core.deployment.conda import export_prefix, read_lock
from meadowrun_core.deployment.detect import detect_local_environment
from meadowrun_core.deployment.environments import ensure_environment
from meadowrun_core.deployment.interpreters import Resolver
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.serialization import Signer

REPO = Path(__file__).resolve().parent.parent
SIX = "six==1.17.0"
VERSION = ".".join(map(str, sys.version_info[:3]))
MINOR = ".".join(map(str, sys.version_info[:2]))


# --- a local channel, built here --------------------------------------------------------------
def _package(
    channel: Path,
    subdir: str,
    name: str,
    version: str,
    build: str,
    files: dict[str, bytes],
    *,
    noarch: str | None = None,
    depends: tuple[str, ...] = (),
    links: dict[str, str] | None = None,
) -> None:
    """One conda package (``.tar.bz2`` format) with its ``info/`` metadata."""
    index: dict[str, object] = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": list(depends),
        "subdir": subdir,
        "license": "MIT",
        "timestamp": 1700000000000,
    }
    if noarch:
        index["noarch"] = noarch
    else:
        index.update(platform="linux", arch=os.uname().machine)
    paths: list[dict[str, object]] = []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:

        def add(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for path, data in files.items():
            add(path, data, 0o755 if path.startswith("bin/") else 0o644)
            digest = hashlib.sha256(data).hexdigest()
            paths.append(
                {
                    "_path": path,
                    "path_type": "hardlink",
                    "sha256": digest,
                    "size_in_bytes": len(data),
                }
            )
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
            paths.append({"_path": path, "path_type": "softlink"})
        add("info/index.json", json.dumps(index).encode())
        add("info/paths.json", json.dumps({"paths": paths, "paths_version": 1}).encode())
        add("info/files", ("\n".join([*files, *(links or {})]) + "\n").encode())
        if noarch == "python":
            link = {"noarch": {"type": "python"}, "package_metadata_version": 1}
            add("info/link.json", json.dumps(link).encode())
    (channel / subdir).mkdir(parents=True, exist_ok=True)
    (channel / subdir / f"{name}-{version}-{build}.tar.bz2").write_bytes(buffer.getvalue())


def _channel(root: Path) -> Path:
    channel = root / "channel"
    linux = f"linux-{'64' if os.uname().machine == 'x86_64' else os.uname().machine}"
    base = os.path.realpath(sys.executable)
    _package(
        channel,
        linux,
        "python",
        VERSION,
        "0_meadowrun_test",
        {
            "pyvenv.cfg": f"home = {os.path.dirname(base)}\nversion = {VERSION}\n".encode(),
            f"lib/python{MINOR}/site-packages/.keep": b"",
        },
        links={"bin/python": base, "bin/python3": "python"},
    )
    for version in ("1.0.0", "1.2.3"):
        _package(
            channel,
            "noarch",
            "mrtestpkg",
            version,
            "pyh_0",
            {"site-packages/mrtestpkg/__init__.py": f"__version__ = {version!r}\n".encode()},
            noarch="python",
            depends=("python >=3.8",),
        )
    _package(
        channel,
        "noarch",
        "mrhello",
        "0.1",
        "0",
        {
            "bin/mr-hello": b'#!/bin/sh\necho "hello from conda" > "$1"\n',
            "share/mrhello/data.txt": b"conda data\n",
        },
        noarch="generic",
    )
    asyncio.run(rattler.index.index_fs(channel, write_zst=False, write_shards=False))
    assert (channel / "noarch" / "repodata.json").is_file()
    return channel


def _env_file(tmp_path: Path, channel: Path, dependencies: str) -> Path:
    env_file = tmp_path / "environment.yml"
    env_file.write_text(f"name: t\nchannels:\n  - {channel}\ndependencies:\n{dependencies}")
    return env_file


def _nothing_launched(home: Path) -> bool:
    return SqliteAllocationTable(home / "state.db").list_instances() == []


# --- tests -------------------------------------------------------------------------------------
def test_environment_file_with_conda_packages_runs_jobs(local_cloud: Path, tmp_path: Path) -> None:
    channel = _channel(tmp_path)
    env_file = _env_file(
        tmp_path,
        channel,
        f"  - python={MINOR}\n  - mrtestpkg=1.2\n  - mrhello\n  - pip:\n    - {SIX}\n",
    )
    deployment = mr.Deployment.mirror_local(interpreter=mr.CondaEnvironmentFile(str(env_file)))
    started = time.monotonic()
    info = mr.run_function(conda_helpers.conda_info, deployment=deployment)
    first = time.monotonic() - started
    prefix = Path(str(info["prefix"]))
    assert prefix.is_relative_to(local_cloud) and prefix.parent.name == "envs"
    assert info["mrtestpkg"] == "1.2.3"  # the solve picked the newest 1.2.x, not 1.0.0
    assert Path(str(info["mrtestpkg_file"])).is_relative_to(prefix / "lib")
    assert info["data"] == "conda data\n"
    assert info["conda_prefix"] == str(prefix)
    assert info["records"] == [
        "mrhello-0.1-0.json",
        "mrtestpkg-1.2.3-pyh_0.json",
        f"python-{VERSION}-0_meadowrun_test.json",
    ]
    six = mr.run_function(deployment_helpers.env_info, args=("six",), deployment=deployment)
    assert six["version"] == "1.17.0" and six["prefix"] == str(prefix)  # the pip: section
    # a command runs with the environment's bin/ first on PATH
    out = tmp_path / "hello.txt"
    result = mr.run_command(["mr-hello", str(out)], deployment=deployment)
    assert result.return_code == 0 and out.read_text() == "hello from conda\n"
    # the same file again: the environment is found built, nothing is solved or installed
    started = time.monotonic()
    again = mr.run_function(conda_helpers.conda_info, deployment=deployment)
    second = time.monotonic() - started
    assert again["prefix"] == str(prefix)
    assert len([p for p in prefix.parent.iterdir() if not p.name.startswith(".")]) == 1
    assert second < first
    print(f"conda environment: first job {first:.3f} s, the next {second:.3f} s")


def test_conda_errors_before_launch(local_cloud: Path, tmp_path: Path) -> None:
    channel = _channel(tmp_path)

    def run(dependencies: str) -> None:
        env_file = _env_file(tmp_path, channel, dependencies)
        mr.run_function(
            conda_helpers.conda_info,
            deployment=mr.Deployment.mirror_local(
                interpreter=mr.CondaEnvironmentFile(str(env_file))
            ),
        )

    with pytest.raises(mr.BadInputError, match=r"solving the conda packages .*mr-no-such-pkg"):
        run(f"  - python={MINOR}\n  - mr-no-such-pkg\n")
    with pytest.raises(mr.BadInputError, match=r"solving the conda packages .*mrtestpkg=9"):
        run(f"  - python={MINOR}\n  - mrtestpkg=9\n")
    with pytest.raises(mr.BadInputError, match="installs no python"):
        run("  - mrhello\n")
    assert _nothing_launched(local_cloud)


def _user_conda_env(tmp_path: Path, channel: Path) -> Path:
    """A conda environment as a user has one: packages linked from the channel with their
    conda-meta records, plus a distribution pip installed."""
    prefix = tmp_path / "user-env"
    records = asyncio.run(
        rattler.solve(
            sources=[channel.as_uri()],
            specs=[f"python =={VERSION}", "mrtestpkg ==1.0.0", "mrhello"],
            virtual_packages=rattler.VirtualPackage.detect(),
        )
    )
    asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(prefix / "bin" / "python"), SIX],
        check=True,
    )
    return prefix


def test_detects_a_conda_environment_without_conda(tmp_path: Path) -> None:
    channel = _channel(tmp_path)
    prefix = _user_conda_env(tmp_path, channel)
    detected = detect_local_environment(str(prefix), str(tmp_path))
    assert detected.kind == "conda" and detected.path == str(prefix)
    assert detected.python_version == MINOR
    assert detected.pip == f"{SIX}\n"  # pip's distribution, not the conda packages
    urls = sorted(str(r.url) for r in read_lock(detected.text))
    assert urls == sorted(
        [
            f"{channel.as_uri()}/noarch/mrhello-0.1-0.tar.bz2",
            f"{channel.as_uri()}/noarch/mrtestpkg-1.0.0-pyh_0.tar.bz2",
            *[u for u in urls if "/python-" in u],
        ]
    )
    assert len(urls) == 3 and export_prefix(prefix) == export_prefix(prefix)  # stable hash
    empty = tmp_path / "empty-env"
    (empty / "conda-meta").mkdir(parents=True)
    with pytest.raises(mr.BadInputError, match="has no packages"):
        detect_local_environment(str(empty), str(tmp_path))


def test_mirror_local_of_a_conda_environment(local_cloud: Path, tmp_path: Path) -> None:
    """The client itself runs in a conda environment; LocalCurrentInterpreter(recreate=True)
    rebuilds that environment on the instance from its records, exactly (mrtestpkg 1.0.0,
    though the channel has 1.2.3), with its pip-installed distribution."""
    channel = _channel(tmp_path)
    prefix = _user_conda_env(tmp_path, channel)
    # the client's own code and libraries, as an editable install would add them
    site = prefix / "lib" / f"python{MINOR}" / "site-packages"
    venv_site = REPO / ".venv" / "lib"
    (site / "meadowrun-dev.pth").write_text(
        f"{REPO}\n{REPO / 'tests'}\n{next(venv_site.glob('python3*/site-packages'))}\n"
    )
    client = (
        "import json, meadowrun_core as mr, conda_helpers, deployment_helpers\n"
        "d = mr.Deployment.mirror_local(interpreter=mr.LocalCurrentInterpreter(recreate=True))\n"
        "info = mr.run_function(conda_helpers.conda_info, deployment=d)\n"
        "info['six'] = mr.run_function(deployment_helpers.env_info, args=('six',), "
        "deployment=d)['version']\n"
        "print('RESULT ' + json.dumps(info))\n"
    )
    out = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", client],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    info = json.loads(lines[0][len("RESULT ") :])
    rebuilt = Path(info["prefix"])
    assert rebuilt != prefix and rebuilt.is_relative_to(local_cloud)
    assert info["mrtestpkg"] == "1.0.0"  # the installed version, not the channel's newest
    assert info["six"] == "1.17.0"
    assert info["data"] == "conda data\n"
    assert not (rebuilt / "lib" / f"python{MINOR}" / "site-packages" / "meadowrun-dev.pth").exists()


def test_instance_install_failure_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    """The instance side on its own: a locked package that cannot be fetched any more fails
    the build with rattler's reason and leaves no half-built environment; once the channel
    has it again, the same spec builds."""
    channel = _channel(tmp_path)
    env_file = _env_file(tmp_path, channel, f"  - python={MINOR}\n  - mrtestpkg=1.2\n")
    store, signer = FileObjectStore(tmp_path / "objects"), Signer(b"k" * 32)
    resolver = Resolver(store, signer, tmp_path / "client-cache", local_instance=True)
    spec = resolver.resolve(mr.CondaEnvironmentFile(str(env_file)), tmp_path)
    assert spec["kind"] == "conda" and spec["python_version"] == MINOR
    package = channel / "noarch" / "mrtestpkg-1.2.3-pyh_0.tar.bz2"
    saved = package.read_bytes()
    package.unlink()
    envs = tmp_path / "instance" / "envs"
    with pytest.raises(DeploymentError, match="installing the conda environment failed"):
        ensure_environment(spec, store, signer, envs)
    assert not (envs / spec["hash"]).exists()
    package.write_bytes(saved)
    python = ensure_environment(spec, store, signer, envs)
    out = subprocess.run(
        [python, "-c", "import mrtestpkg; print(mrtestpkg.__version__)"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "1.2.3", out.stderr
    assert ensure_environment(spec, store, signer, envs) == python  # built once
