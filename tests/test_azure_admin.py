"""``meadowrun install|uninstall`` on Azure (the Azure twin's ARM and Key Vault, Azurite for
storage, roles enforced): what install makes is tagged, a second install changes nothing,
uninstall removes it all (VMs first; the vault deleted and purged) and leaves a resource
group and a vault it did not make; a soft-deleted vault of meadowrun's is recovered; a vault
the user keeps in another resource group is used there, as it is, and a missing one stops
install before anything is made; the VM provider picks up the installed subnet and
identity."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient

from meadowrun_core.azure import installed
from meadowrun_core.azure.account import (
    SECRET_CLUSTER_KEY,
    SECRET_SSH_KEY,
    SECRET_STORAGE_ACCOUNT,
    SECRET_STORAGE_KEY,
    default_credential,
)
from meadowrun_core.azure.arm import Arm, ArmError
from meadowrun_core.azure.install import install
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.uninstall import uninstall
from meadowrun_core.exceptions import BadInputError
from tests import azurite
from tests.azure_admin_cloud import AdminCloud
from tests.azure_twin import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, VAULT_NAME
from tests.azure_twin_http import TENANT, USER_PRINCIPAL, TwinCredential
from tests.azure_twin_rbac import OWNER, SECRETS_OFFICER, assignment

SECURITY_GROUP = "central-security"  # a vault the user keeps outside meadowrun's group
SECRETS = sorted([SECRET_CLUSTER_KEY, SECRET_SSH_KEY, SECRET_STORAGE_ACCOUNT, SECRET_STORAGE_KEY])


def _resources(cloud: AdminCloud) -> dict[str, Any]:
    return {r["name"]: r for r in cloud.twin.arm.resources.resources.values()}


def _tables(cloud: AdminCloud) -> list[str]:
    return [t.name for t in cloud.storage.table_service().list_tables()]


def _roles(cloud: AdminCloud) -> set[tuple[str, str, str]]:
    """(principal, role, scope) of every role assignment but the user's Owner."""
    found = set()
    for r in cloud.twin.arm.resources.assignments():
        props = r["properties"]
        role = props["roleDefinitionId"].rsplit("/", 1)[1]
        if role != OWNER:
            found.add((props["principalId"], role, props["scope"].lower()))
    return found


def test_install_is_tagged_idempotent_and_uninstall_removes_everything(
    azure_admin: AdminCloud,
) -> None:
    cloud = azure_admin
    lines = install(cloud.target)
    assert f"created resource group {cloud.target.resource_group}" in lines
    assert f"created storage account {azurite.ACCOUNT_NAME}" in lines
    assert f"created Key Vault {VAULT_NAME}" in lines
    assert cloud.twin.arm.resources.group_tags[cloud.target.resource_group] == {
        "meadowrun": "meadowrun-core"
    }
    resources = _resources(cloud)
    assert set(resources) == {azurite.ACCOUNT_NAME, installed.VNET_NAME, installed.IDENTITY_NAME}
    assert all(installed.is_ours(r) for r in resources.values())
    subnets = resources[installed.VNET_NAME]["properties"]["subnets"]
    assert [s["name"] for s in subnets] == [installed.SUBNET_NAME]
    vault = cloud.twin.arm.key_vaults.live(VAULT_NAME)
    assert vault is not None and installed.is_ours(vault)
    assert vault["id"].lower().startswith(installed.group_path(cloud.target).lower() + "/")
    assert vault["properties"]["enableRbacAuthorization"] is True
    assert vault["properties"]["tenantId"] == TENANT
    # the VMs' identity: secrets on the vault only, VMs on the group; the user: the vault's
    # secrets (as Owner of the subscription they could not read them)
    principal = resources[installed.IDENTITY_NAME]["properties"]["principalId"]
    assert _roles(cloud) == {
        (principal, installed.ROLE_VAULT_SECRETS_USER, vault["id"].lower()),
        (principal, installed.ROLE_VM_CONTRIBUTOR, installed.group_path(cloud.target).lower()),
        (USER_PRINCIPAL, installed.ROLE_VAULT_SECRETS_OFFICER, vault["id"].lower()),
    }
    assert cloud.twin.arm.resources.policies  # the lifecycle rule
    assert cloud.twin.vault.stored_names() == SECRETS
    secrets = cloud.twin.secret_client()
    assert secrets.get_secret(SECRET_STORAGE_KEY).value == azurite.ACCOUNT_KEY
    assert "meadowrun" in _tables(cloud)

    values = {name: secrets.get_secret(name).value for name in SECRETS}
    writes = cloud.puts()
    again = install(cloud.target)
    assert cloud.puts() == writes, "a second install wrote something"
    assert all(not line.startswith(("created", "updated")) for line in again), again
    assert {name: secrets.get_secret(name).value for name in SECRETS} == values

    cloud.create_vm("meadowrun-a", "a")
    removed = uninstall(cloud.target)
    assert removed[0] == "deleted VM meadowrun-a (meadowrun a)"  # VMs first
    assert f"purged Key Vault {VAULT_NAME}" in removed
    assert cloud.vm_names() == []
    assert _resources(cloud) == {} and _roles(cloud) == set()
    # deleted and purged: the name is free at once, the secrets gone with it
    assert cloud.twin.arm.key_vaults.live(VAULT_NAME) is None
    assert cloud.twin.arm.key_vaults.deleted(VAULT_NAME) is None
    assert cloud.twin.vault.stored_names(include_deleted=True) == []
    assert "meadowrun" not in _tables(cloud)
    assert cloud.target.resource_group.lower() not in cloud.twin.arm.resource_groups
    assert uninstall(cloud.target) == []  # nothing left
    assert f"created Key Vault {VAULT_NAME}" in install(cloud.target)  # the name was free


def test_install_recovers_its_soft_deleted_vault(azure_admin: AdminCloud) -> None:
    """A vault deleted but not purged keeps its name (Key Vault soft delete): where uninstall
    cannot purge (purge protection), install recovers meadowrun's vault, with its secrets;
    it refuses to touch a deleted vault that is not meadowrun's."""
    cloud = azure_admin
    install(cloud.target)
    cluster_key = cloud.twin.secret_client().get_secret(SECRET_CLUSTER_KEY).value
    live = cloud.twin.arm.key_vaults.live(VAULT_NAME)
    assert live is not None
    live["properties"]["enablePurgeProtection"] = True  # as a policy may require
    removed = uninstall(cloud.target)
    assert f"deleted Key Vault {VAULT_NAME}" in removed
    assert f"purged Key Vault {VAULT_NAME}" not in removed
    assert cloud.twin.arm.key_vaults.deleted(VAULT_NAME) is not None
    arm = Arm(default_credential(), cloud.target.subscription_id)
    body = {
        "location": LOCATION,
        "properties": {"tenantId": TENANT, "sku": {"family": "A", "name": "standard"}},
    }
    elsewhere = f"/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.KeyVault/vaults/"
    with pytest.raises(ArmError, match="ConflictError"):  # the name stays reserved
        arm.put(elsewhere + VAULT_NAME, installed.API_KEYVAULT, body)

    lines = install(cloud.target)
    assert f"recovered Key Vault {VAULT_NAME}" in lines
    assert cloud.twin.secret_client().get_secret(SECRET_CLUSTER_KEY).value == cluster_key

    arm.delete(installed.vault_path(cloud.target, VAULT_NAME), installed.API_KEYVAULT)
    vault = cloud.twin.arm.key_vaults.deleted(VAULT_NAME)
    assert vault is not None
    vault["vault"]["tags"] = {}  # someone else's deleted vault of that name
    with pytest.raises(BadInputError, match="az keyvault recover"):
        install(cloud.target)


def test_a_vault_that_is_not_meadowrun_s_is_used_and_kept(
    azure_admin: AdminCloud, monkeypatch: Any
) -> None:
    """A vault the user made in the group (with a role of their own on it) is filled, the
    VMs' role scoped to it, and left by uninstall, less meadowrun's secrets."""
    cloud = azure_admin
    cloud.twin.arm.add_resource_group(cloud.target.resource_group, LOCATION)
    vault_id = cloud.twin.arm.key_vaults.add(cloud.target.resource_group, VAULT_NAME, LOCATION)
    officer = assignment(vault_id, USER_PRINCIPAL, SECRETS_OFFICER, SUBSCRIPTION)
    cloud.twin.arm.resources.assign(officer)
    cloud.twin.secret_client().set_secret("theirs", "kept")
    lines = install(cloud.target)
    assert f"found Key Vault {VAULT_NAME}" in lines
    principal = _resources(cloud)[installed.IDENTITY_NAME]["properties"]["principalId"]
    assert (principal, installed.ROLE_VAULT_SECRETS_USER, vault_id.lower()) in _roles(cloud)
    uninstall(cloud.target)
    assert cloud.twin.arm.key_vaults.live(VAULT_NAME) is not None
    assert cloud.twin.vault.stored_names() == ["theirs"]


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


def _as(cloud: AdminCloud, principal: str) -> Any:
    """A secret client speaking for ``principal`` (as a VM with that identity would)."""
    credential = TwinCredential(principal)
    options = cloud.twin.client_options()
    return SecretClient(cloud.twin.base_url, credential, verify_challenge_resource=False, **options)


def test_a_vault_in_another_group_is_used_there_and_kept(
    azure_admin: AdminCloud, monkeypatch: Any
) -> None:
    """The security team's vault, in its own group, with the user's own Secrets Officer role:
    install fills it and scopes the VMs' role to it (and makes no vault, no role for the
    user); the VMs' identity reads meadowrun's secrets through the enforced roles and
    writes none; uninstall takes meadowrun's secrets and that role, and leaves the vault."""
    cloud = azure_admin
    cloud.twin.arm.add_resource_group(SECURITY_GROUP, LOCATION)
    tags = {"owner": "security"}
    vault_id = cloud.twin.arm.key_vaults.add(SECURITY_GROUP, VAULT_NAME, LOCATION, tags)
    officer = assignment(vault_id, USER_PRINCIPAL, SECRETS_OFFICER, SUBSCRIPTION)
    cloud.twin.arm.resources.assign(officer)
    cloud.twin.secret_client().set_secret("theirs", "kept")
    monkeypatch.setenv("MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP", SECURITY_GROUP)

    lines = install(cloud.target)
    assert f"found Key Vault {VAULT_NAME} in resource group {SECURITY_GROUP}" in lines
    assert cloud.twin.arm.key_vaults.in_group(cloud.target.resource_group) == []
    principal = _resources(cloud)[installed.IDENTITY_NAME]["properties"]["principalId"]
    group = installed.group_path(cloud.target).lower()
    assert _roles(cloud) == {
        (principal, installed.ROLE_VAULT_SECRETS_USER, vault_id.lower()),
        (principal, installed.ROLE_VM_CONTRIBUTOR, group),
        (USER_PRINCIPAL, SECRETS_OFFICER, vault_id.lower()),  # the user's own, not install's
    }
    assert cloud.twin.vault.stored_names() == sorted([*SECRETS, "theirs"])
    as_vms = _as(cloud, principal)
    cluster_key = cloud.twin.secret_client().get_secret(SECRET_CLUSTER_KEY).value
    assert as_vms.get_secret(SECRET_CLUSTER_KEY).value == cluster_key
    with pytest.raises(HttpResponseError, match="Forbidden"):  # Secrets User reads only
        as_vms.set_secret(SECRET_CLUSTER_KEY, "x")
    writes = cloud.puts()
    assert all(not line.startswith(("created", "updated")) for line in install(cloud.target))
    assert cloud.puts() == writes, "a second install wrote something"

    removed = uninstall(cloud.target)
    assert not any(f"Key Vault {VAULT_NAME}" in line for line in removed), removed
    assert f"deleted role Key Vault Secrets User for {installed.IDENTITY_NAME}" in removed
    vault = cloud.twin.arm.key_vaults.live(VAULT_NAME)
    assert vault is not None and vault["id"] == vault_id and vault["tags"] == tags
    assert cloud.twin.vault.stored_names(include_deleted=True) == ["theirs"]
    assert _roles(cloud) == {(USER_PRINCIPAL, SECRETS_OFFICER, vault_id.lower())}
    with pytest.raises(HttpResponseError, match="Forbidden"):  # its role went with it
        as_vms.get_secret("theirs")
    assert SECURITY_GROUP.lower() in cloud.twin.arm.resource_groups
    assert cloud.target.resource_group.lower() not in cloud.twin.arm.resource_groups


def test_a_missing_vault_in_another_group_stops_install_before_anything(
    azure_admin: AdminCloud, monkeypatch: Any
) -> None:
    """No group of that name, then the vault in another group than the one named: a
    message naming the setting and the fix, and nothing created."""
    cloud = azure_admin
    monkeypatch.setenv("MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP", SECURITY_GROUP)
    fix = f"MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP.*az keyvault show --name {VAULT_NAME}"
    with pytest.raises(BadInputError, match=f"not in resource group {SECURITY_GROUP}.*{fix}"):
        install(cloud.target)
    cloud.twin.arm.add_resource_group(SECURITY_GROUP, LOCATION)
    cloud.twin.arm.key_vaults.add(RESOURCE_GROUP, VAULT_NAME, LOCATION)  # not where named
    with pytest.raises(BadInputError, match=fix):
        install(cloud.target)
    assert cloud.puts() == 0
    assert cloud.target.resource_group.lower() not in cloud.twin.arm.resource_groups
    assert _resources(cloud) == {} and _roles(cloud) == set()
