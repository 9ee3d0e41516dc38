"""AllocAzureVM end to end on the Azure twin (tests/azure_cloud.py): the real Azure SDK
clients against the twin's Resource Manager and Key Vault and against Azurite; every VM a
twin host with nothing of ours until cloud-init installs the agent from Blob storage. A job
goes: allocation in Table storage, VM create, bootstrap, SSH (host key pinned) to start the
agent, SSH port forwarding to reach it, code and arguments through Blob, map tasks through
Storage queues, results back."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import meadowrun_core as mr
from meadowrun_core.azure import installed
from meadowrun_core.azure.vm_provider import INSTANCE_ID_TAG
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON, BOOT_LOG
from tests import twin_workloads as work
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud
from tests.azure_twin import SUBSCRIPTION


def test_run_function_on_a_stock_image(azure: AzureTwinCloud) -> None:
    hostname, instance_id, python, answer = mr.run_function(
        work.where, host=azure.host(), resources=mr.Resources(1, 1), deployment=DEPLOYMENT
    )
    assert answer == 42
    (vm,) = azure.vms()
    assert vm.tags[INSTANCE_ID_TAG] == instance_id and vm.identity.type == "UserAssigned"
    (identity,) = vm.identity.user_assigned_identities  # install's, which holds the roles
    assert identity.endswith(f"/userAssignedIdentities/{installed.IDENTITY_NAME}")
    host = azure.twin_host(vm.name)
    assert hostname == vm.name  # it ran on that VM's host
    assert python == AGENT_PYTHON
    assert "meadowrun agent ready" in host.path(BOOT_LOG).read_text()
    bare = host.run_inside("/usr/bin/python3", "-c", "import meadowrun_core")
    assert bare.returncode != 0 and "No module named 'meadowrun_core'" in bare.stderr
    assert instance_id in azure.table_instances()  # registered with its managed identity
    # the client's DefaultAzureCredential got its tokens from the managed identity endpoint
    assert azure.twin.requests_to("/msi/token") > 0
    # a second call that fits reuses the VM
    assert mr.run_function(work.square, args=(7,), host=azure.host(), deployment=DEPLOYMENT) == 49
    assert len(azure.vms()) == 1


def test_run_map_goes_through_storage_queues(azure: AzureTwinCloud) -> None:
    results = mr.run_map(
        work.square,
        range(20),
        host=azure.host(),
        resources_per_task=mr.Resources(1, 1),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x * x for x in range(20)]
    assert not list(azure.storage.queue_service().list_queues(name_starts_with="meadowrun-"))


def test_spot_eviction_loses_no_task(azure: AzureTwinCloud) -> None:
    evicted: list[str] = []

    def evict_first_vm() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            registered = azure.registered_instances()  # its agent is up and has tasks
            if registered:
                evicted.append(f"meadowrun-{registered[0]}")
                azure.hosts.preempt(evicted[0], 6.0)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=evict_first_vm)
    thread.start()
    results = mr.run_map(
        work.slow_square,
        range(60),
        host=azure.host(),
        resources_per_task=mr.Resources(1, 1, max_eviction_rate=100),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    thread.join()
    assert results == [x * x for x in range(60)]
    # the evicted VM is gone and a replacement ran the rest
    assert evicted and evicted[0] not in [vm.name for vm in azure.vms()]
    assert azure.twin.requests_to("/virtualMachines/meadowrun-") > len(evicted)


def test_idle_vm_deletes_itself(azure: AzureTwinCloud) -> None:
    host = azure.host(idle_timeout=1.0)
    assert mr.run_function(work.square, args=(3,), host=host, deployment=DEPLOYMENT) == 9
    (vm,) = azure.vms()
    twin_host = azure.twin_host(vm.name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (azure.vms() or azure.table_instances()):
        time.sleep(0.2)
    assert not azure.vms(), "the idle VM still exists"
    assert not azure.table_instances()
    deadline = time.monotonic() + 10
    while twin_host.powered and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not twin_host.powered
    # deleted through ARM by the VM itself, with its managed identity's token (the twin
    # allows it for the Virtual Machine Contributor role install granted that identity)
    assert ("DELETE", vm.id.split("?")[0]) in [
        (m, p) for m, p in azure.twin.server.requests if m == "DELETE"
    ]


def test_ssh_only_from_the_clients_address(azure: AzureTwinCloud) -> None:
    assert mr.run_function(work.square, args=(2,), host=azure.host(), deployment=DEPLOYMENT) == 4
    (vm,) = azure.vms()
    host = azure.twin_host(vm.name)
    nsg = azure.twin.arm.nsgs.get(vm.network_profile.network_interface_configurations[0]
                                  .network_security_group.id)  # fmt: skip
    assert nsg is not None
    sources = [
        r["properties"]["sourceAddressPrefix"] for r in nsg["properties"]["securityRules"]
        if r["properties"]["destinationPortRange"] == "22"
    ]  # fmt: skip
    assert sources == [f"{azure.network.gateway}/32"]  # the client's own address
    assert _reachable(host.ip, 22)
    # the rule is the gate: admitting another address only, this client is refused
    rule = {"properties": {**_ssh_rule(nsg), "sourceAddressPrefix": "198.51.100.7/32"}}
    network = _network_client(azure)
    network.security_rules.begin_create_or_update(
        "meadowrun-rg", "meadowrun-ssh", "ssh-1000", rule
    ).result()
    assert not _reachable(host.ip, 22)


def _ssh_rule(nsg: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = nsg["properties"]["securityRules"][0]["properties"]
    return rule


def _network_client(azure: AzureTwinCloud) -> Any:
    from azure.mgmt.network import NetworkManagementClient

    twin = azure.twin
    return NetworkManagementClient(
        twin.credential, SUBSCRIPTION, base_url=twin.base_url, **twin.client_options()
    )


def _reachable(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except OSError:
        return False
    return True
