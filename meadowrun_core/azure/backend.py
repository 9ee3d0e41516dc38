"""Azure assembled from its seams: Table storage, Storage queues, Blob storage, Key Vault and
VMs (``vm_provider.py``). Credentials come from ``DefaultAzureCredential`` (an Azure CLI
login, environment variables, a managed identity)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from azure.core.exceptions import ClientAuthenticationError

from meadowrun_core.azure import settings as azure_settings
from meadowrun_core.azure.account import default_credential, open_data_plane
from meadowrun_core.azure.blob_object_store import BlobObjectStore
from meadowrun_core.azure.key_vault_secret_store import KeyVaultSecretStore
from meadowrun_core.azure.storage_queue import StorageQueueTaskQueue
from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable
from meadowrun_core.azure.vm_provider import AzureVmProvider
from meadowrun_core.config import Settings, _float_env, meadowrun_home
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import AllocAzureVM
from meadowrun_core.remote.ssh_backend import SshReachedBackend
from meadowrun_core.serialization import Signer

# A spending guard: at most this much runs at once unless the host or environment says more.
DEFAULT_MAX_CPU = 256.0
DEFAULT_MAX_MEMORY_GB = 2048.0


@dataclass
class AzureBackend(SshReachedBackend):
    target: azure_settings.AzureTarget
    home: Path
    settings: Settings
    table: AzureTableAllocationTable
    queues: StorageQueueTaskQueue
    store: BlobObjectStore
    provider: AzureVmProvider
    signer: Signer
    max_cpu: float
    max_memory_gb: float
    secrets: KeyVaultSecretStore
    instances_are_this_machine: bool = False

    @classmethod
    def open(cls, host: AllocAzureVM) -> AzureBackend:
        target = azure_settings.resolve_target(host)  # nothing is sent before these checks
        azure_settings.vault_url()
        settings = Settings.from_env()
        credential = default_credential()
        try:
            plane = open_data_plane(credential)
        except ClientAuthenticationError as exc:
            raise BadInputError(
                "no Azure credentials found for AllocAzureVM: `az login`, or set a service "
                "principal's AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET "
                f"({str(exc).splitlines()[0]})"
            ) from None
        home = meadowrun_home() / "azure" / target.location
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        max_cpu = host.max_cpu or _float_env("MEADOWRUN_AZURE_MAX_CPU", DEFAULT_MAX_CPU)
        max_mem = host.max_memory_gb or _float_env(
            "MEADOWRUN_AZURE_MAX_MEMORY_GB", DEFAULT_MAX_MEMORY_GB
        )
        return cls(
            target=target,
            home=home,
            settings=settings,
            table=plane.table,
            queues=plane.queues,
            store=plane.store,
            provider=AzureVmProvider(host, target, credential, settings, home / "cache", plane),
            signer=Signer(plane.key),
            max_cpu=max_cpu,
            max_memory_gb=max_mem,
            secrets=plane.secrets,
        )

    @property
    def key(self) -> str:
        t = self.target
        return (
            f"azure:{t.subscription_id}:{t.location}:{t.resource_group}:"
            f"{azure_settings.vault_url()}:{azure_settings.arm_url()}"
        )

    @property
    def description(self) -> str:
        return (
            f"Azure {self.target.location}/{self.target.resource_group} "
            f"(limit {self.max_cpu:g} CPU / {self.max_memory_gb:g} GB)"
        )
