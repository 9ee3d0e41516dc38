"""The manager's Azure Functions package: a deterministic zip of ``function_app.py`` (the
Python v2 programming model: a timer trigger every five minutes calling
``manager.timer_handler``), ``host.json``, ``requirements.txt`` and the light
``meadowrun_core`` modules ``azure/manager.py`` imports (found by reading their imports, so the
package never carries the compute SDK or the client).

Deploying it (a Function App, Microsoft.Web/sites, with the VMs' identity and the app
settings of ``app_settings``, then a zip deploy with a remote build) is not built: the
Azure twin has no App Service. docs/azure.md says how to deploy it by hand.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from meadowrun_core.azure import settings
from meadowrun_core.azure.settings import AzureTarget
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
)

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


def manager_zip() -> bytes:
    """The Function App's zip (the same bytes for the same code)."""
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
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name])
    return buffer.getvalue()


def _vault_setting() -> dict[str, str]:
    name = os.environ.get(settings.VAULT_NAME_ENV)
    if name:
        return {settings.VAULT_NAME_ENV: name}
    return {settings.VAULT_URL_ENV: settings.vault_url()}


def app_settings(target: AzureTarget) -> dict[str, str]:
    """What the Function App needs in its settings besides the Functions runtime's own."""
    return {
        "AZURE_SUBSCRIPTION_ID": target.subscription_id,
        "MEADOWRUN_AZURE_LOCATION": target.location,
        "MEADOWRUN_AZURE_RESOURCE_GROUP": target.resource_group,
        **_vault_setting(),
        "SCM_DO_BUILD_DURING_DEPLOYMENT": "true",
    }
