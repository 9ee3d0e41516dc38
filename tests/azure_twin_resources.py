"""What ``meadowrun install --cloud azure`` makes, in the Azure twin's ARM part: resource
groups, storage accounts (their data plane is Azurite), virtual networks with inline subnets,
user-assigned managed identities and role assignments. In memory; every PUT and DELETE
finishes at once (200/201 with ``provisioningState: Succeeded``, which the references allow,
so no operation needs polling).

Shapes follow the REST references and their examples in ``Azure/azure-rest-api-specs``:

* Resource Groups - Create Or Update / Get / Delete (``resources/.../2021-04-01``,
  ``examples/CreateResourceGroup.json``): 201 created, 200 updated; Resources - List By
  Resource Group (``GET .../resources``: ``{"value": [{id, name, type, location, tags}]}``);
* Storage Accounts - Create / Get Properties / Delete / List Keys (``storage/.../2023-05-01``,
  ``StorageAccountCreate.json``, ``StorageAccountListKeys.json``): names 3-24 lower-case
  letters and digits (400 ``AccountNameInvalid``); ``listKeys`` answers ``{"keys":
  [{"keyName", "value", "permissions": "FULL", "creationTime"}]}`` with Azurite's published
  development key (the twin's accounts store nothing: the tests point the product's
  ``MEADOWRUN_AZURE_STORAGE_*_URL`` at Azurite); Management Policies - Create Or Update / Get
  (``.../managementPolicies/default``, stored as given, not enforced);
* Virtual Networks - Create Or Update / Get / Delete and Subnets - Get (``network/...``,
  ``VirtualNetworkCreateSubnet.json``): a subnet that a VM's NIC configuration names keeps
  its network from being deleted (400 ``InUseSubnetCannotBeDeleted``);
* User Assigned Identities - Create Or Update / Get / Delete (``msi/.../2023-01-31``,
  ``IdentityCreate.json``): ``properties.{tenantId, principalId, clientId}``;
* Role Assignments - Create / Get / Delete at any scope (``authorization/.../2022-04-01``,
  ``RoleAssignments_CreateForResourceGroup.json``): a principal that is not one the twin
  knows (the test user, a user-assigned identity, a VM's system-assigned identity) is 400
  ``PrincipalNotFound``. ``azure_twin_rbac.py`` enforces them;
* Subscriptions - Get (``resources/.../subscriptions/stable/2022-12-01``, ``GetSubscription
  .json``): ``{id, subscriptionId, displayName, state, tenantId}``.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tests.azure_twin_http import (
    TENANT,
    USER_PRINCIPAL,
    Request,
    Response,
    error,
    no_group,
    not_found,
)
from tests.azure_twin_lro import now

DEV_ACCOUNT_KEY = (  # Azurite's published development key (tests/azurite.py), not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_GROUP = re.compile(_SUB + r"/resourcegroups/(?P<rg>[^/]+)", re.I)
_SUBSCRIPTION = re.compile(_SUB, re.I)
_LIST = re.compile(_SUB + r"/resourcegroups/(?P<rg>[^/]+)/resources", re.I)
_TYPES = "Microsoft\\.Storage/storageAccounts|Microsoft\\.Network/virtualNetworks|"
_TYPES += "Microsoft\\.ManagedIdentity/userAssignedIdentities"
_RESOURCE = re.compile(
    _SUB + rf"/resourcegroups/(?P<rg>[^/]+)/providers/(?P<type>{_TYPES})/(?P<name>[^/]+)"
    r"(?P<rest>/.*)?",
    re.I,
)
_ROLE = re.compile(
    r"(?P<scope>/subscriptions/.+?)/providers/Microsoft\.Authorization/roleAssignments/"
    r"(?P<name>[^/]+)",
    re.I,
)
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


class ResourcesTwin:
    def __init__(
        self,
        subscription: str,
        resource_groups: dict[str, str],
        others: Callable[[str], list[dict[str, Any]]],
        subnets_in_use: Callable[[], set[str]],
        principals: Callable[[], set[str]],
    ) -> None:
        self.subscription = subscription
        self.resource_groups = resource_groups  # lower-cased name -> location (shared)
        self._others = others  # the group's VMs and NSGs (other parts of the twin)
        self._subnets_in_use = subnets_in_use  # lower-cased subnet ids
        self._principals = principals  # the user's and the VMs' system-assigned identities
        self._lock = threading.Lock()
        self.group_tags: dict[str, dict[str, str]] = {}
        self.resources: dict[str, dict[str, Any]] = {}  # lower-cased id -> resource
        self.policies: dict[str, dict[str, Any]] = {}  # lower-cased account id -> policy
        self.role_assignments: dict[str, dict[str, Any]] = {}  # lower-cased id -> assignment

    def handle(self, request: Request) -> Response | None:
        path, method = request.path, request.method
        if _SUBSCRIPTION.fullmatch(path) and method == "GET":
            return Response(
                200,
                {
                    "id": f"/subscriptions/{self.subscription}",
                    "subscriptionId": self.subscription,
                    "displayName": "Azure twin",
                    "state": "Enabled",
                    "tenantId": TENANT,
                },
            )
        if m := _GROUP.fullmatch(path):
            return self._group(request, m["rg"])
        if m := _LIST.fullmatch(path):
            return self._list(m["rg"]) if method == "GET" else None
        if m := _ROLE.fullmatch(path):
            return self._role(request, m["scope"], m["name"])
        m = _RESOURCE.fullmatch(path)
        if m is None:
            return None
        if m["rg"].lower() not in self.resource_groups:
            return no_group(m["rg"])
        base = path[: len(path) - len(m["rest"] or "")]
        kind, name, rest = m["type"], m["name"], (m["rest"] or "").lower()
        if rest == "/listkeys" and method == "POST":
            return self._keys(base, name, m["rg"])
        if rest == "/managementpolicies/default":
            return self._policy(request, base, name, m["rg"])
        if rest.startswith("/subnets/") and method == "GET":
            return self._subnet(path, base, rest.removeprefix("/subnets/"), m["rg"])
        if rest:
            return None
        if method == "PUT":
            return self._put(request, kind, name, m["rg"], base)
        if method == "GET":
            with self._lock:
                found = self.resources.get(base.lower())
            return Response(200, found) if found else not_found(kind, name, m["rg"])
        if method == "DELETE":
            return self._delete(base)
        return None

    # --- resource groups -------------------------------------------------------------------
    def _group_resource(self, rg: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{rg}",
            "name": rg,
            "type": "Microsoft.Resources/resourceGroups",
            "location": self.resource_groups[rg.lower()],
            "tags": self.group_tags.get(rg.lower(), {}),
            "properties": {"provisioningState": "Succeeded"},
        }

    def _group(self, request: Request, rg: str) -> Response:
        key, exists = rg.lower(), rg.lower() in self.resource_groups
        if request.method == "GET":
            return Response(200, self._group_resource(rg)) if exists else no_group(rg)
        if request.method == "PUT":
            body = request.json() or {}
            if not body.get("location"):
                return error(400, "LocationRequired", "The location property is required.")
            self.resource_groups[key] = str(body["location"]).lower()
            self.group_tags[key] = dict(body.get("tags") or {})
            return Response(200 if exists else 201, self._group_resource(rg))
        if request.method == "DELETE":
            if not exists:
                return no_group(rg)
            prefix = f"/subscriptions/{self.subscription}/resourcegroups/{key}/".lower()
            with self._lock:
                for rid in [r for r in self.resources if r.startswith(prefix)]:
                    del self.resources[rid]
            del self.resource_groups[key]
            self.group_tags.pop(key, None)
            return Response(200)
        return error(405, "MethodNotAllowed", f"{request.method} on a resource group")

    def _list(self, rg: str) -> Response:
        if rg.lower() not in self.resource_groups:
            return no_group(rg)
        prefix = f"/subscriptions/{self.subscription}/resourcegroups/{rg}/".lower()
        with self._lock:
            mine = [r for rid, r in sorted(self.resources.items()) if rid.startswith(prefix)]
        keys = ("id", "name", "type", "location", "tags")
        listed = [{k: r.get(k) for k in keys} for r in mine + self._others(rg)]
        return Response(200, {"value": listed})

    # --- resources -------------------------------------------------------------------------
    def _put(self, request: Request, kind: str, name: str, rg: str, rid: str) -> Response:
        body = request.json() or {}
        if not body.get("location"):
            return error(400, "LocationRequired", "The location property is required.")
        kind_lower = kind.lower()
        with self._lock:
            existing = self.resources.get(rid.lower())
        resource: dict[str, Any] = {
            "id": rid,
            "name": name,
            "type": kind,
            "location": str(body["location"]).lower(),
            "tags": dict(body.get("tags") or {}),
        }
        props = dict(body.get("properties") or {})
        if kind_lower.endswith("storageaccounts"):
            if not _ACCOUNT_NAME.fullmatch(name):
                return error(
                    400,
                    "AccountNameInvalid",
                    f"{name} is not a valid storage account name. Storage account name must "
                    "be between 3 and 24 characters in length and use numbers and lower-case "
                    "letters only.",
                )
            if not (body.get("sku") or {}).get("name") or not body.get("kind"):
                return error(400, "InvalidRequestContent", "sku.name and kind are required.")
            resource["sku"] = {"name": body["sku"]["name"], "tier": "Standard"}
            resource["kind"] = body["kind"]
            props["primaryEndpoints"] = {
                s: f"https://{name}.{s}.core.windows.net/" for s in ("blob", "queue", "table")
            }
            props["creationTime"] = now()
        elif kind_lower.endswith("virtualnetworks"):
            subnets = []
            for subnet in props.get("subnets") or []:
                subnets.append(
                    {
                        "id": f"{rid}/subnets/{subnet['name']}",
                        "name": subnet["name"],
                        "type": "Microsoft.Network/virtualNetworks/subnets",
                        "properties": {
                            **subnet.get("properties", {}),
                            "provisioningState": "Succeeded",
                        },
                    }
                )
            props["subnets"] = subnets
        else:  # a user-assigned identity: its ids are kept across updates
            old = (existing or {}).get("properties") or {}
            props = {
                "tenantId": TENANT,
                "principalId": old.get("principalId") or str(uuid.uuid4()),
                "clientId": old.get("clientId") or str(uuid.uuid4()),
            }
        props.setdefault("provisioningState", "Succeeded")
        resource["properties"] = props
        with self._lock:
            self.resources[rid.lower()] = resource
        return Response(200 if existing else 201, resource)

    def _delete(self, rid: str) -> Response:
        key = rid.lower()
        if "virtualnetworks" in key:
            in_use = [s for s in self._subnets_in_use() if s.startswith(key + "/subnets/")]
            if in_use:
                return error(
                    400,
                    "InUseSubnetCannotBeDeleted",
                    f"Subnet {in_use[0]} is in use and cannot be deleted.",
                )
        with self._lock:
            gone = self.resources.pop(key, None)
            self.policies.pop(key, None)
        return Response(200 if gone else 204)

    def _keys(self, rid: str, name: str, rg: str) -> Response:
        with self._lock:
            found = rid.lower() in self.resources
        if not found:
            return not_found("Microsoft.Storage/storageAccounts", name, rg)
        keys = [
            {"keyName": k, "value": DEV_ACCOUNT_KEY, "permissions": "FULL", "creationTime": now()}
            for k in ("key1", "key2")
        ]
        return Response(200, {"keys": keys})

    def _policy(self, request: Request, rid: str, name: str, rg: str) -> Response:
        with self._lock:
            if rid.lower() not in self.resources:
                return not_found("Microsoft.Storage/storageAccounts", name, rg)
            if request.method == "PUT":
                body = request.json() or {}
                self.policies[rid.lower()] = {
                    "id": f"{rid}/managementPolicies/default",
                    "name": "DefaultManagementPolicy",
                    "type": "Microsoft.Storage/storageAccounts/managementPolicies",
                    "properties": {**body.get("properties", {}), "lastModifiedTime": now()},
                }
            policy = self.policies.get(rid.lower())
        if policy is None:
            return error(
                404, "ManagementPolicyNotFound", "No ManagementPolicy found for account " + name
            )
        return Response(200, policy)

    def subnet_exists(self, subnet_id: str) -> bool:
        vnet_id, _, name = subnet_id.lower().rpartition("/subnets/")
        with self._lock:
            vnet = self.resources.get(vnet_id)
        subnets = ((vnet or {}).get("properties") or {}).get("subnets", [])
        return any(found["name"].lower() == name for found in subnets)

    def _subnet(self, path: str, rid: str, subnet: str, rg: str) -> Response:
        with self._lock:
            vnet = self.resources.get(rid.lower())
        for found in ((vnet or {}).get("properties") or {}).get("subnets", []):
            if found["name"].lower() == subnet:
                return Response(200, found)
        return not_found("Microsoft.Network/virtualNetworks/subnets", subnet, rg)

    # --- role assignments ------------------------------------------------------------------
    def assignments(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.role_assignments.values())

    def assign(self, assignment: dict[str, Any]) -> None:
        """An assignment made outside the twin's API (a test's starting state)."""
        with self._lock:
            self.role_assignments[str(assignment["id"]).lower()] = assignment

    def _role(self, request: Request, scope: str, name: str) -> Response:
        rid = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        key = rid.lower()
        if request.method == "GET":
            with self._lock:
                found = self.role_assignments.get(key)
            if found is None:
                return error(
                    404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found."
                )
            return Response(200, found)
        if request.method == "DELETE":
            with self._lock:
                gone = self.role_assignments.pop(key, None)
            return Response(200, gone) if gone else Response(204)
        if request.method != "PUT":
            return error(405, "MethodNotAllowed", f"{request.method} on a role assignment")
        props = (request.json() or {}).get("properties") or {}
        with self._lock:
            principals = {
                str(r["properties"].get("principalId"))
                for r in self.resources.values()
                if r["type"].lower().endswith("userassignedidentities")
            }
        if props.get("principalId") not in principals | self._principals():
            return error(
                400,
                "PrincipalNotFound",
                f"Principal {props.get('principalId')} does not exist in the directory {TENANT}.",
            )
        if not props.get("roleDefinitionId"):
            return error(400, "InvalidRoleDefinitionId", "roleDefinitionId is required.")
        assignment = {
            "id": rid,
            "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {**props, "scope": scope, "createdOn": now(), "updatedOn": now()},
        }
        with self._lock:
            existed = key in self.role_assignments
            self.role_assignments[key] = assignment
        return Response(200 if existed else 201, assignment)


def for_arm(arm: Any) -> ResourcesTwin:
    """The part wired to an ``ArmTwin``: its VMs and NSGs count as the group's resources, and
    its VMs' NIC configurations hold subnets in use, its VMs' system-assigned identities and
    the test user are principals."""

    def others(rg: str) -> list[dict[str, Any]]:
        vms = [vm.resource for vm in arm.vms() if vm.resource_group.lower() == rg.lower()]
        prefix = f"/subscriptions/{arm.subscription}/resourcegroups/{rg}/".lower()
        nsgs = arm.nsgs.list_under(prefix)
        found: list[dict[str, Any]] = vms + nsgs + arm.key_vaults.in_group(rg)
        return found

    def principals() -> set[str]:
        found = {USER_PRINCIPAL}
        for vm in arm.vms():
            found.add(str((vm.resource.get("identity") or {}).get("principalId")))
        return found

    def subnets_in_use() -> set[str]:
        found = set()
        for vm in arm.vms():
            profile = vm.resource["properties"]["networkProfile"]
            for config in profile.get("networkInterfaceConfigurations") or []:
                for ip in (config.get("properties") or {}).get("ipConfigurations") or []:
                    subnet = ((ip.get("properties") or {}).get("subnet") or {}).get("id")
                    if subnet:
                        found.add(str(subnet).lower())
        return found

    return ResourcesTwin(arm.subscription, arm.resource_groups, others, subnets_in_use, principals)
