"""meadowrun's network security group, finding a VM's address, and its image reference.

Least exposure, as on AWS (``aws/security_group.py``): port 22 is admitted only from the
address of a client that launched (as the checkip service sees it) or from the host's
``ssh_cidr``; a client from a new address adds its own rule. VMs reach each other through
Azure's default ``AllowVnetInBound``; everything else a client needs goes through SSH.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.request
from typing import Any

from meadowrun_core.exceptions import BadInputError, MeadowrunError

log = logging.getLogger(__name__)

NSG_NAME = "meadowrun-ssh"
CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_ENV = "MEADOWRUN_CHECKIP_URL"
FIRST_PRIORITY = 1000


def client_cidr(ssh_cidr: str | None) -> str:
    """The CIDR allowed to SSH in: ``ssh_cidr`` if given, else this client's own address."""
    if ssh_cidr is not None:
        return str(ipaddress.ip_network(ssh_cidr, strict=False))
    url = os.environ.get(CHECKIP_ENV) or CHECKIP_URL
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read(100).decode().strip()
        return f"{ipaddress.ip_address(text)}/32"
    except (OSError, ValueError) as exc:
        raise MeadowrunError(
            f"could not learn this client's public address from {url} ({exc}); give the "
            "addresses that may SSH to VMs with AllocAzureVM(ssh_cidr=...)"
        ) from exc


def _ssh_rule(priority: int, cidr: str) -> dict[str, Any]:
    return {
        "properties": {
            "protocol": "Tcp",
            "sourceAddressPrefix": cidr,
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "22",
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
            "description": "meadowrun: SSH from a client",
        }
    }


def ensure_nsg(network: Any, resource_group: str, location: str, cidr: str) -> str:
    """The group's id, created if missing, with a rule admitting ``cidr`` to port 22."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        group = network.network_security_groups.get(resource_group, NSG_NAME)
    except ResourceNotFoundError:
        body = {
            "location": location,
            "tags": {"meadowrun": "meadowrun-core"},
            "properties": {
                "securityRules": [
                    {"name": f"ssh-{FIRST_PRIORITY}", **_ssh_rule(FIRST_PRIORITY, cidr)}
                ]
            },
        }
        group = network.network_security_groups.begin_create_or_update(
            resource_group, NSG_NAME, body
        ).result()
        log.info("created network security group %s admitting SSH from %s", NSG_NAME, cidr)
        return str(group.id)
    rules = list(group.security_rules or [])
    if any(r.destination_port_range == "22" and r.source_address_prefix == cidr for r in rules):
        return str(group.id)
    priority = max([FIRST_PRIORITY - 1, *(r.priority for r in rules)]) + 1
    if priority > 4096:
        raise BadInputError(
            f"the network security group {NSG_NAME} has no free rule priority left; remove "
            "rules for addresses no longer in use"
        )
    network.security_rules.begin_create_or_update(
        resource_group, NSG_NAME, f"ssh-{priority}", _ssh_rule(priority, cidr)
    ).result()
    log.info("network security group %s now admits SSH from %s", NSG_NAME, cidr)
    return str(group.id)


def vm_address(
    compute: Any, network: Any, resource_group: str, vm_name: str, private: bool
) -> str | None:
    """The VM's public (or private) address once it has been created, else None."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        vm = compute.virtual_machines.get(resource_group, vm_name)
    except ResourceNotFoundError:
        return None
    if vm.provisioning_state != "Succeeded" or not vm.network_profile.network_interfaces:
        return None
    nic_id = vm.network_profile.network_interfaces[0].id
    nic = network.network_interfaces.get(_group_of(nic_id), nic_id.rsplit("/", 1)[1])
    config = nic.ip_configurations[0]
    if private:
        return str(config.private_ip_address) if config.private_ip_address else None
    if config.public_ip_address is None:
        return None
    ip_id = config.public_ip_address.id
    public = network.public_ip_addresses.get(_group_of(ip_id), ip_id.rsplit("/", 1)[1])
    return str(public.ip_address) if public.ip_address else None


def image_reference(image: str) -> dict[str, str]:
    """``AllocAzureVM.image`` as a VM's ``storageProfile.imageReference``."""
    if image.startswith("/subscriptions/"):
        return {"id": image}
    publisher, offer, sku, version = image.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def _group_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[[p.lower() for p in parts].index("resourcegroups") + 1]
