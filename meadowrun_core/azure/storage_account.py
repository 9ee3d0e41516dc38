"""Where the Azure storage seams live: one storage account's Table, Queue and Blob endpoints
and the credential for all three.

A real account is reached at ``https://<account>.<service>.core.windows.net`` with
``DefaultAzureCredential`` (the Azure CLI login on a laptop, the managed identity on a VM),
which needs the data-plane roles (Storage Table/Queue/Blob Data Contributor). Tests pass
explicit endpoints and a shared-key credential (Azurite's development account).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meadowrun_core.exceptions import BadInputError

_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


@dataclass(frozen=True)
class StorageAccount:
    """The endpoints of one storage account (no trailing slash) and the credential for them:
    a token credential (``DefaultAzureCredential``) or an ``AzureNamedKeyCredential``."""

    table_url: str
    queue_url: str
    blob_url: str
    credential: Any = field(repr=False)  # a shared key is a secret: never in logs

    @classmethod
    def named(cls, account_name: str, credential: Any = None) -> StorageAccount:
        """The account ``account_name`` in Azure's public cloud; ``DefaultAzureCredential``
        unless a credential is given."""
        if not _ACCOUNT_NAME.fullmatch(account_name or ""):
            raise BadInputError(
                f"invalid Azure storage account name {account_name!r}: it must be 3 to 24 "
                "lower-case letters and digits (the name in https://<name>.blob.core.windows.net)"
            )
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(
            table_url=f"https://{account_name}.table.core.windows.net",
            queue_url=f"https://{account_name}.queue.core.windows.net",
            blob_url=f"https://{account_name}.blob.core.windows.net",
            credential=credential,
        )

    def table_service(self) -> Any:
        from azure.data.tables import TableServiceClient

        return TableServiceClient(endpoint=self.table_url, credential=self.credential)

    def queue_service(self) -> Any:
        from azure.storage.queue import QueueServiceClient

        return QueueServiceClient(account_url=self.queue_url, credential=self.credential)

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(account_url=self.blob_url, credential=self.credential)
