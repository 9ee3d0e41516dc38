"""The ``azure_admin`` fixture: the Azure twin and a fresh Azurite on 127.0.0.1, with every
``MEADOWRUN_AZURE_*`` override and credential the product reads pointed at them, and a
resource group that does not exist yet (install creates it), and no Key Vault yet (install
creates ``VAULT_NAME``). The test user owns the subscription; the twin enforces roles. No
twin network, no VM hosts: VMs created here are ARM records only, which is all the admin side
looks at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meadowrun_core.azure.settings import AzureTarget
from tests import azurite
from tests.azure_twin import LOCATION, SUBSCRIPTION, VAULT_NAME, AzureTwin, running_twin
from tests.azure_vm_requests import vm_request

NEW_GROUP = "meadowrun-admin"


@dataclass
class AdminCloud:
    twin: AzureTwin
    storage: Any  # Azurite's development account
    target: AzureTarget

    def puts(self) -> int:
        """PUT and POST requests the twin has answered so far (the reads listKeys and
        appsettings/list aside)."""
        reads = ("/listkeys", "/config/appsettings/list")
        return sum(
            1
            for method, path in self.twin.server.requests
            if method in ("PUT", "POST") and not path.lower().endswith(reads)
        )

    def create_vm(self, name: str, instance_id: str) -> Any:
        """A meadowrun-tagged VM, as vm_provider.py makes them (an ARM record only)."""
        tags = {"meadowrun": "meadowrun-core", "meadowrun-instance-id": instance_id}
        body = vm_request("Standard_D2s_v5", name, tags)
        vms = self.twin.compute_client().virtual_machines
        return vms.begin_create_or_update(self.target.resource_group, name, body).result()

    def vm_names(self) -> list[str]:
        return sorted(vm.name for vm in self.twin.arm.vms())


@pytest.fixture
def azure_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AdminCloud]:
    with contextlib.ExitStack() as stack:
        (tmp_path / "azurite").mkdir()
        server = azurite.AzuriteServer(tmp_path / "azurite")
        stack.callback(server.stop)
        twin = stack.enter_context(running_twin(tmp_path / "twin", premade_vault=False))
        ca = str(twin.certificate.cert_path)
        environment = {
            "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "MEADOWRUN_AZURE_LOCATION": LOCATION,
            "MEADOWRUN_AZURE_RESOURCE_GROUP": NEW_GROUP,
            "MEADOWRUN_AZURE_STORAGE_ACCOUNT": azurite.ACCOUNT_NAME,
            "MEADOWRUN_AZURE_ARM_URL": twin.base_url,
            "MEADOWRUN_AZURE_VAULT_URL": twin.base_url,
            "MEADOWRUN_AZURE_KEY_VAULT": VAULT_NAME,
            "MEADOWRUN_AZURE_STORAGE_TABLE_URL": server.urls["table"],
            "MEADOWRUN_AZURE_STORAGE_QUEUE_URL": server.urls["queue"],
            "MEADOWRUN_AZURE_STORAGE_BLOB_URL": server.urls["blob"],
            "MEADOWRUN_AZURE_PRICES_URL": twin.prices_url,
            "IDENTITY_ENDPOINT": twin.identity_endpoint,
            "IDENTITY_HEADER": twin.identity_header,
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "AZURE_CONFIG_DIR": str(tmp_path / "no-azure-cli"),
            "MEADOWRUN_HOME": str(tmp_path / "home"),
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        yield AdminCloud(twin, server.account(), AzureTarget(SUBSCRIPTION, LOCATION, NEW_GROUP))
