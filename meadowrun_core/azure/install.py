"""Creating what meadowrun needs in an Azure resource group (``meadowrun install --cloud
azure``).

Idempotent, as on AWS: each step looks first and creates only what is missing, so a second
run changes nothing. Everything made carries meadowrun's tag and a fixed name
(``installed.py``), so ``uninstall.py`` needs no local record. The Key Vault
(``MEADOWRUN_AZURE_KEY_VAULT``) is created in the group unless it exists (``vault_setup.py``:
RBAC authorization, soft delete), or, where ``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP`` names
another group, the user's vault there is used as it is (checked first); then it is filled
with the storage account's name and key, the cluster key and the SSH key. The VMs' roles
go to one user-assigned identity made here, which every VM then carries: Key Vault Secrets
User on the vault (wherever it is), Virtual Machine Contributor on the group.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from meadowrun_core.azure import function_deploy, installed, settings, vault_setup
from meadowrun_core.azure.account import (
    SECRET_CLUSTER_KEY,
    SECRET_SSH_KEY,
    SECRET_STORAGE_ACCOUNT,
    SECRET_STORAGE_KEY,
    TAGS,
    default_credential,
    get_or_create_secret,
    open_data_plane,
    read_secret,
    vault_client,
)
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.blob_object_store import CONTAINER_NAME
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.remote.ssh import new_client_key_text

log = logging.getLogger(__name__)

# Cached code, arguments and results expire from the container after this many days.
OBJECT_EXPIRY_DAYS = 7
LIFECYCLE_RULE = "meadowrun-expire-objects"


def _ensure(
    arm: Arm, path: str, api: str, body: dict[str, Any], what: str
) -> tuple[dict[str, Any], str]:
    """The resource at ``path``, created with ``body`` if missing; and the report line."""
    found = arm.get(path, api)
    if found is not None:
        return found, f"found {what}"
    return arm.put(path, api, body), f"created {what}"


def _storage_account(arm: Arm, target: AzureTarget) -> tuple[str, str, list[str]]:
    """The account's name and shared key (created if missing, with the lifecycle rule)."""
    name = installed.storage_account_name(target)
    path = installed.storage_path(target, name)
    body = {
        "location": target.location,
        "tags": TAGS,
        "sku": {"name": "Standard_LRS"},
        "kind": "StorageV2",
        "properties": {
            "minimumTlsVersion": "TLS1_2",
            "allowBlobPublicAccess": False,
            "supportsHttpsTrafficOnly": True,
        },
    }
    _, line = _ensure(arm, path, installed.API_STORAGE, body, f"storage account {name}")
    done = [line]
    keys = arm.post(f"{path}/listKeys", installed.API_STORAGE).get("keys") or []
    if not keys:
        raise RuntimeError(f"storage account {name} listed no keys")
    policy_path = f"{path}/managementPolicies/default"
    if arm.get(policy_path, installed.API_STORAGE) is None:
        arm.put(policy_path, installed.API_STORAGE, lifecycle_policy(OBJECT_EXPIRY_DAYS))
        done.append(f"created lifecycle rule {LIFECYCLE_RULE} ({OBJECT_EXPIRY_DAYS} days)")
    return name, str(keys[0]["value"]), done


def lifecycle_policy(days: int) -> dict[str, Any]:
    """Delete blobs of meadowrun's container ``days`` after their last write."""
    rule = {
        "enabled": True,
        "name": LIFECYCLE_RULE,
        "type": "Lifecycle",
        "definition": {
            "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{CONTAINER_NAME}/"]},
            "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": days}}},
        },
    }
    return {"properties": {"policy": {"rules": [rule]}}}


def _secrets(credential: Any, account: str, key: str) -> list[str]:
    vault = vault_client(credential)
    done = []
    for name, value in ((SECRET_STORAGE_ACCOUNT, account), (SECRET_STORAGE_KEY, key)):
        current = read_secret(vault, name)
        if current != value:
            vault.set_secret(name, value, tags=TAGS)
        state = "found" if current == value else "created" if current is None else "updated"
        done.append(f"{state} secret {name}")
    made = [
        (SECRET_CLUSTER_KEY, lambda: secrets.token_hex(32)),
        (SECRET_SSH_KEY, new_client_key_text),
    ]
    for name, make in made:
        existed = read_secret(vault, name) is not None
        get_or_create_secret(vault, name, make)
        done.append(f"{'found' if existed else 'created'} secret {name}")
    return done


def _network(arm: Arm, target: AzureTarget) -> str:
    body = {
        "location": target.location,
        "tags": TAGS,
        "properties": {
            "addressSpace": {"addressPrefixes": [installed.VNET_PREFIX]},
            "subnets": [
                {
                    "name": installed.SUBNET_NAME,
                    "properties": {"addressPrefix": installed.SUBNET_PREFIX},
                }
            ],
        },
    }
    what = f"virtual network {installed.VNET_NAME} (subnet {installed.SUBNET_NAME})"
    return _ensure(arm, installed.vnet_path(target), installed.API_NETWORK, body, what)[1]


def _identity(arm: Arm, target: AzureTarget) -> list[str]:
    """The VMs' identity and its two roles (Secrets User on the vault, VM Contributor on the
    group)."""
    body = {"location": target.location, "tags": TAGS}
    what = f"managed identity {installed.IDENTITY_NAME}"
    identity, line = _ensure(
        arm, installed.identity_path(target), installed.API_IDENTITY, body, what
    )
    done = [line]
    principal = str(identity["properties"]["principalId"])
    for scope, role in installed.identity_roles(target, settings.vault_name()):
        done.append(
            vault_setup.ensure_role(
                arm, target, scope, principal, role, installed.IDENTITY_NAME, "ServicePrincipal"
            )
        )
    return done


def install(
    target: AzureTarget, credential: Any | None = None, arm: Arm | None = None
) -> list[str]:
    """Create what is missing; a line per resource, "created ..." or "found ..."."""
    settings.vault_url()  # a missing vault setting fails before anything is created
    settings.vault_name()
    credential = credential or default_credential()
    arm = arm or Arm(credential, target.subscription_id)
    vault_setup.check_vault(arm, target)  # a vault named elsewhere but missing: stop here
    group = installed.group_path(target)
    body = {"location": target.location, "tags": TAGS}
    done = [
        _ensure(arm, group, installed.API_GROUPS, body, f"resource group {target.resource_group}")[
            1
        ]
    ]
    account, key, storage_done = _storage_account(arm, target)
    done += storage_done
    done += vault_setup.ensure_vault(arm, credential, target)
    done += _secrets(credential, account, key)
    plane = open_data_plane(credential, create=True)  # the table and the container
    done.append(f"ready: table and container in storage account {plane.account_name}")
    done.append(_network(arm, target))
    done += _identity(arm, target)
    done += function_deploy.deploy(target, arm, plane)  # the manager, with that identity
    for line in done:
        log.info("%s", line)
    return done
