"""Removing what meadowrun made in an Azure resource group: ``clean`` (VMs with no live
agent, abandoned queues) and ``uninstall`` (everything tagged or fixed-named, VMs first; the
Key Vault deleted and purged when install created it, ``vault_setup.py``, while a vault in
another group, ``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP``, keeps all but meadowrun's secrets
and the VMs' role on it; the resource group
only when install created it, i.e. it carries meadowrun's tag)."""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from meadowrun_core.azure import function_deploy, installed, settings, vault_setup
from meadowrun_core.azure.account import (
    SECRET_CLUSTER_KEY,
    SECRET_SSH_KEY,
    SECRET_STORAGE_ACCOUNT,
    SECRET_STORAGE_KEY,
    DataPlane,
    default_credential,
    open_data_plane,
    read_secret,
    vault_client,
)
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.blob_object_store import CONTAINER_NAME
from meadowrun_core.azure.manager import delete_vm, manage_once, meadowrun_vms
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.table_allocation_table import TABLE_NAME
from meadowrun_core.azure.vm_network import NSG_NAME
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.allocation_table import INSTANCE_DEAD_AFTER_SECONDS

log = logging.getLogger(__name__)


def _plane(credential: Any) -> DataPlane | None:
    """The data plane, None where the vault does not name a storage account (not installed)."""
    try:
        return open_data_plane(credential, create=False)
    except BadInputError:
        return None


def clean(target: AzureTarget, credential: Any | None = None, arm: Arm | None = None) -> list[str]:
    """Delete meadowrun's VMs with no live agent (never registered past the launch grace, or
    no heartbeat) and every queue no running job uses."""
    credential = credential or default_credential()
    arm = arm or Arm(credential, target.subscription_id)
    plane = _plane(credential)
    if plane is None:
        return []
    return manage_once(
        target, arm, plane, heartbeat_timeout=INSTANCE_DEAD_AFTER_SECONDS, queue_max_age=0
    )


def _delete_all_vms(arm: Arm, target: AzureTarget, plane: DataPlane | None) -> list[str]:
    done = []
    for vm in meadowrun_vms(arm, target):
        delete_vm(arm, vm, wait=True)
        if plane is not None:
            plane.table.remove_instance(vm.instance_id, "deleted by uninstall")
        done.append(f"deleted VM {vm.name} (meadowrun {vm.instance_id})")
    return done


def _delete_if_ours(arm: Arm, path: str, api: str, what: str) -> list[str]:
    if installed.is_ours(arm.get(path, api)) and arm.delete(path, api):
        return [f"deleted {what}"]
    return []


def _delete_identity(arm: Arm, target: AzureTarget) -> list[str]:
    """The identity's role assignments first (Azure keeps them, orphaned, otherwise)."""
    path = installed.identity_path(target)
    identity = arm.get(path, installed.API_IDENTITY)
    if not installed.is_ours(identity):
        return []
    assert identity is not None
    principal = str(identity["properties"]["principalId"])
    done = []
    for scope, role in installed.identity_roles(target, settings.vault_name()):
        if arm.delete(installed.role_assignment_path(scope, principal, role), installed.API_ROLES):
            done.append(f"deleted role {installed.ROLES[role]} for {installed.IDENTITY_NAME}")
    arm.delete(path, installed.API_IDENTITY)
    return [*done, f"deleted managed identity {installed.IDENTITY_NAME}"]


def _delete_storage(plane: DataPlane) -> list[str]:
    """The table, container and queues (the account itself may be the user's)."""
    done = []
    try:
        plane.storage.table_service().delete_table(TABLE_NAME)
        done.append(f"deleted table {TABLE_NAME}")
    except ResourceNotFoundError:
        pass
    try:
        plane.storage.blob_service().delete_container(CONTAINER_NAME)
        done.append(f"deleted container {CONTAINER_NAME}")
    except ResourceNotFoundError:
        pass
    service = plane.storage.queue_service()
    for queue in service.list_queues(name_starts_with="meadowrun-"):
        try:
            service.delete_queue(queue.name)
            done.append(f"deleted queue {queue.name}")
        except ResourceNotFoundError:
            pass
    return done


def _delete_secrets(credential: Any) -> list[str]:
    vault = vault_client(credential)
    done = []
    for name in (SECRET_STORAGE_ACCOUNT, SECRET_STORAGE_KEY, SECRET_CLUSTER_KEY, SECRET_SSH_KEY):
        if read_secret(vault, name) is None:
            continue
        vault.begin_delete_secret(name).wait()
        try:
            vault.purge_deleted_secret(name)
        except HttpResponseError as exc:  # purge protection: the name waits out retention
            log.warning("could not purge deleted secret %s (%s)", name, exc.reason)
        done.append(f"deleted secret {name}")
    return done


def uninstall(
    target: AzureTarget, credential: Any | None = None, arm: Arm | None = None
) -> list[str]:
    """Remove everything install made and every VM and queue meadowrun made; parts already
    gone are skipped. The vault (or, in a vault not meadowrun's, its secrets) is deleted and
    purged, so a later install starts clean."""
    settings.vault_url()
    settings.vault_name()
    credential = credential or default_credential()
    arm = arm or Arm(credential, target.subscription_id)
    group = installed.group_path(target)
    vault = vault_setup.vault_exists(arm, target)  # on Azure a gone vault's name won't resolve
    plane = _plane(credential) if vault else None
    done = _delete_all_vms(arm, target, plane)
    done += function_deploy.remove(target, arm, plane)  # before the identity it carries
    network = f"{group}/providers/Microsoft.Network"
    api = installed.API_NETWORK
    done += _delete_if_ours(
        arm,
        f"{network}/networkSecurityGroups/{NSG_NAME}",
        api,
        f"network security group {NSG_NAME}",
    )
    done += _delete_if_ours(
        arm, installed.vnet_path(target), api, f"virtual network {installed.VNET_NAME}"
    )
    done += _delete_identity(arm, target)
    if plane is not None:
        done += _delete_storage(plane)
        path = installed.storage_path(target, plane.account_name)
        what = f"storage account {plane.account_name}"
        done += _delete_if_ours(arm, path, installed.API_STORAGE, what)
    removed = vault_setup.remove_vault(arm, credential, target) if vault else []
    if removed is None:  # the user's vault: only meadowrun's secrets go
        removed = _delete_secrets(credential)
    done += removed
    what = f"resource group {target.resource_group}"
    done += _delete_if_ours(arm, group, installed.API_GROUPS, what)
    for line in done:
        log.info("%s", line)
    return done
