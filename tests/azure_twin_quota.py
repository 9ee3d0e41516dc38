"""Cores quotas in the Azure twin, as "Resolve errors for resource quotas" (learn.microsoft.com/
azure/azure-resource-manager/troubleshooting/error-resource-quota) and the VM vCPU quota page
describe: regular VMs count against their size family's quota (``standardDSv5Family``), Spot
VMs against ``LowPriorityCores``; a create past a quota fails with 409 ``OperationNotAllowed``
and the message below. Only quotas a test sets exist."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

SkuLookup = Callable[[str, str], dict[str, Any] | None]  # (size, location) -> SKU row


def capabilities(sku: Mapping[str, Any]) -> dict[str, str]:
    return {c["name"]: c["value"] for c in sku.get("capabilities", [])}


def _cores(sku: Mapping[str, Any]) -> int:
    return int(float(capabilities(sku).get("vCPUs", "0")))


def _key(sku: Mapping[str, Any], priority: str) -> str:
    return "lowPriority" if priority == "Spot" else str(sku.get("family", ""))


def quota_error(
    quotas: Mapping[str, int],
    sku: Mapping[str, Any],
    priority: str,
    location: str,
    live: Iterable[tuple[str, str]],
    lookup: SkuLookup,
) -> str | None:
    """The message of the quota a new VM of ``sku`` would exceed, given the ``live`` VMs'
    (size, priority); None within quota."""
    key = _key(sku, priority)
    limit = quotas.get(key)
    if limit is None:
        return None
    used = 0
    for size, vm_priority in live:
        vm_sku = lookup(size, location)
        if vm_sku is not None and _key(vm_sku, vm_priority) == key:
            used += _cores(vm_sku)
    cores = _cores(sku)
    if used + cores <= limit:
        return None
    name = "LowPriorityCores" if key == "lowPriority" else f"{key} Cores"
    return (
        f"Operation could not be completed as it results in exceeding approved {name} quota. "
        f"Additional details - Deployment Model: Resource Manager, Location: {location}, "
        f"Current Limit: {limit}, Current Usage: {used}, Additional Required: {cores}, "
        f"(Minimum) New Limit Required: {used + cores}."
    )
