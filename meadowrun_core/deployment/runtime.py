"""Meadowrun's own worker modules inside an environment built from the user's spec.

The environment stays exactly what the spec says: nothing is installed into it. The worker is
started with ``PYTHONPATH`` naming a directory that holds only a ``sitecustomize.py``, which
removes itself from ``sys.path``, appends a directory with meadowrun-core and its worker
dependencies *after* the environment's site-packages (so the user's pinned versions win), and
then runs the environment's own ``sitecustomize`` if it has one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from meadowrun_core.deployment.locks import file_lock
from meadowrun_core.deployment.process import DeploymentError, find_uv, run_tool, uv_env

# what `python -m meadowrun_core.worker` imports beyond the standard library
_MODULES = {"meadowrun_core": "meadowrun-core", "cloudpickle": "cloudpickle", "psutil": "psutil"}
_PURE = {"tqdm": "tqdm"}

_SITECUSTOMIZE = '''"""meadowrun: its worker modules go after the environment's own packages."""
import os as _os
import sys as _sys

_here = _os.path.dirname(_os.path.abspath(__file__))
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
_runtime = _os.environ.get("MEADOWRUN_RUNTIME_PATH")
if _runtime and _runtime not in _sys.path:
    _sys.path.append(_runtime)
_self = _sys.modules.pop("sitecustomize")
try:
    import sitecustomize  # the environment's own, if any
except ImportError:
    _sys.modules["sitecustomize"] = _self  # none: the import that runs us expects an entry
'''


def worker_runtime_env(python_version: str, runtime_root: Path) -> dict[str, str]:
    """Variables for a worker in an environment of ``python_version`` (``X.Y``)."""
    major, minor = (int(p) for p in python_version.split(".")[:2])
    if (major, minor) < (3, 11):
        raise DeploymentError(
            f"meadowrun's worker needs Python 3.11 or newer; the environment asks for "
            f"Python {python_version}"
        )
    boot = runtime_root / "boot"
    lib = runtime_root / f"py{python_version}"
    if not (lib / ".ready").exists() or not (boot / "sitecustomize.py").exists():
        runtime_root.mkdir(parents=True, exist_ok=True)
        with file_lock(runtime_root / f".py{python_version}.lock"):
            if not (lib / ".ready").exists():
                _build(lib, python_version)
            boot.mkdir(exist_ok=True)
            if not (boot / "sitecustomize.py").exists():
                tmp = boot / f".sitecustomize.{os.getpid()}.tmp"
                tmp.write_text(_SITECUSTOMIZE)
                os.replace(tmp, boot / "sitecustomize.py")
    return {"PYTHONPATH": str(boot), "MEADOWRUN_RUNTIME_PATH": str(lib)}


def _build(lib: Path, python_version: str) -> None:
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    same_python = python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    linked = dict(_PURE) if not same_python else {**_MODULES, **_PURE}
    if not same_python:
        # compiled modules (psutil) must match the environment's Python: install them
        pins = [f"{dist}=={metadata.version(dist)}" for dist in ("cloudpickle", "psutil")]
        run_tool(
            [
                find_uv(),
                "pip",
                "install",
                "--target",
                str(lib),
                "--python-version",
                python_version,
                "--no-deps",
                "--quiet",
                *pins,
            ],
            f"installing meadowrun's worker modules for Python {python_version}",
            env=uv_env(),
        )
        linked["meadowrun_core"] = "meadowrun-core"
    for module in linked:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise DeploymentError(f"meadowrun's worker module {module!r} is not installed")
        locations = spec.submodule_search_locations
        source = Path(locations[0]) if locations else Path(spec.origin)
        os.symlink(source, lib / source.name)
    (lib / ".ready").touch()
