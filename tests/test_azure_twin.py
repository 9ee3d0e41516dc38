"""The Azure twin's ARM part behaves as Azure documents, for the real azure-mgmt clients: the
create and delete long-running operations, the VM hooks a host twin will use, the network
resources a VM's inline configuration creates, the error shapes, and role assignments
enforced as Azure RBAC does."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.keyvault.secrets import SecretClient
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient

from meadowrun_core.azure import installed
from meadowrun_core.azure.arm import Arm, ArmError
from tests.azure_twin import (
    LOCATION,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    VAULT_NAME,
    AzureTwin,
    running_twin,
)
from tests.azure_twin_arm import TwinVm
from tests.azure_twin_http import VAULT_SCOPE, TwinCredential
from tests.azure_twin_nsg import ingress_rules
from tests.azure_twin_rbac import CONTRIBUTOR, OWNER, READER, SECRETS_USER, assignment

CLOUD_CONFIG = "#cloud-config\nruncmd:\n  - echo booted\n"


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[AzureTwin]:
    with running_twin(tmp_path / "twin") as twin:
        yield twin


def spot_vm(size: str = "Standard_D2s_v5") -> dict[str, Any]:
    return {
        "location": LOCATION,
        "tags": {"meadowrun": "true", "meadowrun-job": "j1"},
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "priority": "Spot",
            "evictionPolicy": "Delete",
            "billingProfile": {"maxPrice": 0.096},
            "osProfile": {
                "computerName": "vm1",
                "adminUsername": "meadowrun",
                "customData": base64.b64encode(CLOUD_CONFIG.encode()).decode(),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {
                        "publicKeys": [
                            {
                                "path": "/home/meadowrun/.ssh/authorized_keys",
                                "keyData": "ssh-ed25519 AAAAtest",
                            }
                        ]
                    },
                },
            },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [
                    {
                        "name": "nic",
                        "properties": {
                            "primary": True,
                            "deleteOption": "Delete",
                            "ipConfigurations": [
                                {
                                    "name": "ip",
                                    "properties": {
                                        "publicIPAddressConfiguration": {
                                            "name": "pip",
                                            "properties": {"deleteOption": "Delete"},
                                        }
                                    },
                                }
                            ],
                        },
                    }
                ],
            },
        },
    }


def network_client(twin: AzureTwin) -> Any:
    return NetworkManagementClient(
        twin.credential, SUBSCRIPTION, base_url=twin.base_url, **twin.client_options()
    )


def test_a_vm_lives_through_its_operations_and_hooks(twin: AzureTwin) -> None:
    created: list[TwinVm] = []
    deleted: list[str] = []

    def boot(vm: TwinVm) -> str:
        assert vm.state == "Creating"  # the hook runs before the create succeeds
        created.append(vm)
        return "192.168.213.50"

    twin.arm.on_vm_created.append(boot)
    twin.arm.on_vm_deleted.append(lambda vm: deleted.append(vm.name))
    compute = twin.compute_client()
    vm = compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", spot_vm()).result()
    assert vm.provisioning_state == "Succeeded" and vm.identity.principal_id
    assert vm.os_profile.custom_data is None  # Azure never returns customData
    [hooked] = created
    assert hooked.custom_data == CLOUD_CONFIG and hooked.ssh_public_keys == ["ssh-ed25519 AAAAtest"]
    assert (hooked.priority, hooked.size, hooked.admin_username) == (
        "Spot",
        "Standard_D2s_v5",
        "meadowrun",
    )
    [listed] = compute.virtual_machines.list(RESOURCE_GROUP)
    assert listed.tags == {"meadowrun": "true", "meadowrun-job": "j1"}
    network = network_client(twin)
    nic_name = vm.network_profile.network_interfaces[0].id.rsplit("/", 1)[1]
    nic = network.network_interfaces.get(RESOURCE_GROUP, nic_name)
    assert nic.ip_configurations[0].private_ip_address == "192.168.213.50"
    pip_name = nic.ip_configurations[0].public_ip_address.id.rsplit("/", 1)[1]
    assert network.public_ip_addresses.get(RESOURCE_GROUP, pip_name).ip_address == "192.168.213.50"

    compute.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()
    assert deleted == ["vm1"] and twin.arm.vms() == []
    with pytest.raises(ResourceNotFoundError):
        network.network_interfaces.get(RESOURCE_GROUP, nic_name)
    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machines.get(RESOURCE_GROUP, "vm1")
    compute.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()  # 204: already gone


def test_allocation_failures_leave_a_failed_vm_and_eviction_deletes(twin: AzureTwin) -> None:
    deleted: list[str] = []
    twin.arm.on_vm_deleted.append(lambda vm: deleted.append(vm.name))
    compute = twin.compute_client()
    twin.arm.fail_next("ZonalAllocationFailed", priority="Spot")
    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", spot_vm()).result()
    assert caught.value.error is not None and caught.value.error.code == "ZonalAllocationFailed"
    assert compute.virtual_machines.get(RESOURCE_GROUP, "vm1").provisioning_state == "Failed"
    compute.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()
    compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm2", spot_vm()).result()
    twin.arm.evict(RESOURCE_GROUP, "vm2")
    assert deleted == ["vm1", "vm2"] and twin.arm.vms() == []


def test_errors_have_arm_codes(twin: AzureTwin) -> None:
    compute = twin.compute_client()
    with pytest.raises(ResourceNotFoundError) as caught:
        compute.virtual_machines.begin_create_or_update("no-such-group", "vm1", spot_vm())
    assert caught.value.error is not None and caught.value.error.code == "ResourceGroupNotFound"
    with pytest.raises(HttpResponseError) as not_spot:  # B-series cannot be Spot
        compute.virtual_machines.begin_create_or_update(
            RESOURCE_GROUP, "b", spot_vm("Standard_B2s")
        )
    assert not_spot.value.error is not None and not_spot.value.error.code == "SkuNotAvailable"
    twin.arm.set_quota("lowPriority", 2)
    compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", spot_vm()).result()
    with pytest.raises(HttpResponseError, match="LowPriorityCores quota"):
        compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm2", spot_vm())


def test_arm_refuses_a_token_for_another_audience(twin: AzureTwin) -> None:
    from azure.mgmt.compute import ComputeManagementClient

    wrong = ComputeManagementClient(
        twin.credential,
        SUBSCRIPTION,
        base_url=twin.base_url,
        credential_scopes=[VAULT_SCOPE],
        **twin.client_options(),
    )
    with pytest.raises(ClientAuthenticationError):
        list(wrong.virtual_machines.list(RESOURCE_GROUP))


def test_network_security_groups_and_the_firewall_they_make(twin: AzureTwin) -> None:
    network, compute = network_client(twin), twin.compute_client()

    def rule(priority: int, port: str, source: str, access: str = "Allow") -> dict[str, Any]:
        return {
            "properties": {
                "protocol": "Tcp", "sourceAddressPrefix": source, "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": port,
                "access": access, "priority": priority, "direction": "Inbound",
            }
        }  # fmt: skip

    rules = [{"name": "ssh", **rule(200, "22", "*")}]
    body = {"location": LOCATION, "properties": {"securityRules": rules}}
    nsg = network.network_security_groups.begin_create_or_update(RESOURCE_GROUP, "g", body).result()
    assert len(nsg.default_security_rules) == 6 and nsg.provisioning_state == "Succeeded"
    deny = rule(100, "22", "198.51.100.0/24", access="Deny")
    network.security_rules.begin_create_or_update(RESOURCE_GROUP, "g", "deny", deny).result()
    with pytest.raises(HttpResponseError) as clash:
        network.security_rules.begin_create_or_update(
            RESOURCE_GROUP, "g", "x", rule(100, "80", "*")
        )
    assert clash.value.error is not None and clash.value.error.code == "SecurityRuleConflict"
    with pytest.raises(HttpResponseError, match="SecurityRuleInvalidPriority"):
        network.security_rules.begin_create_or_update(RESOURCE_GROUP, "g", "x", rule(50, "80", "*"))
    # first match by priority: the Deny comes before the Allow, then Azure's defaults
    group = network.network_security_groups.get(RESOURCE_GROUP, "g")
    firewall = ingress_rules(twin.arm.nsgs.get(nsg.id), ["10.0.0.0/25"], ["10.0.0.1/32"])
    assert [(r.cidr, r.from_port, r.action) for r in firewall] == [
        ("198.51.100.0/24", 22, "DROP"), ("0.0.0.0/0", 22, "ACCEPT"),
        ("10.0.0.0/25", 0, "ACCEPT"), ("0.0.0.0/0", 0, "DROP"),
    ]  # fmt: skip
    assert [r.name for r in group.security_rules] == ["ssh", "deny"]

    vm = spot_vm()
    nic_config = vm["properties"]["networkProfile"]["networkInterfaceConfigurations"][0]
    nic_config["properties"]["networkSecurityGroup"] = {"id": nsg.id + "-missing"}
    with pytest.raises(HttpResponseError, match="InvalidResourceReference"):
        compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", vm)
    nic_config["properties"]["networkSecurityGroup"] = {"id": nsg.id}
    created = compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", vm).result()
    nic_name = created.network_profile.network_interfaces[0].id.rsplit("/", 1)[1]
    assert (
        network.network_interfaces.get(RESOURCE_GROUP, nic_name).network_security_group.id == nsg.id
    )
    with pytest.raises(HttpResponseError, match="InUseNetworkSecurityGroupCannotBeDeleted"):
        network.network_security_groups.begin_delete(RESOURCE_GROUP, "g").result()
    compute.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()
    network.network_security_groups.begin_delete(RESOURCE_GROUP, "g").result()
    with pytest.raises(ResourceNotFoundError):
        network.network_security_groups.get(RESOURCE_GROUP, "g")


def test_a_vm_naming_a_missing_subnet_is_refused(twin: AzureTwin) -> None:
    """A NIC's subnet must exist, as on Azure (400 ``InvalidResourceReference``)."""
    compute, network = twin.compute_client(), network_client(twin)
    vnet = {
        "location": LOCATION,
        "properties": {
            "addressSpace": {"addressPrefixes": ["10.61.0.0/16"]},
            "subnets": [{"name": "vms", "properties": {"addressPrefix": "10.61.0.0/20"}}],
        },
    }
    created = network.virtual_networks.begin_create_or_update(RESOURCE_GROUP, "v", vnet).result()
    vm = spot_vm()
    ip = vm["properties"]["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
    ip["ipConfigurations"][0]["properties"]["subnet"] = {"id": f"{created.id}/subnets/other"}
    with pytest.raises(HttpResponseError, match="InvalidResourceReference"):
        compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", vm)
    ip["ipConfigurations"][0]["properties"]["subnet"] = {"id": f"{created.id}/subnets/vms"}
    made = compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", vm).result()
    assert made.provisioning_state == "Succeeded"


def test_roles_decide_what_a_principal_may_do(
    twin: AzureTwin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ARM and Key Vault allow a principal only what its role assignments grant at a scope
    covering the request: no role, nothing; Reader reads; Contributor writes but grants no
    roles and reads no secret of a vault with RBAC authorization (it has no data actions, as
    Owner has none); Key Vault Secrets User on the vault reads them and writes none."""
    compute = twin.compute_client()
    vm = compute.virtual_machines.begin_create_or_update(RESOURCE_GROUP, "vm1", spot_vm()).result()
    principal = vm.identity.principal_id
    as_vm = ComputeManagementClient(
        TwinCredential(principal), SUBSCRIPTION, base_url=twin.base_url, **twin.client_options()
    )
    with pytest.raises(HttpResponseError) as refused:
        list(as_vm.virtual_machines.list(RESOURCE_GROUP))
    assert refused.value.status_code == 403 and refused.value.error is not None
    assert refused.value.error.code == "AuthorizationFailed"
    assert "'Microsoft.Compute/virtualMachines/read'" in str(refused.value.error.message)

    group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    twin.arm.resources.assign(assignment(group, principal, READER, SUBSCRIPTION))
    assert [v.name for v in as_vm.virtual_machines.list(RESOURCE_GROUP)] == ["vm1"]
    with pytest.raises(HttpResponseError, match="AuthorizationFailed"):
        as_vm.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1")

    subscription = f"/subscriptions/{SUBSCRIPTION}"
    twin.arm.resources.assign(assignment(subscription, principal, CONTRIBUTOR, SUBSCRIPTION))
    monkeypatch.setenv("MEADOWRUN_AZURE_ARM_URL", twin.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(twin.certificate.cert_path))
    arm = Arm(TwinCredential(principal), SUBSCRIPTION)
    path = installed.role_assignment_path(group, principal, installed.ROLE_VM_CONTRIBUTOR)
    body = {"properties": {"roleDefinitionId": OWNER, "principalId": principal}}
    with pytest.raises(ArmError, match=r"Microsoft\.Authorization/roleAssignments/write"):
        arm.put(path, installed.API_ROLES, body)
    secrets = SecretClient(
        twin.base_url,
        TwinCredential(principal),
        verify_challenge_resource=False,
        **twin.client_options(),
    )
    twin.secret_client().set_secret("s", "v")  # the user is Secrets Officer on the vault
    with pytest.raises(HttpResponseError) as forbidden:
        secrets.get_secret("s")
    assert forbidden.value.status_code == 403 and forbidden.value.error is not None
    assert forbidden.value.error.code == "Forbidden"
    assert "ForbiddenByRbac" in str(forbidden.value.response.text())
    vault = twin.arm.key_vaults.live(VAULT_NAME)
    assert vault is not None
    twin.arm.resources.assign(assignment(vault["id"], principal, SECRETS_USER, SUBSCRIPTION))
    assert secrets.get_secret("s").value == "v"
    with pytest.raises(HttpResponseError, match="Forbidden"):  # a reader only
        secrets.set_secret("s", "w")
    # as Contributor it deletes the VM
    as_vm.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()
    assert twin.arm.vms() == []
