"""Deploying the manager (``manager.py``, packed by ``manager_package.py``) as an Azure
Function App on a timer: part of ``meadowrun install --cloud azure``; ``remove`` is part of
``uninstall``.

What is made, tagged and fixed-named (through ``arm.py``, no extra SDK):

* a Linux Consumption plan ``meadowrun-manager`` (``Microsoft.Web/serverfarms``, SKU ``Y1`` /
  ``Dynamic``, ``reserved: true``);
* a Linux Python Function App (``Microsoft.Web/sites``, kind ``functionapp,linux``,
  ``linuxFxVersion: Python|<this client's minor version>``, HTTPS only, FTP off) named
  ``mr-manager-`` + a hash of subscription and group (site names are global), carrying the
  installed user-assigned identity ``meadowrun-vms`` (its ``AZURE_CLIENT_ID`` app setting makes
  ``DefaultAzureCredential`` pick it: App Service has no default user-assigned identity);
* the package, run from a URL, the only way a Linux Consumption app runs a package ("Run your
  functions from a package file in Azure"): the zip with its dependencies, uploaded once per
  content as ``manager-<sha256>.zip`` to the private container ``meadowrun-manager`` (not
  meadowrun's object container, whose lifecycle rule deletes blobs after 7 days), and a
  read-only SAS URL for that one blob, signed with the account key, in
  ``WEBSITE_RUN_FROM_PACKAGE``. No SCM (Kudu) credentials are needed. After a change the
  triggers are synced (``POST .../syncfunctiontriggers``), as a package URL requires.

App settings: the Functions runtime's (``FUNCTIONS_EXTENSION_VERSION=~4``,
``FUNCTIONS_WORKER_RUNTIME=python``, ``AzureWebJobsStorage``: the storage account's connection
string, which the timer's schedule monitor and lock use), ``AZURE_CLIENT_ID`` and
``manager_package.app_settings``; other settings (the user's) are kept. Idempotent: an app
whose settings match (the package URL by its blob, which must still answer through its SAS)
is left alone, so a second install writes nothing. App settings and SAS URLs are secrets:
they are never logged.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from meadowrun_core.azure import installed, manager_package
from meadowrun_core.azure.account import TAGS, DataPlane
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.settings import AzureTarget

log = logging.getLogger(__name__)

API_WEB = "2024-04-01"
PLAN_NAME = "meadowrun-manager"
PACKAGE_CONTAINER = "meadowrun-manager"
PACKAGE_SETTING = "WEBSITE_RUN_FROM_PACKAGE"
SAS_DAYS = 3650  # the app fetches the package on every cold start; re-signed on redeploy


def site_name(target: AzureTarget) -> str:
    """Global (``<name>.azurewebsites.net``): a hash of subscription and group."""
    digest = hashlib.sha256(f"{target.subscription_id}/{target.resource_group}".encode())
    return "mr-manager-" + digest.hexdigest()[:16]


def plan_path(target: AzureTarget) -> str:
    return f"{installed.group_path(target)}/providers/Microsoft.Web/serverfarms/{PLAN_NAME}"


def site_path(target: AzureTarget) -> str:
    return f"{installed.group_path(target)}/providers/Microsoft.Web/sites/{site_name(target)}"


def _connection_string(plane: DataPlane) -> str:
    """``AzureWebJobsStorage``: the account's shared-key connection string (with its
    endpoints where they are overridden, an emulator's)."""
    parts = [
        "DefaultEndpointsProtocol=https",
        f"AccountName={plane.account_name}",
        f"AccountKey={plane.account_key}",
    ]
    storage = plane.storage
    default = f"https://{plane.account_name}.blob.core.windows.net"
    if storage.blob_url.rstrip("/") == default:
        parts.append("EndpointSuffix=core.windows.net")
    else:
        parts += [
            f"BlobEndpoint={storage.blob_url}",
            f"QueueEndpoint={storage.queue_url}",
            f"TableEndpoint={storage.table_url}",
        ]
    return ";".join(parts)


def _upload(plane: DataPlane, package: bytes) -> str:
    """The package's blob name (uploaded unless there)."""
    name = f"manager-{hashlib.sha256(package).hexdigest()}.zip"
    service = plane.storage.blob_service()
    container = service.get_container_client(PACKAGE_CONTAINER)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    blob = container.get_blob_client(name)
    if not blob.exists():
        log.info("uploading the manager's package (%.1f MB)", len(package) / 1e6)
        with contextlib.suppress(ResourceExistsError):  # another install's, the same bytes
            blob.upload_blob(package, overwrite=False, metadata={"meadowrun": "manager"})
    return name


def _package_url(plane: DataPlane, blob_name: str) -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    now = datetime.datetime.now(datetime.UTC)
    sas = generate_blob_sas(
        account_name=plane.account_name,
        container_name=PACKAGE_CONTAINER,
        blob_name=blob_name,
        account_key=plane.account_key,
        permission=BlobSasPermissions(read=True),
        start=now - datetime.timedelta(minutes=5),
        expiry=now + datetime.timedelta(days=SAS_DAYS),
    )
    return f"{plane.storage.blob_url}/{PACKAGE_CONTAINER}/{blob_name}?{sas}"


def _url_answers(url: str) -> bool:
    """Whether the package URL still reads its blob (its SAS unexpired, its key current)."""
    from azure.storage.blob import BlobClient

    try:
        BlobClient.from_blob_url(url).get_blob_properties()
    except HttpResponseError:
        return False
    return True


def _same(current: dict[str, str], wanted: dict[str, str]) -> bool:
    """The wanted settings are there (others, e.g. the user's Application Insights, may be
    too), the package URL compared by its blob, and the current one still answers."""
    for name, value in wanted.items():
        if name not in current:
            return False
        if name == PACKAGE_SETTING:
            if urlsplit(current[name]).path != urlsplit(value).path:
                return False
        elif current[name] != value:
            return False
    return _url_answers(current[PACKAGE_SETTING])


def _site_body(target: AzureTarget, identity: dict[str, Any], settings: dict[str, str]) -> Any:
    return {
        "location": target.location,
        "kind": "functionapp,linux",
        "tags": TAGS,
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity["id"]: {}}},
        "properties": {
            "serverFarmId": plan_path(target),
            "reserved": True,
            "httpsOnly": True,
            "keyVaultReferenceIdentity": identity["id"],
            "siteConfig": {
                "linuxFxVersion": f"Python|{manager_package.FUNCTIONS_PYTHON}",
                "ftpsState": "Disabled",
                "minTlsVersion": "1.2",
                "appSettings": [{"name": k, "value": v} for k, v in sorted(settings.items())],
            },
        },
    }


def _site_current(site: dict[str, Any], target: AzureTarget, identity_id: str) -> bool:
    """The existing app runs our runtime with our identity (else it is updated)."""
    identities = (site.get("identity") or {}).get("userAssignedIdentities") or {}
    config = (site.get("properties") or {}).get("siteConfig") or {}
    runtime = f"Python|{manager_package.FUNCTIONS_PYTHON}"
    return identity_id.lower() in {i.lower() for i in identities} and (
        str(config.get("linuxFxVersion") or "").lower() == runtime.lower()
    )


def deploy(target: AzureTarget, arm: Arm, plane: DataPlane) -> list[str]:
    """Create or update the plan and the Function App; a line per resource."""
    identity = arm.get(installed.identity_path(target), installed.API_IDENTITY)
    if not identity:
        raise RuntimeError(f"managed identity {installed.IDENTITY_NAME} is missing")
    done = []
    plan = {
        "location": target.location,
        "kind": "functionapp",
        "tags": TAGS,
        "sku": {"name": "Y1", "tier": "Dynamic"},
        "properties": {"reserved": True},
    }
    if arm.get(plan_path(target), API_WEB) is None:
        arm.put(plan_path(target), API_WEB, plan)
        done.append(f"created function app plan {PLAN_NAME} (Linux Consumption)")
    else:
        done.append(f"found function app plan {PLAN_NAME}")
    blob_name = _upload(plane, manager_package.manager_zip(with_dependencies=True))
    wanted = {
        "FUNCTIONS_EXTENSION_VERSION": "~4",
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": _connection_string(plane),
        "AZURE_CLIENT_ID": str(identity["properties"]["clientId"]),
        **manager_package.app_settings(target),
        PACKAGE_SETTING: _package_url(plane, blob_name),
    }
    name, path = site_name(target), site_path(target)
    site = arm.get(path, API_WEB)
    if site is None or not _site_current(site, target, str(identity["id"])):
        arm.put(path, API_WEB, _site_body(target, identity, wanted))
        done.append(f"{'created' if site is None else 'updated'} function app {name}")
    else:
        current = arm.post(f"{path}/config/appsettings/list", API_WEB).get("properties") or {}
        if _same(current, wanted):
            done.append(f"found function app {name}")
            return done
        # PUT replaces them all: settings of the user's are kept
        arm.put(f"{path}/config/appsettings", API_WEB, {"properties": {**current, **wanted}})
        done.append(f"updated function app {name}'s settings")
    arm.post(f"{path}/syncfunctiontriggers", API_WEB)
    done.append(f"deployed the manager's package {blob_name} to function app {name}")
    return done


def remove(target: AzureTarget, arm: Arm, plane: DataPlane | None) -> list[str]:
    """Delete the Function App, its plan (where they carry meadowrun's tag) and the package
    container; what is already gone is skipped."""
    done = []
    for path, what in (
        (site_path(target), f"function app {site_name(target)}"),
        (plan_path(target), f"function app plan {PLAN_NAME}"),
    ):
        if installed.is_ours(arm.get(path, API_WEB)) and arm.delete(path, API_WEB):
            done.append(f"deleted {what}")
    if plane is not None:
        try:
            plane.storage.blob_service().delete_container(PACKAGE_CONTAINER)
            done.append(f"deleted container {PACKAGE_CONTAINER}")
        except ResourceNotFoundError:
            pass
    return done
