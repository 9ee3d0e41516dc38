"""The ``azure`` fixture: AllocAzureVM on the Azure twin, as ``aws`` is AllocEC2Instance on
the EC2 twin (tests/aws_twin.py).

The client (this test process) lives in the root namespace at the twin network's gateway,
like a laptop outside the VNet. On the gateway: the Azure twin (Resource Manager, Key Vault,
Retail Prices, the App Service managed identity endpoint the client's
``DefaultAzureCredential`` gets its tokens from), Azurite (Table, Queue, Blob) and a checkip
service. Every VM the twin creates is a twin host (tests/azure_twin_hosts.py): SSH only as
its network security group admits, IMDS with managed identity tokens and Scheduled Events,
and nothing of ours until its cloud-init bootstrap installs the agent from Blob storage.
The fixture runs ``meadowrun install --cloud azure`` (``install``): it creates the Key Vault
and fills it with the storage account's name and key (Azurite's published development
account, which the twin's ``listKeys`` answers), and makes the VMs' user-assigned identity
with its roles, which the twin enforces: the agents read the vault and idle VMs delete
themselves only because install granted them Key Vault Secrets User and Virtual Machine
Contributor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import meadowrun_core as mr
from meadowrun_core.azure.install import install
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.vm_provider import INSTANCE_ID_TAG
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON
from meadowrun_core.client.runtime import ClientRuntime
from tests import azurite
from tests.azure_twin import (
    LOCATION,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    VAULT_NAME,
    AzureTwin,
    running_twin,
)
from tests.azure_twin_hosts import AzureTwinHosts
from tests.moto_server import CheckIpServer
from tests.process_env import TWIN_LEASE_SECONDS, lease_seconds
from tests.process_env import environment as process_environment
from tests.twin_hosts import TwinHost, TwinNetwork

DEPLOYMENT = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(AGENT_PYTHON))


class AzureTwinCloud:
    def __init__(
        self, hosts: AzureTwinHosts, storage: Any, scratch: Path, environment: dict[str, str]
    ) -> None:
        self.hosts = hosts
        self.twin: AzureTwin = hosts.twin
        self.network: TwinNetwork = hosts.network
        self.storage = storage
        self.scratch = scratch
        # what the fixture set in this process's environment: a client in another process
        # (an Airflow worker) needs the same to find the twin, Azurite and the twin's tokens
        self.environment = environment

    def host(self, **overrides: Any) -> mr.AllocAzureVM:
        return mr.AllocAzureVM(**overrides)

    def vms(self) -> list[Any]:
        """meadowrun's VMs in the resource group (ARM's view)."""
        vms = self.twin.compute_client().virtual_machines.list(RESOURCE_GROUP)
        return [vm for vm in vms if (vm.tags or {}).get(INSTANCE_ID_TAG)]

    def twin_host(self, vm_name: str) -> TwinHost:
        return self.hosts.host(vm_name)

    def table_instances(self) -> list[str]:
        from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable

        table = AzureTableAllocationTable(self.storage.table_service())
        return [r.instance_id for r in table.list_instances()]

    def registered_instances(self) -> list[str]:
        """Instances whose agent registered its address (none before the table exists)."""
        from azure.core.exceptions import ResourceNotFoundError

        from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable

        table = AzureTableAllocationTable(self.storage.table_service())
        try:
            return [r.instance_id for r in table.list_instances() if r.address is not None]
        except ResourceNotFoundError:
            return []

    def registered_at(self, host: TwinHost) -> float:
        for log in host.path("/home/meadowrun/.meadowrun").glob("agent-*.log"):
            for line in log.read_text().splitlines():
                if " listening on " in line:
                    stamp = " ".join(line.split()[:2])
                    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        raise AssertionError(f"the agent on {host.name} never registered")


@contextlib.contextmanager
def azure_twin_cloud(
    network: TwinNetwork,
    scratch: Path,
    azurite_debug_log: Path | None = None,
    lease: float = TWIN_LEASE_SECONDS,
) -> Iterator[tuple[AzureTwinCloud, dict[str, str]]]:
    """Everything of the ``azure`` fixture on ``network``, in ``scratch``: the cloud, and the
    environment a client needs to use it (the caller sets it; the fixture through
    monkeypatch, bench/bench_clouds.py around its Azure part). ``azurite_debug_log``: Azurite
    logs every request it serves there (the benchmark counts them)."""
    gateway = network.gateway
    with contextlib.ExitStack() as stack:
        (scratch / "azurite").mkdir()
        server = azurite.AzuriteServer(scratch / "azurite", gateway, debug_log=azurite_debug_log)
        stack.callback(server.stop)
        checkip = CheckIpServer(gateway)
        stack.callback(checkip.close)
        twin = stack.enter_context(
            running_twin(scratch / "twin", host=gateway, premade_vault=False)
        )
        hosts = stack.enter_context(AzureTwinHosts(twin, network, scratch / "hosts"))
        ca = str(twin.certificate.cert_path)
        environment = {
            "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "MEADOWRUN_AZURE_LOCATION": LOCATION,
            "MEADOWRUN_AZURE_RESOURCE_GROUP": RESOURCE_GROUP,
            "MEADOWRUN_AZURE_ARM_URL": twin.base_url,
            "MEADOWRUN_AZURE_VAULT_URL": twin.base_url,
            "MEADOWRUN_AZURE_KEY_VAULT": VAULT_NAME,
            "MEADOWRUN_AZURE_STORAGE_ACCOUNT": azurite.ACCOUNT_NAME,
            "MEADOWRUN_AZURE_STORAGE_TABLE_URL": server.urls["table"],
            "MEADOWRUN_AZURE_STORAGE_QUEUE_URL": server.urls["queue"],
            "MEADOWRUN_AZURE_STORAGE_BLOB_URL": server.urls["blob"],
            "MEADOWRUN_AZURE_PRICES_URL": twin.prices_url,
            "MEADOWRUN_CHECKIP_URL": checkip.url,
            "IDENTITY_ENDPOINT": twin.identity_endpoint,
            "IDENTITY_HEADER": twin.identity_header,
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "AZURE_CONFIG_DIR": str(scratch / "no-azure-cli"),
            "MEADOWRUN_LEASE_SECONDS": f"{lease:g}",
            "MEADOWRUN_VISIBILITY_TIMEOUT": "6",
            "MEADOWRUN_RECONCILE_INTERVAL": "0.5",
            "MEADOWRUN_HOME": str(scratch / "client-home"),
        }
        stack.callback(ClientRuntime.get().forget_backends)
        # what `meadowrun install --cloud azure` makes
        with process_environment(environment, unset=UNSET_ENVIRONMENT):
            install(AzureTarget(SUBSCRIPTION, LOCATION, RESOURCE_GROUP))
        yield AzureTwinCloud(hosts, server.account(), scratch, environment), environment


# Credentials the client's DefaultAzureCredential must not find beside the twin's.
UNSET_ENVIRONMENT = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT")


@pytest.fixture
def azure(
    twin_network: TwinNetwork,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[AzureTwinCloud]:
    lease = lease_seconds(request.node)
    with azure_twin_cloud(twin_network, tmp_path, lease=lease) as (cloud, environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        for name in UNSET_ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)
        yield cloud
