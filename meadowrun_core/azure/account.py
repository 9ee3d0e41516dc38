"""The Azure data plane clients and agents share: the allocation table, queues and object
store in one storage account, and the cluster key, all found through meadowrun's Key Vault.

The vault holds (docs/azure.md): ``meadowrun-storage-account`` (the storage account's name)
and ``meadowrun-storage-key`` (its shared key), which the install step writes;
``meadowrun-cluster-key`` and ``meadowrun-ssh-key``, created here on first use. Storage is
reached with the shared key because the bootstrap's read-only SAS URL for the agent bundle is
signed with it; everything else authenticates with ``DefaultAzureCredential`` (a login on a
laptop, the VM's managed identity on an instance).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from meadowrun_core.azure import settings
from meadowrun_core.azure.blob_object_store import BlobObjectStore
from meadowrun_core.azure.key_vault_secret_store import KeyVaultSecretStore
from meadowrun_core.azure.storage_account import StorageAccount
from meadowrun_core.azure.storage_queue import StorageQueueTaskQueue
from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable
from meadowrun_core.exceptions import BadInputError

log = logging.getLogger(__name__)

SECRET_STORAGE_ACCOUNT = "meadowrun-storage-account"
SECRET_STORAGE_KEY = "meadowrun-storage-key"
SECRET_CLUSTER_KEY = "meadowrun-cluster-key"
SECRET_SSH_KEY = "meadowrun-ssh-key"
TAGS = {"meadowrun": "meadowrun-core"}


def default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def vault_client(credential: Any) -> Any:
    from azure.keyvault.secrets import SecretClient

    return SecretClient(
        settings.vault_url(),
        credential,
        verify_challenge_resource=not settings.vault_overridden(),
    )


def read_secret(vault: Any, name: str) -> str | None:
    try:
        return str(vault.get_secret(name).value)
    except ResourceNotFoundError:
        return None


def get_or_create_secret(vault: Any, name: str, make: Callable[[], str]) -> str:
    """The secret's value, created with ``make`` on first use. Key Vault has no
    create-if-absent: after writing, the value is read back, so two first clients racing
    settle on the later write."""
    value = read_secret(vault, name)
    if value is not None:
        return value
    vault.set_secret(name, make(), tags=TAGS)
    log.info("created secret %s in %s", name, vault.vault_url)
    return str(vault.get_secret(name).value)


@dataclass
class DataPlane:
    table: AzureTableAllocationTable
    queues: StorageQueueTaskQueue
    store: BlobObjectStore
    storage: StorageAccount
    account_name: str
    account_key: str
    key: bytes
    vault: Any
    secrets: KeyVaultSecretStore


def open_data_plane(credential: Any, create: bool = True) -> DataPlane:
    """The table, queues, store and cluster key; the table and container created if
    missing (``create``: the client's first use)."""
    vault = vault_client(credential)
    name = read_secret(vault, SECRET_STORAGE_ACCOUNT)
    key = read_secret(vault, SECRET_STORAGE_KEY)
    if not name or not key:
        raise BadInputError(
            f"meadowrun's Key Vault {settings.vault_url()} has no {SECRET_STORAGE_ACCOUNT} / "
            f"{SECRET_STORAGE_KEY}: store the storage account's name and key there "
            "(docs/azure.md, 'Setting up')"
        )
    urls = settings.storage_urls(name)
    storage = StorageAccount(
        urls["table"], urls["queue"], urls["blob"], AzureNamedKeyCredential(name, key)
    )
    table = AzureTableAllocationTable(storage.table_service())
    store = BlobObjectStore(storage.blob_service())
    if create:
        table.create()
        store.create()
    cluster_key = get_or_create_secret(vault, SECRET_CLUSTER_KEY, lambda: secrets.token_hex(32))
    return DataPlane(
        table=table,
        queues=StorageQueueTaskQueue(storage.queue_service()),
        store=store,
        storage=storage,
        account_name=name,
        account_key=key,
        key=bytes.fromhex(cluster_key),
        vault=vault,
        secrets=KeyVaultSecretStore(settings.vault_url(), client=vault),
    )
