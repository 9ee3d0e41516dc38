"""Key Vaults in the Azure twin's ARM part (Microsoft.KeyVault), in memory, with soft delete.
The vaults' secrets are the data plane's (``azure_twin_vault.py``), which plays the vault
named ``data_plane_vault``.

Shapes follow the Key Vault management REST reference (api-version 2023-07-01) and its
examples in ``Azure/azure-rest-api-specs`` (``specification/keyvault/resource-manager/
Microsoft.KeyVault/stable/2023-07-01/examples``):

* Vaults - Create Or Update (``createVault.json``; PUT ``.../vaults/{name}``): ``location``,
  ``properties.tenantId`` and ``properties.sku`` required; 201 created, 200 updated, with
  ``properties.vaultUri``, ``enableSoftDelete: true``, ``softDeleteRetentionInDays``
  (default 90), ``provisioningState: Succeeded``; names 3-24 letters, digits and dashes,
  starting with a letter, no ``--`` (400 ``VaultNameNotValid``); a name live in another
  group is 409 ``VaultAlreadyExists``; ``createMode: recover`` brings a soft-deleted vault
  back with its contents;
* Vaults - Get / Delete (``getVault.json``, ``deleteVault.json``: 200, 204 when absent);
* soft delete ("Azure Key Vault soft-delete overview", learn.microsoft.com/azure/key-vault/
  general/soft-delete-overview): always on; a deleted vault keeps its name reserved and its
  contents until it is purged or its retention passes, so a create of that name is 409
  ``ConflictError`` until then; Vaults - Get Deleted (``GET /subscriptions/{s}/providers/
  Microsoft.KeyVault/locations/{l}/deletedVaults/{name}``, ``DeletedVault``: ``properties.
  {vaultId, location, deletionDate, scheduledPurgeDate, tags, purgeProtectionEnabled}``) and
  Purge Deleted (``POST .../deletedVaults/{name}/purge``; 200 here, done at once, which the
  reference allows beside 202); a vault with purge protection cannot be purged (409).

Deleting a resource group does not delete its vaults here (uninstall deletes the vault
first).
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

from tests.azure_twin_http import Request, Response, error, no_group, not_found

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_VAULT = re.compile(
    _SUB + r"/resourcegroups/(?P<rg>[^/]+)/providers/Microsoft\.KeyVault/vaults/(?P<name>[^/]+)",
    re.I,
)
_DELETED = re.compile(
    _SUB + r"/providers/Microsoft\.KeyVault/locations/(?P<loc>[^/]+)/deletedVaults/"
    r"(?P<name>[^/]+)(?P<purge>/purge)?",
    re.I,
)
_NAME = re.compile(r"[A-Za-z](?!.*--)[A-Za-z0-9-]{1,22}[A-Za-z0-9]")


class KeyVaultsTwin:
    def __init__(self, subscription: str, resource_groups: dict[str, str]) -> None:
        self.subscription = subscription
        self.resource_groups = resource_groups  # lower-cased name -> location (shared)
        self.on_purge: list[Callable[[str], None]] = []  # the data plane forgets the vault
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}  # lower-cased name -> vault
        self._deleted: dict[str, dict[str, Any]] = {}  # lower-cased name -> (vault, deleted)

    def live(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._live.get(name.lower())

    def deleted(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._deleted.get(name.lower())

    def in_group(self, rg: str) -> list[dict[str, Any]]:
        prefix = f"/subscriptions/{self.subscription}/resourcegroups/{rg}/".lower()
        with self._lock:
            return [v for v in self._live.values() if v["id"].lower().startswith(prefix)]

    def add(self, rg: str, name: str, location: str, tags: dict[str, str] | None = None) -> str:
        """A vault made outside the twin's API (a test's starting state); its id."""
        body = {
            "location": location,
            "tags": tags or {},
            "properties": {
                "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "sku": {"family": "A", "name": "standard"},
                "enableRbacAuthorization": True,
            },
        }
        vault = self._resource(rg, name, body, None)
        with self._lock:
            self._live[name.lower()] = vault
        return str(vault["id"])

    def handle(self, request: Request) -> Response | None:
        if m := _VAULT.fullmatch(request.path):
            if m["rg"].lower() not in self.resource_groups:
                return no_group(m["rg"])
            with self._lock:
                return self._vault(request, m["rg"], m["name"])
        if m := _DELETED.fullmatch(request.path):
            with self._lock:
                return self._deleted_vault(request, m["name"], bool(m["purge"]))
        return None

    def _resource(
        self, rg: str, name: str, body: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        props = {**((old or {}).get("properties") or {}), **(body.get("properties") or {})}
        props.pop("createMode", None)
        props.setdefault("accessPolicies", [])
        props.setdefault("enableRbacAuthorization", False)
        props.setdefault("softDeleteRetentionInDays", 90)
        props.update(
            enableSoftDelete=True,
            vaultUri=f"https://{name}.vault.azure.net/",
            provisioningState="Succeeded",
        )
        return {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/"
            f"Microsoft.KeyVault/vaults/{name}",
            "name": name,
            "type": "Microsoft.KeyVault/vaults",
            "location": str(body.get("location") or (old or {}).get("location", "")).lower(),
            "tags": dict(body.get("tags") or (old or {}).get("tags") or {}),
            "properties": props,
        }

    def _vault(self, request: Request, rg: str, name: str) -> Response:
        key = name.lower()
        found = self._live.get(key)
        mine = found is not None and f"/resourcegroups/{rg.lower()}/" in found["id"].lower()
        if request.method == "GET":
            if mine:
                return Response(200, found)
            return not_found("Microsoft.KeyVault/vaults", name, rg)
        if request.method == "DELETE":
            if not mine:
                return Response(204)
            assert found is not None
            deleted_at = datetime.datetime.now(datetime.UTC)
            days = int(found["properties"]["softDeleteRetentionInDays"])
            self._deleted[key] = {
                "vault": self._live.pop(key),
                "deletionDate": deleted_at.isoformat().replace("+00:00", "Z"),
                "scheduledPurgeDate": (deleted_at + datetime.timedelta(days=days))
                .isoformat()
                .replace("+00:00", "Z"),
            }
            return Response(200)
        if request.method != "PUT":
            return error(405, "MethodNotAllowed", f"{request.method} on a vault")
        return self._put(request, rg, name, found if mine else None)

    def _put(self, request: Request, rg: str, name: str, found: dict[str, Any] | None) -> Response:
        key = name.lower()
        body = request.json() or {}
        props = body.get("properties") or {}
        if props.get("createMode") == "recover":
            gone = self._deleted.get(key)
            if gone is None or f"/resourcegroups/{rg.lower()}/" not in gone["vault"]["id"].lower():
                return error(404, "ResourceNotFound", f"No deleted vault '{name}' to recover.")
            self._live[key] = self._deleted.pop(key)["vault"]
            return Response(200, self._live[key])
        if not _NAME.fullmatch(name):
            return error(
                400,
                "VaultNameNotValid",
                f"The vault name '{name}' is invalid. A vault's name must be between 3-24 "
                "alphanumeric characters. The name must begin with a letter, end with a letter "
                "or digit, and not contain consecutive hyphens.",
            )
        if not body.get("location") or not props.get("tenantId") or not props.get("sku"):
            return error(400, "BadRequest", "location, properties.tenantId and sku are required.")
        if key in self._deleted:
            return error(
                409,
                "ConflictError",
                "A vault with the same name already exists in deleted state. You need to either "
                "recover or purge existing key vault. Follow this link "
                "https://go.microsoft.com/fwlink/?linkid=2149745 for more information on soft "
                "delete.",
            )
        if found is None and key in self._live:
            return error(
                409,
                "VaultAlreadyExists",
                f"The vault name '{name}' is already in use. Vault names are globally unique so "
                "it is possible that the name is already taken.",
            )
        self._live[key] = self._resource(rg, name, body, found)
        return Response(200 if found else 201, self._live[key])

    def _deleted_vault(self, request: Request, name: str, purge: bool) -> Response:
        gone = self._deleted.get(name.lower())
        if gone is None:
            return error(404, "ResourceNotFound", f"The deleted vault '{name}' could not be found.")
        vault = gone["vault"]
        if purge and request.method == "POST":
            if vault["properties"].get("enablePurgeProtection"):
                return error(
                    409,
                    "Conflict",
                    f"Vault '{name}' has purge protection enabled and cannot be purged.",
                )
            del self._deleted[name.lower()]
            for callback in self.on_purge:
                callback(name)
            return Response(200)
        if purge or request.method != "GET":
            return error(405, "MethodNotAllowed", f"{request.method} {request.path}")
        return Response(
            200,
            {
                "id": request.path,
                "name": vault["name"],
                "type": "Microsoft.KeyVault/deletedVaults",
                "properties": {
                    "vaultId": vault["id"],
                    "location": vault["location"],
                    "deletionDate": gone["deletionDate"],
                    "scheduledPurgeDate": gone["scheduledPurgeDate"],
                    "tags": vault["tags"],
                    "purgeProtectionEnabled": bool(
                        vault["properties"].get("enablePurgeProtection")
                    ),
                },
            },
        )
