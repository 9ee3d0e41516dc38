"""The agent's view of Azure: the shared data plane (storage key and cluster key from Key
Vault with the VM's managed identity), Scheduled Events (Spot eviction notices) and deleting
its own VM through Resource Manager when it goes idle."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
from pathlib import Path
from typing import Any

from meadowrun_core.azure import imds, settings
from meadowrun_core.azure.account import default_credential, open_data_plane
from meadowrun_core.azure.blob_object_store import CONTAINER_NAME
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

STORAGE_FILE = "azure-storage.json"  # where workers find the storage account's key


def _private_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class AzureAgentCloud:
    def __init__(self, home: Path, region: str | None) -> None:
        self.region = region or ""
        self.credential = default_credential()
        plane = open_data_plane(self.credential, create=False)
        self.plane = plane
        self.table = plane.table
        self.queues = plane.queues
        self.store = plane.store
        self.signer = Signer(plane.key)
        self.secrets = plane.secrets
        # workers on this VM read the keys from here, private to this user
        _private_write(home / "cluster.key", plane.key)
        storage = {
            "account_name": plane.account_name,
            "account_key": plane.account_key,
            "blob_url": plane.storage.blob_url,
        }
        _private_write(home / STORAGE_FILE, json.dumps(storage).encode())
        self._compute: dict[str, Any] | None = None

    def _metadata(self) -> dict[str, Any] | None:
        if self._compute is None:
            try:
                self._compute = imds.get("instance")
            except (OSError, urllib.error.URLError, ValueError):
                log.warning("the instance metadata service is not reachable", exc_info=True)
                return None
        return self._compute

    def worker_environment(self) -> dict[str, str]:
        """What jobs see of their cloud; ``MEADOWRUN_INSTANCE_ADDRESS`` is the VM's private
        address, where servers a job runs (a Dask scheduler) are reached in the VNet."""
        environment = {
            "MEADOWRUN_CLOUD": "azure",
            "MEADOWRUN_AZURE_LOCATION": self.region,
            "MEADOWRUN_OBJECT_STORE": f"{self.plane.storage.blob_url}/{CONTAINER_NAME}/objects/",
        }
        metadata = self._metadata()
        if metadata is not None:
            address = metadata["network"]["interface"][0]["ipv4"]["ipAddress"][0]
            if address.get("privateIpAddress"):
                environment["MEADOWRUN_INSTANCE_ADDRESS"] = str(address["privateIpAddress"])
        return environment

    def interruption_notice(self) -> float | None:
        metadata = self._metadata()
        if metadata is None:
            return None
        try:
            events = imds.get("scheduledevents", imds.EVENTS_API_VERSION)
        except (OSError, urllib.error.URLError, ValueError):
            log.debug("scheduled events not reachable", exc_info=True)
            return None
        return imds.preempt_time(events, str(metadata["compute"]["name"]))

    def terminate_self(self, instance_id: str) -> None:
        """Delete this VM (its name, group and subscription from IMDS) with its managed
        identity, so an idle VM stops billing; its NIC, IP and disk go with it."""
        metadata = self._metadata()
        if metadata is None:
            log.error("cannot learn this VM's name; it is left to the manager")
            return
        from azure.mgmt.compute import ComputeManagementClient

        compute = metadata["compute"]
        client = ComputeManagementClient(
            self.credential,
            str(compute["subscriptionId"]),
            base_url=settings.arm_url(),
            credential_scopes=[settings.ARM_SCOPE],
        )
        log.info("deleting Azure VM %s (meadowrun %s)", compute["name"], instance_id)
        client.virtual_machines.begin_delete(
            str(compute["resourceGroupName"]), str(compute["name"])
        )
