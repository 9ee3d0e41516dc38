"""The network resources a VM's inline ``networkInterfaceConfigurations`` create in the Azure
twin, shaped as Network Interfaces - Get and Public IP Addresses - Get answer
(``specification/network/resource-manager/.../examples/NetworkInterfaceGet.json``,
``PublicIpAddressGet.json`` in ``Azure/azure-rest-api-specs``). A NIC is named
``<vm>-<config name>``, its public IP ``<vm>-<public IP config name>``; clients follow the ids
in the VM's ``networkProfile.networkInterfaces``, never the names. A subnet an IP
configuration names must exist (``subnet_ids``; the ARM part answers 400
``InvalidResourceReference`` otherwise, as for a missing security group)."""

from __future__ import annotations

from typing import Any


def nic_refs(rg_id: str, vm_name: str, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``networkProfile.networkInterfaces`` of a VM created with ``configs``."""
    refs = []
    for config in configs:
        props = config.get("properties", {})
        refs.append(
            {
                "id": f"{rg_id}/providers/Microsoft.Network/networkInterfaces/"
                f"{vm_name}-{config['name']}",
                "properties": {
                    "primary": props.get("primary", True),
                    "deleteOption": props.get("deleteOption", "Detach"),
                },
            }
        )
    return refs


def subnet_ids(vm: dict[str, Any]) -> list[str]:
    """Ids of the subnets the IP configurations of ``vm`` (a PUT body) name."""
    profile = vm.get("properties", {}).get("networkProfile") or {}
    found = []
    for config in profile.get("networkInterfaceConfigurations") or []:
        for ip in (config.get("properties") or {}).get("ipConfigurations") or []:
            subnet = (ip.get("properties") or {}).get("subnet") or {}
            if subnet.get("id"):
                found.append(str(subnet["id"]))
    return found


def network_resources(
    rg_id: str, vm: dict[str, Any], address: str
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, resource) of each NIC and public IP of ``vm`` (an ARM VM resource), every
    address ``address``: the twin host playing the VM answers on it, privately and publicly."""
    profile = vm["properties"]["networkProfile"]
    found: list[tuple[str, dict[str, Any]]] = []
    configs = profile["networkInterfaceConfigurations"]
    for ref, config in zip(profile["networkInterfaces"], configs, strict=True):
        ip_configs = []
        for ip in config.get("properties", {}).get("ipConfigurations", []):
            ip_id = f"{ref['id']}/ipConfigurations/{ip['name']}"
            props = ip.get("properties", {})
            ip_props: dict[str, Any] = {
                "privateIPAddress": address,
                "privateIPAllocationMethod": "Dynamic",
                "provisioningState": "Succeeded",
                "primary": props.get("primary", True),
            }
            if "subnet" in props:
                ip_props["subnet"] = props["subnet"]
            public = props.get("publicIPAddressConfiguration")
            if public:
                name = f"{vm['name']}-{public['name']}"
                pip_id = f"{rg_id}/providers/Microsoft.Network/publicIPAddresses/{name}"
                ip_props["publicIPAddress"] = {"id": pip_id}
                pip_props = public.get("properties", {})
                found.append(
                    (
                        "publicIPAddresses",
                        {
                            "id": pip_id,
                            "name": name,
                            "type": "Microsoft.Network/publicIPAddresses",
                            "location": vm["location"],
                            "sku": public.get("sku", {"name": "Standard"}),
                            "properties": {
                                "ipAddress": address,
                                "publicIPAllocationMethod": pip_props.get(
                                    "publicIPAllocationMethod", "Static"
                                ),
                                "provisioningState": "Succeeded",
                                "ipConfiguration": {"id": ip_id},
                            },
                        },
                    )
                )
            ip_configs.append({"id": ip_id, "name": ip["name"], "properties": ip_props})
        found.append(
            (
                "networkInterfaces",
                {
                    "id": ref["id"],
                    "name": ref["id"].rsplit("/", 1)[1],
                    "type": "Microsoft.Network/networkInterfaces",
                    "location": vm["location"],
                    "properties": {
                        "provisioningState": "Succeeded",
                        "ipConfigurations": ip_configs,
                        "primary": ref["properties"]["primary"],
                        "virtualMachine": {"id": vm["id"]},
                        **_group(config),
                    },
                },
            )
        )
    return found


def _group(config: dict[str, Any]) -> dict[str, Any]:
    """The NIC's ``networkSecurityGroup`` reference, when its configuration names one."""
    group = config.get("properties", {}).get("networkSecurityGroup")
    return {"networkSecurityGroup": {"id": group["id"]}} if group else {}
