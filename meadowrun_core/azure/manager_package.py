"""The manager's Azure Functions package: a deterministic zip of ``function_app.py`` (the
Python v2 programming model: a timer trigger every five minutes calling
``manager.timer_handler``), ``host.json``, ``requirements.txt`` and the light
``meadowrun_core`` modules ``azure/manager.py`` imports (found by reading their imports, so the
package never carries the compute SDK or the client).

``manager_zip(with_dependencies=True)`` is what ``function_deploy.py`` deploys: a Linux
Consumption app runs from a package URL (``WEBSITE_RUN_FROM_PACKAGE``), which gets no remote
build, so the package also carries its requirements' installed files in
``.python_packages/lib/site-packages`` (the folder the Python worker puts on ``sys.path``), at
the versions this client has, for Linux x86_64 and this client's Python minor version
(``FUNCTIONS_PYTHON``): copied from this environment where it is that platform, else
installed for it by uv, as the agent bundle does (``bootstrap/bundle.py``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from meadowrun_core.azure import settings
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.bootstrap.bundle import client_arch, requirement_closure
from meadowrun_core.module_imports import PACKAGE_ROOT, imported_modules, module_file

MANAGER_MODULE = "meadowrun_core.azure.manager"
SCHEDULE = "0 */5 * * * *"  # NCRONTAB with seconds: every five minutes
_PACKAGE_ROOT = PACKAGE_ROOT
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same code gives the same zip
REQUIREMENTS = (
    "azure-functions",
    "azure-core",
    "azure-identity",
    "azure-data-tables",
    "azure-storage-queue",
    "azure-storage-blob",
    "azure-keyvault-secrets",
    "cryptography",
    "cloudpickle",  # meadowrun_core.serialization imports it
)
RUNTIME_PROVIDED = ("azure-functions",)  # the Python worker's own
FUNCTIONS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE_PACKAGES = ".python_packages/lib/site-packages"
_BUILT: dict[str, bytes] = {}  # the last zip built, by a digest of its code and versions

FUNCTION_APP = f'''"""meadowrun's manager: deletes VMs whose agent is gone, abandoned queues and
expired raffle entries (meadowrun_core/azure/manager.py)."""

import logging

import azure.functions as func

from meadowrun_core.azure.manager import timer_handler
from meadowrun_core.azure.settings import resolve_target
from meadowrun_core.hosts import AllocAzureVM

app = func.FunctionApp()


@app.timer_trigger(schedule="{SCHEDULE}", arg_name="timer", run_on_startup=False, use_monitor=False)
def meadowrun_manager(timer: func.TimerRequest) -> None:
    # AZURE_SUBSCRIPTION_ID, MEADOWRUN_AZURE_LOCATION / _RESOURCE_GROUP / _KEY_VAULT: app settings
    for line in timer_handler(resolve_target(AllocAzureVM())):
        logging.info("%s", line)
'''

HOST_JSON = {
    "version": "2.0",
    "extensionBundle": {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    },
}


def manager_modules(
    roots: tuple[str, ...] = (MANAGER_MODULE, "meadowrun_core.hosts"),
) -> dict[str, Path]:
    """Every meadowrun_core module the roots import, transitively; module name -> file
    (package ``__init__`` files are left out: ``manager_zip`` stubs them, since
    ``meadowrun_core/__init__.py`` imports the whole client)."""
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or module in found or path.name == "__init__.py":
            continue
        found[module] = path
        todo.extend(imported_modules(path, module.rsplit(".", 1)[0]))
    return found


def _dependencies() -> list[importlib.metadata.Distribution]:
    roots = [(name, frozenset[str]()) for name in REQUIREMENTS if name not in RUNTIME_PROVIDED]
    return requirement_closure(roots, "x86_64")


def dependency_files() -> Iterator[tuple[str, Path]]:
    """(path in site-packages, file) of the requirements' closure for Linux x86_64 and
    ``FUNCTIONS_PYTHON``, in a fixed order; bytecode and scripts left out."""
    dists = _dependencies()
    if sys.platform == "linux" and client_arch() == "x86_64":
        for dist in dists:
            for file in sorted(dist.files or [], key=str):
                source = Path(str(dist.locate_file(file)))
                if file.parts[0] != ".." and source.suffix != ".pyc" and source.is_file():
                    yield file.as_posix(), source
        return
    from uv import find_uv_bin

    pins = [f"{dist.metadata['Name']}=={dist.version}" for dist in dists]
    with tempfile.TemporaryDirectory() as temp:
        target = Path(temp)
        command = [
            find_uv_bin(), "pip", "install", "--quiet", "--no-deps", "--target", str(target),
            "--python-platform", "x86_64-manylinux_2_28", "--python-version", FUNCTIONS_PYTHON,
            "--only-binary", ":all:", *pins,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"could not get the manager's dependencies: {result.stderr[-2000:]}")
        for path in sorted(target.rglob("*")):
            relative = path.relative_to(target).as_posix()
            if path.is_file() and not relative.startswith("bin/") and path.suffix != ".pyc":
                yield relative, path


def manager_zip(with_dependencies: bool = False) -> bytes:
    """The Function App's zip (the same bytes for the same code and libraries); with its
    requirements' files when ``with_dependencies`` (what is deployed)."""
    modules = manager_modules()
    entries = {
        "function_app.py": FUNCTION_APP.encode(),
        "host.json": (json.dumps(HOST_JSON, indent=2) + "\n").encode(),
        "requirements.txt": ("\n".join(REQUIREMENTS) + "\n").encode(),
    }
    for module in modules:
        parts = module.split(".")
        for i in range(1, len(parts)):
            entries["/".join(parts[:i]) + "/__init__.py"] = b'"""Stub of the manager package."""\n'
    for module, path in modules.items():
        entries[module.replace(".", "/") + ".py"] = path.read_bytes()
    key = hashlib.sha256(f"{FUNCTIONS_PYTHON} {with_dependencies}\n".encode())
    for name in sorted(entries):
        key.update(f"{name} {len(entries[name])}\n".encode() + entries[name])
    if with_dependencies:
        for dist in _dependencies():
            key.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    if (cached := _BUILT.get(key.hexdigest())) is not None:
        return cached
    if with_dependencies:
        for name, source in dependency_files():
            entries[f"{SITE_PACKAGES}/{name}"] = source.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name], compresslevel=1)
    _BUILT.clear()  # one kept: a reinstall in the same process builds nothing
    _BUILT[key.hexdigest()] = buffer.getvalue()
    return _BUILT[key.hexdigest()]


def _vault_setting() -> dict[str, str]:
    name = os.environ.get(settings.VAULT_NAME_ENV)
    if name:
        return {settings.VAULT_NAME_ENV: name}
    return {settings.VAULT_URL_ENV: settings.vault_url()}


def app_settings(target: AzureTarget) -> dict[str, str]:
    """What the manager needs in the Function App's settings besides the Functions runtime's
    own (``function_deploy.py`` adds those): its group, its vault, and the endpoint overrides
    this client has (none against real Azure; an emulator's addresses in tests)."""
    return {
        "AZURE_SUBSCRIPTION_ID": target.subscription_id,
        "MEADOWRUN_AZURE_LOCATION": target.location,
        "MEADOWRUN_AZURE_RESOURCE_GROUP": target.resource_group,
        **settings.agent_environment(),
        **_vault_setting(),
    }
