"""What a worker process and a running job need of Azure (``clouds.Cloud``), from what the
agent left them (``AzureAgentCloud``: the variables and the storage key file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from azure.core.credentials import AzureNamedKeyCredential

from meadowrun_core.azure.blob_object_store import BlobObjectStore


def object_store(home: Path) -> BlobObjectStore:
    """The container and prefix ``MEADOWRUN_OBJECT_STORE`` (``<blob url>/<container>/<prefix>``)
    names, with the key the agent wrote to ``azure-storage.json``."""
    from azure.storage.blob import BlobServiceClient

    storage = json.loads((home / "azure-storage.json").read_text())
    url = os.environ["MEADOWRUN_OBJECT_STORE"]
    rest = url.removeprefix(storage["blob_url"]).strip("/")
    container, _, prefix = rest.partition("/")
    credential = AzureNamedKeyCredential(storage["account_name"], storage["account_key"])
    service = BlobServiceClient(account_url=storage["blob_url"], credential=credential)
    return BlobObjectStore(service, container, prefix.rstrip("/") + "/" if prefix else "")


def interruption_notice(instance_id: str) -> float | None:
    """Only the agent polls Scheduled Events; a job learns of a notice from the agent's file."""
    del instance_id
    return None
