"""Every VM the Azure twin creates is a real host (tests/azure_twin_hosts.py), driven through
the real azure-mgmt-compute and azure-mgmt-network clients: its own address (the NIC's and
the public IP's), sshd with the host key its cloud-config brought, cloud-init's write_files
and runcmd, a firewall that is its network security group, and the Azure Instance Metadata
Service at 169.254.169.254 (instance metadata, managed identity tokens ARM and Key Vault take
for what the identity's roles allow, Scheduled Events). Needs root and the twin tools: fails
(never skips) without them."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from azure.mgmt.network import NetworkManagementClient

from meadowrun_core.azure import installed
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.vault_setup import ensure_role
from meadowrun_core.bootstrap.cloud_init import InstanceBoot, render_user_data
from tests.azure_twin import (
    LOCATION,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    VAULT_NAME,
    AzureTwin,
    running_twin,
)
from tests.azure_twin_hosts import TWIN_CA_PATH, AzureTwinHosts
from tests.twin_hosts import TwinHost, TwinNetwork

USER = "meadowrun"
IMDS = "http://169.254.169.254/metadata"
RAN = "/var/lib/twin-test/ran"


@pytest.fixture
def azure(twin_network: TwinNetwork, tmp_path: Path) -> Iterator[AzureTwinHosts]:
    with (
        running_twin(tmp_path / "twin", host=twin_network.gateway) as twin,
        AzureTwinHosts(twin, twin_network, tmp_path / "hosts") as hosts,
    ):
        yield hosts


class Keys:
    """A host key pair made here (so the test pins it) and the client's own key."""

    def __init__(self) -> None:
        self.host = asyncssh.generate_private_key("ssh-ed25519")
        self.client = asyncssh.generate_private_key("ssh-ed25519")
        self.client_public = self.client.export_public_key("openssh").decode().strip()

    def cloud_config(self) -> str:
        """What the product renders for a VM (meadowrun_core.bootstrap.cloud_init.py's shape)."""
        return render_user_data(
            InstanceBoot(
                host_private_key=self.host.export_private_key("openssh").decode(),
                host_public_key=self.host.export_public_key("openssh").decode().strip(),
                authorized_key=self.client_public,
                ssh_user=USER,
                install_commands=(f"mkdir -p {RAN.rsplit('/', 1)[0]}", f"cat /opt/app/hi > {RAN}"),
                write_files=({"path": "/opt/app/hi", "content": "written by write_files\n"},),
            )
        )


def vm_body(keys: Keys, nsg_id: str | None, identity: bool) -> dict[str, Any]:
    nic: dict[str, Any] = {
        "primary": True,
        "deleteOption": "Delete",
        "ipConfigurations": [
            {"name": "ip", "properties": {"publicIPAddressConfiguration": {"name": "pip"}}}
        ],
    }
    if nsg_id:
        nic["networkSecurityGroup"] = {"id": nsg_id}
    return {
        "location": LOCATION,
        **({"identity": {"type": "SystemAssigned"}} if identity else {}),
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "priority": "Spot",
            "evictionPolicy": "Delete",
            "osProfile": {
                "adminUsername": USER,
                "customData": base64.b64encode(keys.cloud_config().encode()).decode(),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {"publicKeys": [{"path": "/home/x", "keyData": keys.client_public}]},
                },
            },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [{"name": "nic", "properties": nic}],
            },
        },
    }


def tcp_rule(priority: int, port: int, source: str) -> dict[str, Any]:
    return {
        "properties": {
            "protocol": "Tcp", "sourceAddressPrefix": source, "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": str(port),
            "access": "Allow", "priority": priority, "direction": "Inbound",
        }
    }  # fmt: skip


def network_client(twin: AzureTwin) -> Any:
    return NetworkManagementClient(
        twin.credential, SUBSCRIPTION, base_url=twin.base_url, **twin.client_options()
    )


def eventually(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{check} never held"
        time.sleep(0.1)
    return result


def reachable(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
    except OSError:
        return False
    return True


def curl(host: TwinHost, *args: str) -> tuple[int, str]:
    """``curl`` on the host (the image's), with a clean environment; (status, body)."""
    argv = ["env", "-i", "PATH=/usr/bin:/bin", "curl", "-sS", "--noproxy", "*", "-m", "10"]
    done = host.run_inside(*argv, "-w", "\n%{http_code}", *args)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


async def ssh_run(ip: str, keys: Keys, command: str) -> str:
    known = asyncssh.import_known_hosts(f"{ip} {keys.host.export_public_key().decode()}")
    async with asyncssh.connect(
        ip, username=USER, client_keys=[keys.client], known_hosts=known, connect_timeout=5
    ) as connection:
        return str((await connection.run(command, check=True)).stdout)


def test_a_vm_is_a_host_behind_its_security_group(azure: AzureTwinHosts) -> None:
    compute, network = azure.twin.compute_client(), network_client(azure.twin)
    gateway = azure.network.gateway  # the test process: outside the VNet, as a laptop is
    rules = [{"name": "ssh", **tcp_rule(100, 22, gateway)}]
    nsg = network.network_security_groups.begin_create_or_update(
        RESOURCE_GROUP, "nsg", {"location": LOCATION, "properties": {"securityRules": rules}}
    ).result()
    assert [r.name for r in nsg.default_security_rules][:3] == [
        "AllowVnetInBound", "AllowAzureLoadBalancerInBound", "DenyAllInBound",
    ]  # fmt: skip
    keys = Keys()
    vm = compute.virtual_machines.begin_create_or_update(
        RESOURCE_GROUP, "vm1", vm_body(keys, nsg.id, identity=False)
    ).result()
    nic = network.network_interfaces.get(
        RESOURCE_GROUP, vm.network_profile.network_interfaces[0].id.rsplit("/", 1)[1]
    )
    public_ip = network.public_ip_addresses.get(
        RESOURCE_GROUP, nic.ip_configurations[0].public_ip_address.id.rsplit("/", 1)[1]
    )
    host = azure.host("vm1")
    assert public_ip.ip_address == nic.ip_configurations[0].private_ip_address == host.ip
    assert nic.network_security_group.id == nsg.id

    # sshd has the host key the test made (pinned), the user its key; runcmd ran after
    # write_files, as root, on the host's own disk
    probe = f"test -e {RAN} && cat {RAN} && hostname"
    out = eventually(lambda: _try(lambda: asyncio.run(ssh_run(host.ip, keys, probe))))
    assert out.split("\n")[:2] == ["written by write_files", "vm1"]

    # the group is the firewall: 8000 is closed to the test process until a rule admits it
    host.run_inside("sh", "-c", "setsid python3 -m http.server 8000 >/dev/null 2>&1 &")
    listening = "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=1)"
    eventually(lambda: host.run_inside("python3", "-c", listening).returncode == 0)
    assert not reachable(host.ip, 8000)
    network.security_rules.begin_create_or_update(
        RESOURCE_GROUP, "nsg", "web", tcp_rule(110, 8000, f"{gateway}/32")
    ).result()
    assert reachable(host.ip, 8000)  # applied to the running host on the PUT

    compute.virtual_machines.begin_delete(RESOURCE_GROUP, "vm1").result()
    assert not host.powered and azure.hosts() == {}
    assert not reachable(host.ip, 22)


def _try(action: Callable[[], str]) -> str | None:
    try:
        return action()
    except (OSError, asyncssh.Error):
        return None


def test_the_metadata_service_speaks_for_each_vm(azure: AzureTwinHosts) -> None:
    compute = azure.twin.compute_client()
    azure.twin.secret_client().set_secret("db-password", "hunter2")
    vm = compute.virtual_machines.begin_create_or_update(
        RESOURCE_GROUP, "vm2", vm_body(Keys(), None, identity=True)
    ).result()
    compute.virtual_machines.begin_create_or_update(
        RESOURCE_GROUP, "plain", vm_body(Keys(), None, identity=False)
    ).result()
    host, plain = azure.host("vm2"), azure.host("plain")
    # no group: Azure's defaults, inbound from the VNet (the other VMs) only
    ssh_probe = f"import socket; socket.create_connection(('{plain.ip}', 22), timeout=2)"
    eventually(lambda: host.run_inside("python3", "-c", ssh_probe).returncode == 0)
    assert not reachable(plain.ip, 22)  # the test process is the internet

    status, body = curl(host, "-H", "Metadata: true", f"{IMDS}/instance?api-version=2021-02-01")
    assert status == 200, body
    document = json.loads(body)
    assert document["compute"]["name"] == "vm2" and document["compute"]["priority"] == "Spot"
    assert document["compute"]["resourceGroupName"] == RESOURCE_GROUP
    [address] = document["network"]["interface"][0]["ipv4"]["ipAddress"]
    assert address == {"privateIpAddress": host.ip, "publicIpAddress": host.ip}
    vm_id = f"{IMDS}/instance/compute/vmId?api-version=2021-02-01&format=text"
    assert curl(host, "-H", "Metadata: true", vm_id) == (200, vm.vm_id)
    assert curl(host, f"{IMDS}/instance?api-version=2021-02-01")[0] == 400  # no Metadata header
    forwarded = ["-H", "Metadata: true", "-H", "X-Forwarded-For: 10.9.9.9"]
    assert curl(host, *forwarded, f"{IMDS}/instance?api-version=2021-02-01")[0] == 400
    assert curl(plain, "-H", "Metadata: true", vm_id) == (200, plain_id := _vm_id(azure, "plain"))
    assert plain_id != vm.vm_id  # told apart by their addresses

    # the managed identity's tokens: ARM and Key Vault take them for their audience (the image
    # trusts the twin's CA), and answer what its roles allow: none yet
    status, arm = token(host, "https://management.azure.com/")
    assert status == 200 and arm["token_type"] == "Bearer" and int(arm["expires_in"]) > 0
    vm_url = (
        f"{azure.twin.base_url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/"
        "providers/Microsoft.Compute/virtualMachines/vm2?api-version=2024-07-01"
    )
    bearer = ["--cacert", TWIN_CA_PATH, "-H", f"Authorization: Bearer {arm['access_token']}"]
    status, body = curl(host, *bearer, vm_url)
    assert status == 403 and json.loads(body)["error"]["code"] == "AuthorizationFailed", body
    status, vault = token(host, "https://vault.azure.net")
    secret_url = f"{azure.twin.base_url}/secrets/db-password?api-version=7.4"
    bearer[-1] = f"Authorization: Bearer {vault['access_token']}"
    assert curl(host, *bearer, secret_url)[0] == 403
    assert curl(host, *bearer, vm_url)[0] == 401  # a vault token is no ARM token
    assert token(plain, "https://management.azure.com/") == (
        400, {"error": "invalid_request", "error_description": "Identity not found"},
    )  # fmt: skip

    # Spot eviction: a Preempt event in Scheduled Events, then the VM and its host are gone
    azure.preempt("vm2", 1.0)
    events_url = f"{IMDS}/scheduledevents?api-version=2020-07-01"
    status, body = curl(host, "-H", "Metadata: true", events_url)
    [event] = json.loads(body)["Events"]
    assert (event["EventType"], event["EventStatus"], event["Resources"]) == (
        "Preempt", "Scheduled", ["vm2"],
    )  # fmt: skip
    assert email.utils.parsedate_to_datetime(event["NotBefore"]).tzname() == "UTC"
    eventually(lambda: [v.name for v in compute.virtual_machines.list(RESOURCE_GROUP)] == ["plain"])
    eventually(lambda: not host.powered)

    # acknowledging a Preempt (StartRequests) evicts at once
    event_id = azure.preempt("plain", 300)
    ack = json.dumps({"StartRequests": [{"EventId": event_id}]})
    assert curl(plain, "-H", "Metadata: true", "-X", "POST", "-d", ack, events_url)[0] == 200
    eventually(lambda: not list(compute.virtual_machines.list(RESOURCE_GROUP)), timeout=5)
    eventually(lambda: not plain.powered and azure.hosts() == {})


def token(on: TwinHost, resource: str) -> tuple[int, dict[str, Any]]:
    """A managed identity token from the host's IMDS; (status, answer)."""
    url = f"{IMDS}/identity/oauth2/token?api-version=2018-02-01&resource={resource}"
    status, body = curl(on, "-H", "Metadata: true", url)
    return status, json.loads(body)


def test_a_vm_identity_may_do_only_what_its_roles_allow(
    azure: AzureTwinHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle VM deletes itself and its agent reads meadowrun's secrets with its managed
    identity: refused (ARM's AuthorizationFailed, Key Vault's ForbiddenByRbac) until the
    identity holds the roles install grants, allowed then, and no more than they allow."""
    twin = azure.twin
    twin.secret_client().set_secret("meadowrun-cluster-key", "k3y")
    compute = twin.compute_client()
    vm = compute.virtual_machines.begin_create_or_update(
        RESOURCE_GROUP, "vm3", vm_body(Keys(), None, identity=True)
    ).result()
    host = azure.host("vm3")
    vm_url = f"{twin.base_url}{vm.id}?api-version=2024-07-01"
    secret_url = f"{twin.base_url}/secrets/meadowrun-cluster-key?api-version=7.4"
    as_vm = {
        scope: ["--cacert", TWIN_CA_PATH, "-H", f"Authorization: Bearer {answer['access_token']}"]
        for scope, (_, answer) in (
            ("arm", token(host, "https://management.azure.com/")),
            ("vault", token(host, "https://vault.azure.net")),
        )
    }

    status, body = curl(host, *as_vm["arm"], "-X", "DELETE", vm_url)
    refusal = json.loads(body)["error"]
    assert status == 403 and refusal["code"] == "AuthorizationFailed", body
    assert f"'{vm.identity.principal_id}'" in refusal["message"]
    assert "'Microsoft.Compute/virtualMachines/delete'" in refusal["message"]
    status, body = curl(host, *as_vm["vault"], secret_url)
    refusal = json.loads(body)["error"]
    assert status == 403 and refusal["code"] == "Forbidden", body
    assert refusal["innererror"]["code"] == "ForbiddenByRbac"
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in refusal["message"]
    assert [v.name for v in compute.virtual_machines.list(RESOURCE_GROUP)] == ["vm3"]

    # the user (Owner of the subscription) grants the identity what install grants its own
    monkeypatch.setenv("MEADOWRUN_AZURE_ARM_URL", twin.base_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(twin.certificate.cert_path))
    arm = Arm(twin.credential, SUBSCRIPTION)
    target = AzureTarget(SUBSCRIPTION, LOCATION, RESOURCE_GROUP)
    for scope, role in installed.identity_roles(target, VAULT_NAME):
        line = ensure_role(arm, target, scope, vm.identity.principal_id, role, "vm3")
        assert line.startswith("created role")

    status, body = curl(host, *as_vm["vault"], secret_url)
    assert status == 200 and json.loads(body)["value"] == "k3y", body
    write = ["-X", "PUT", "-H", "Content-Type: application/json", "-d", '{"value": "x"}']
    assert curl(host, *as_vm["vault"], *write, secret_url)[0] == 403  # a reader only
    other_group = vm_url.replace(f"/resourceGroups/{RESOURCE_GROUP}/", "/resourceGroups/other/")
    assert curl(host, *as_vm["arm"], other_group)[0] == 403  # its group only
    # the delete cuts the host off before curl reads its answer: this one goes from here
    status = _with_token(twin, "DELETE", vm_url, as_vm["arm"][-1])
    assert status == 202
    eventually(lambda: not list(compute.virtual_machines.list(RESOURCE_GROUP)), timeout=5)
    eventually(lambda: not host.powered)


def _with_token(twin: AzureTwin, method: str, url: str, authorization: str) -> int:
    name, _, value = authorization.partition(": ")
    request = urllib.request.Request(url, method=method, headers={name: value})
    with urllib.request.urlopen(request, context=twin.ssl_context(), timeout=10) as answer:
        return int(answer.status)


def _vm_id(azure: AzureTwinHosts, name: str) -> str:
    return next(vm.vm_id for vm in azure.twin.arm.vms() if vm.name == name)
