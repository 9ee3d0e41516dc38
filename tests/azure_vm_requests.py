"""The smallest VM create request the Azure twin accepts (inline NIC, no public IP), for
tests that need an ARM record of a VM rather than one made by ``vm_provider.py``."""

from __future__ import annotations

from typing import Any

from tests.azure_twin import LOCATION


def vm_request(size: str, computer_name: str, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "location": LOCATION,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "osProfile": {"computerName": computer_name, "adminUsername": "meadowrun"},
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [
                    {
                        "name": "nic",
                        "properties": {
                            "primary": True,
                            "deleteOption": "Delete",
                            "ipConfigurations": [{"name": "ip", "properties": {}}],
                        },
                    }
                ],
            },
        },
    }
