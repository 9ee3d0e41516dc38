"""Azure role-based access control in the Azure twin: every ARM and Key Vault request is
allowed only when the token's principal (its ``oid``) holds a role assignment, at a scope
covering the request, whose role grants the request's action. The role assignments are the
ones the twin's ARM part stores (``azure_twin_resources.py``); the twin seeds one: the test
user (``USER_PRINCIPAL``) is Owner of the subscription, as a user who runs install is.

It follows learn.microsoft.com/azure/role-based-access-control:

* "Understand scope": an assignment at a scope (subscription, resource group, resource)
  applies to it and to everything below it;
* "Understand Azure role definitions": control-plane requests need one of the role's
  ``actions`` (less its ``notActions``), data-plane requests one of its ``dataActions``;
  ``*`` matches anything; Owner and Contributor grant no ``dataActions``, so on a vault with
  RBAC authorization they read no secret ("Provide access to Key Vault keys, certificates,
  and secrets with Azure role-based access control");
* "Azure built-in roles": the definitions below, abridged to the resource providers the twin
  serves; "Azure resource provider operations": the action names (``{namespace}/{type}/
  read|write|delete``, ``.../listKeys/action``, Key Vault's ``.../secrets/getSecret/action``,
  ``readMetadata/action``, ``setSecret/action``, ``delete``, ``purge/action``,
  ``recover/action``);
* refusals: ARM's 403 ``AuthorizationFailed`` ("Troubleshoot Azure RBAC": "The client '...'
  with object id '...' does not have authorization to perform action '...' over scope '...'
  or the scope is invalid."), Key Vault's 403 ``Forbidden`` with inner code
  ``ForbiddenByRbac`` ("Troubleshooting Azure Key Vault access policy issues" / the RBAC
  guide: "Caller is not authorized to perform action on resource ... Action: '...'
  Resource: '...' Assignment: (not found) ...").

Operation status URLs (``.../locations/{l}/operations/{id}``) are answered to any caller with
a token: Azure authorizes the request that started the operation.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from collections.abc import Callable
from typing import Any

from tests.azure_twin_http import (
    ARM_SCOPE,
    TENANT,
    USER_PRINCIPAL,
    VAULT_SCOPE,
    Request,
    Response,
    error,
)

OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
VAULT_ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
_AUTHORIZATION_NOT = [
    "Microsoft.Authorization/*/Delete",
    "Microsoft.Authorization/*/Write",
    "Microsoft.Authorization/elevateAccess/Action",
]
_VAULT_READS = [
    "Microsoft.Authorization/*/read",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
]
# role id -> (actions, notActions, dataActions)
ROLES: dict[str, tuple[list[str], list[str], list[str]]] = {
    OWNER: (["*"], [], []),
    CONTRIBUTOR: (["*"], _AUTHORIZATION_NOT, []),
    READER: (["*/read"], [], []),
    VM_CONTRIBUTOR: (
        [
            "Microsoft.Authorization/*/read",
            "Microsoft.Compute/availabilitySets/*",
            "Microsoft.Compute/locations/*",
            "Microsoft.Compute/virtualMachines/*",
            "Microsoft.Compute/virtualMachineScaleSets/*",
            "Microsoft.Compute/disks/write",
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/locations/*",
            "Microsoft.Network/networkInterfaces/*",
            "Microsoft.Network/networkSecurityGroups/join/action",
            "Microsoft.Network/networkSecurityGroups/read",
            "Microsoft.Network/publicIPAddresses/join/action",
            "Microsoft.Network/publicIPAddresses/read",
            "Microsoft.Network/virtualNetworks/read",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Storage/storageAccounts/listKeys/action",
            "Microsoft.Storage/storageAccounts/read",
        ],
        [],
        [],
    ),
    SECRETS_USER: (
        [],
        [],
        [
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
    ),
    SECRETS_OFFICER: (_VAULT_READS, [], ["Microsoft.KeyVault/vaults/secrets/*"]),
    VAULT_ADMINISTRATOR: (_VAULT_READS, [], ["Microsoft.KeyVault/vaults/*"]),
}
_OPERATION = re.compile(r"/providers/[^/]+/locations/[^/]+/operations/[^/]+$", re.I)
_VERBS = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}


def arm_action(method: str, path: str) -> str:
    """The operation an ARM request performs ("Azure resource provider operations")."""
    parts = [p for p in path.split("/") if p]
    lowered = [p.lower() for p in parts]
    verb = _VERBS.get(method.upper(), "action")
    if "providers" not in lowered:
        types = ["Microsoft.Resources", "subscriptions"]
        rest = parts[2:]
    else:
        at = len(lowered) - 1 - lowered[::-1].index("providers")
        types = [parts[at + 1]]
        rest = parts[at + 2 :]
    types += rest[0::2]
    if method.upper() == "POST":
        return "/".join([*types[:-1], rest[-1], "action"]) if len(rest) % 2 else "/".join(types)
    return "/".join([*types, verb])


def vault_action(method: str, path: str) -> str:
    """The data action a Key Vault secrets request performs."""
    parts = [p for p in path.split("/") if p]
    base = "Microsoft.KeyVault/vaults/secrets/"
    if parts[0].lower() == "deletedsecrets":
        if method == "DELETE":
            return base + "purge/action"
        return base + ("recover/action" if method == "POST" else "readMetadata/action")
    if method == "PUT":
        return base + "setSecret/action"
    if method == "DELETE":
        return base + "delete"
    return base + ("getSecret/action" if len(parts) > 1 else "readMetadata/action")


def _matches(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


def grants(role: str, action: str, data: bool) -> bool:
    actions, not_actions, data_actions = ROLES.get(role, ([], [], []))
    if data:
        return _matches(data_actions, action)
    return _matches(actions, action) and not _matches(not_actions, action)


def covers(scope: str, path: str) -> bool:
    scope, path = scope.lower().rstrip("/"), path.lower().rstrip("/")
    return path == scope or path.startswith(scope + "/")


def role_of(assignment: dict[str, Any]) -> str:
    return str(assignment["properties"]["roleDefinitionId"]).rsplit("/", 1)[-1].lower()


class Rbac:
    """The guards the twin's server runs before its ARM and Key Vault parts."""

    def __init__(
        self,
        subscription: str,
        assignments: Callable[[], list[dict[str, Any]]],
        vault: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.subscription = subscription
        self._assignments = assignments  # every role assignment ARM holds
        self._vault = vault  # the ARM resource of the vault the data plane plays

    def allowed(self, principal: str, action: str, path: str, data: bool = False) -> bool:
        for assignment in self._assignments():
            props = assignment["properties"]
            if props.get("principalId") != principal or not covers(props["scope"], path):
                continue
            if grants(role_of(assignment), action, data):
                return True
        return False

    def arm_guard(self, request: Request) -> Response | None:
        path = request.path
        token = request.token()
        if not path.lower().startswith("/subscriptions/") or token is None:
            return None  # not ARM's, or ARM's own 401
        principal, scope = token
        if scope != ARM_SCOPE or _OPERATION.search(path):
            return None
        action = arm_action(request.method, path)
        if self.allowed(principal, action, path):
            return None
        return error(
            403,
            "AuthorizationFailed",
            f"The client '{principal}' with object id '{principal}' does not have "
            f"authorization to perform action '{action}' over scope '{path}' or the scope is "
            "invalid. If access was recently granted, please refresh your credentials.",
        )

    def vault_guard(self, request: Request) -> Response | None:
        token = request.token()
        first = request.path.strip("/").split("/")[0].lower()
        if first not in ("secrets", "deletedsecrets") or token is None or token[1] != VAULT_SCOPE:
            return None  # not the vault's, or the vault's own 401 challenge
        vault = self._vault()
        if vault is None:  # Azure: the vault's host name no longer resolves
            return error(404, "VaultNotFound", "The vault does not exist (or is deleted).")
        principal = token[0]
        action = vault_action(request.method, request.path)
        if self.allowed(principal, action, str(vault["id"]), data=True):
            return None
        body = {
            "error": {
                "code": "Forbidden",
                "message": (
                    "Caller is not authorized to perform action on resource.\r\nIf role "
                    "assignments, deny assignments or role definitions were changed recently, "
                    "please observe propagation time.\r\n"
                    f"Caller: oid={principal};iss=https://sts.windows.net/{TENANT}/\r\n"
                    f"Action: '{action}'\r\nResource: '{str(vault['id']).lower()}'\r\n"
                    "Assignment: (not found)\r\nDenyAssignmentId: null\r\n"
                    f"DecisionReason: null \r\nVault: {vault['name']};"
                    f"location={vault['location']}\r\n"
                ),
                "innererror": {"code": "ForbiddenByRbac"},
            }
        }
        return Response(403, body)


def owner_assignment(subscription: str) -> dict[str, Any]:
    """The test user's Owner assignment on the subscription, which the twin starts with."""
    return assignment(f"/subscriptions/{subscription}", USER_PRINCIPAL, OWNER, subscription)


def assignment(scope: str, principal: str, role: str, subscription: str) -> dict[str, Any]:
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal}|{role}"))
    return {
        "id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}",
        "name": name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": (
                f"/subscriptions/{subscription}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{role}"
            ),
            "principalId": principal,
            "principalType": "User",
            "scope": scope,
        },
    }


def vm_identity(asked: dict[str, Any], user_assigned: Callable[[str], Any]) -> dict[str, Any]:
    """A VM's ``identity`` as ARM returns it ("Configure managed identities on Azure VMs"):
    ``principalId``/``tenantId`` for a system-assigned one, and each user-assigned identity's
    ``principalId``/``clientId`` (``user_assigned(id)``: that identity's resource)."""
    identity = dict(asked)
    if "SystemAssigned" in str(asked.get("type", "")):
        identity.update(principalId=str(uuid.uuid4()), tenantId=TENANT)
    users = {}
    for rid in asked.get("userAssignedIdentities") or {}:
        props = (user_assigned(rid) or {}).get("properties") or {}
        users[rid] = {"principalId": props.get("principalId"), "clientId": props.get("clientId")}
    if users:
        identity["userAssignedIdentities"] = users
    return identity


def token_identity(
    identity: dict[str, Any], own_client_id: str, asked: str | None
) -> tuple[str, str] | None:
    """(principal, client id) IMDS issues a token for: the identity ``asked`` for (client id,
    object id or resource id), else the system-assigned one, else the only user-assigned one
    ("How to use managed identities on an Azure VM to acquire an access token")."""
    found = []
    if "SystemAssigned" in str(identity.get("type", "")):
        found.append((None, str(identity.get("principalId")), own_client_id))
    for rid, ids in (identity.get("userAssignedIdentities") or {}).items():
        found.append((rid, str(ids.get("principalId")), str(ids.get("clientId"))))
    if asked:
        for rid, principal, client in found:
            if asked.lower() in (str(rid).lower(), principal.lower(), client.lower()):
                return principal, client
        return None
    if found and found[0][0] is None:
        return found[0][1], found[0][2]
    return (found[0][1], found[0][2]) if len(found) == 1 else None
