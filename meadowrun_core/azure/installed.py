"""What ``meadowrun install --cloud azure`` makes in a resource group, by fixed name, so the
VM provider, the manager and ``uninstall`` find it with no local record: a virtual network
with one subnet for the VMs, a user-assigned managed identity every VM carries (its roles:
Key Vault Secrets User on the vault, Virtual Machine Contributor on the group), the storage
account, the Key Vault (``MEADOWRUN_AZURE_KEY_VAULT``, in the group or, where
``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP`` names one, a vault the user keeps there;
``vault_setup.py``).

Names and ARM API versions live here; ``install.py`` creates, ``uninstall.py`` deletes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

from meadowrun_core.azure import settings
from meadowrun_core.azure.account import TAGS
from meadowrun_core.azure.settings import AzureTarget

VNET_NAME = "meadowrun-vnet"
SUBNET_NAME = "meadowrun-vms"
VNET_PREFIX = "10.61.0.0/16"
SUBNET_PREFIX = "10.61.0.0/20"
IDENTITY_NAME = "meadowrun-vms"
INSTANCE_ID_TAG = "meadowrun-instance-id"  # meadowrun's id of a VM (the table's key)
STORAGE_ACCOUNT_ENV = "MEADOWRUN_AZURE_STORAGE_ACCOUNT"
MARKER = next(iter(TAGS))  # the tag every meadowrun resource carries

API_GROUPS = "2021-04-01"
API_STORAGE = "2023-05-01"
API_NETWORK = "2024-05-01"
API_IDENTITY = "2023-01-31"
API_ROLES = "2022-04-01"
API_COMPUTE = "2024-07-01"
API_KEYVAULT = "2023-07-01"
API_SUBSCRIPTIONS = "2022-12-01"

# Built-in role ids (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
ROLE_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
ROLE_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
ROLES = {
    ROLE_VAULT_SECRETS_USER: "Key Vault Secrets User",
    ROLE_VM_CONTRIBUTOR: "Virtual Machine Contributor",
    ROLE_VAULT_SECRETS_OFFICER: "Key Vault Secrets Officer",
}


def group_path(target: AzureTarget) -> str:
    return f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"


def vnet_path(target: AzureTarget) -> str:
    return f"{group_path(target)}/providers/Microsoft.Network/virtualNetworks/{VNET_NAME}"


def vault_path(target: AzureTarget, name: str) -> str:
    """The vault's ARM id: in meadowrun's group, or in the group
    ``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP`` names (a vault the user keeps elsewhere), so
    the VMs' role is scoped to where the vault really is."""
    group = settings.vault_group() or target.resource_group
    return (
        f"/subscriptions/{target.subscription_id}/resourceGroups/{group}/providers/"
        f"Microsoft.KeyVault/vaults/{name}"
    )


def deleted_vault_path(target: AzureTarget, name: str) -> str:
    """A soft-deleted vault (Vaults - Get Deleted / Purge Deleted)."""
    return (
        f"/subscriptions/{target.subscription_id}/providers/Microsoft.KeyVault/locations/"
        f"{target.location}/deletedVaults/{name}"
    )


def identity_roles(target: AzureTarget, vault_name: str) -> list[tuple[str, str]]:
    """(scope, role) of what the VMs' identity holds: reading the vault's secrets, on the
    vault only; deleting VMs (an idle VM itself, the manager the lost ones), on the group."""
    return [
        (vault_path(target, vault_name), ROLE_VAULT_SECRETS_USER),
        (group_path(target), ROLE_VM_CONTRIBUTOR),
    ]


def subnet_id(target: AzureTarget) -> str:
    return f"{vnet_path(target)}/subnets/{SUBNET_NAME}"


def identity_path(target: AzureTarget) -> str:
    return (
        f"{group_path(target)}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
        f"{IDENTITY_NAME}"
    )


def storage_path(target: AzureTarget, account: str) -> str:
    return f"{group_path(target)}/providers/Microsoft.Storage/storageAccounts/{account}"


def storage_account_name(target: AzureTarget) -> str:
    """``MEADOWRUN_AZURE_STORAGE_ACCOUNT``, else ``mr`` + a hash of subscription and group
    (storage account names are global: 3-24 lower-case letters and digits)."""
    named = os.environ.get(STORAGE_ACCOUNT_ENV)
    if named:
        return named.strip()
    digest = hashlib.sha256(f"{target.subscription_id}/{target.resource_group}".encode())
    return "mr" + digest.hexdigest()[:22]


def role_assignment_path(scope: str, principal_id: str, role: str) -> str:
    """The assignment's fixed name (a uuid of principal, role and scope), so PUT is
    idempotent and uninstall finds it."""
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal_id}|{role}")
    return f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"


def role_definition_id(target: AzureTarget, role: str) -> str:
    return (
        f"/subscriptions/{target.subscription_id}/providers/Microsoft.Authorization/"
        f"roleDefinitions/{role}"
    )


def is_ours(resource: dict[str, Any] | None) -> bool:
    return bool(resource) and MARKER in ((resource or {}).get("tags") or {})


def vm_identity(arm: Any, target: AzureTarget) -> dict[str, Any]:
    """A VM's ``identity``: the installed user-assigned identity (which holds the roles), or
    a system-assigned one where install has not run (its roles are then the user's to grant)."""
    found = arm.get(identity_path(target), API_IDENTITY)
    if found and found.get("id"):
        return {"type": "UserAssigned", "userAssignedIdentities": {str(found["id"]): {}}}
    return {"type": "SystemAssigned"}


def vm_subnet(arm: Any, target: AzureTarget) -> str | None:
    """The installed subnet's id, None where install has not made it."""
    found = arm.get(f"{vnet_path(target)}/subnets/{SUBNET_NAME}", API_NETWORK)
    return str(found["id"]) if found and found.get("id") else None
