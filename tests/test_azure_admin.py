"""``meadowrun install|uninstall`` on Azure (the Azure twin's ARM and Key Vault, Azurite for
storage): what install makes is tagged, a second install changes nothing, uninstall removes
it all (VMs first) and leaves a resource group it did not make; the VM provider picks up the
installed subnet and identity."""

from __future__ import annotations

from typing import Any

from meadowrun_core.azure import installed
from meadowrun_core.azure.account import (
    SECRET_CLUSTER_KEY,
    SECRET_SSH_KEY,
    SECRET_STORAGE_ACCOUNT,
    SECRET_STORAGE_KEY,
    default_credential,
)
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.install import install
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.uninstall import uninstall
from tests import azurite
from tests.azure_admin_cloud import AdminCloud
from tests.azure_twin import RESOURCE_GROUP

SECRETS = sorted([SECRET_CLUSTER_KEY, SECRET_SSH_KEY, SECRET_STORAGE_ACCOUNT, SECRET_STORAGE_KEY])


def _resources(cloud: AdminCloud) -> dict[str, Any]:
    return {r["name"]: r for r in cloud.twin.arm.resources.resources.values()}


def _tables(cloud: AdminCloud) -> list[str]:
    return [t.name for t in cloud.storage.table_service().list_tables()]


def test_install_is_tagged_idempotent_and_uninstall_removes_everything(
    azure_admin: AdminCloud,
) -> None:
    cloud = azure_admin
    lines = install(cloud.target)
    assert f"created resource group {cloud.target.resource_group}" in lines
    assert f"created storage account {azurite.ACCOUNT_NAME}" in lines
    assert cloud.twin.arm.resources.group_tags[cloud.target.resource_group] == {
        "meadowrun": "meadowrun-core"
    }
    resources = _resources(cloud)
    assert set(resources) == {azurite.ACCOUNT_NAME, installed.VNET_NAME, installed.IDENTITY_NAME}
    assert all(installed.is_ours(r) for r in resources.values())
    subnets = resources[installed.VNET_NAME]["properties"]["subnets"]
    assert [s["name"] for s in subnets] == [installed.SUBNET_NAME]
    principal = resources[installed.IDENTITY_NAME]["properties"]["principalId"]
    roles = cloud.twin.arm.resources.role_assignments.values()
    assert sorted(r["properties"]["roleDefinitionId"].rsplit("/", 1)[1] for r in roles) == sorted(
        installed.ROLES
    )
    assert all(r["properties"]["principalId"] == principal for r in roles)
    assert cloud.twin.arm.resources.policies  # the lifecycle rule
    assert cloud.twin.vault.stored_names() == SECRETS
    vault = cloud.twin.secret_client()
    assert vault.get_secret(SECRET_STORAGE_KEY).value == azurite.ACCOUNT_KEY
    assert "meadowrun" in _tables(cloud)

    values = {name: vault.get_secret(name).value for name in SECRETS}
    writes = cloud.puts()
    again = install(cloud.target)
    assert cloud.puts() == writes, "a second install wrote something"
    assert all(not line.startswith(("created", "updated")) for line in again), again
    assert {name: vault.get_secret(name).value for name in SECRETS} == values

    cloud.create_vm("meadowrun-a", "a")
    removed = uninstall(cloud.target)
    assert removed[0] == "deleted VM meadowrun-a (meadowrun a)"  # VMs first
    assert cloud.vm_names() == []
    assert _resources(cloud) == {} and not cloud.twin.arm.resources.role_assignments
    assert cloud.twin.vault.stored_names() == []
    assert "meadowrun" not in _tables(cloud)
    assert cloud.target.resource_group.lower() not in cloud.twin.arm.resource_groups
    assert uninstall(cloud.target) == []  # nothing left


def test_uninstall_leaves_a_resource_group_it_did_not_make(
    azure_admin: AdminCloud, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MEADOWRUN_AZURE_RESOURCE_GROUP", RESOURCE_GROUP)
    target = AzureTarget(
        azure_admin.target.subscription_id, azure_admin.target.location, RESOURCE_GROUP
    )
    assert f"found resource group {RESOURCE_GROUP}" in install(target)
    removed = uninstall(target)
    assert f"deleted managed identity {installed.IDENTITY_NAME}" in removed
    assert not any("resource group" in line for line in removed)
    assert RESOURCE_GROUP.lower() in azure_admin.twin.arm.resource_groups


def test_vms_get_the_installed_subnet_and_identity(azure_admin: AdminCloud) -> None:
    arm = Arm(default_credential(), azure_admin.target.subscription_id)
    azure_admin.twin.arm.add_resource_group(azure_admin.target.resource_group, "eastus")
    assert installed.vm_subnet(arm, azure_admin.target) is None
    assert installed.vm_identity(arm, azure_admin.target) == {"type": "SystemAssigned"}
    install(azure_admin.target)
    subnet = installed.vm_subnet(arm, azure_admin.target)
    assert subnet is not None and subnet.endswith(f"/subnets/{installed.SUBNET_NAME}")
    identity = installed.vm_identity(arm, azure_admin.target)
    assert identity["type"] == "UserAssigned"
    (identity_id,) = identity["userAssignedIdentities"]
    assert identity_id.endswith(f"/userAssignedIdentities/{installed.IDENTITY_NAME}")
