"""The Azure Resource Manager part of the Azure twin: virtual machines, in memory (compute
SKUs: ``azure_twin_skus.py``; network resources: ``azure_twin_network.py``; security
groups, which a VM's NIC configuration may name: ``azure_twin_nsg.py``; operations:
``azure_twin_lro.py``; what install makes: ``azure_twin_resources.py``,
``azure_twin_keyvault.py``; roles: ``azure_twin_rbac.py``; the manager's Function App:
``azure_twin_web.py``). A VM's
``identity`` comes back with its principals filled in.

Shapes follow the Compute REST reference and the examples in ``Azure/azure-rest-api-specs``
(``specification/compute/resource-manager/Microsoft.Compute``):

* Virtual Machines - Create Or Update, Get, List, Delete (``ComputeRP/stable/2024-07-01/
  examples/virtualMachineExamples/VirtualMachine_Create_WithNetworkInterfaceConfiguration
  DnsSettings.json``, ``VirtualMachine_Get.json``, ``VirtualMachine_List_MinimumSet_Gen.json``):
  PUT answers 201 with ``provisioningState: Creating`` and an operation; ``customData`` and
  ``adminPassword`` are never returned; a failed allocation leaves the VM ``Failed`` (it must
  be deleted, as on Azure); DELETE answers 202 with an operation, 204 when there is no VM;
* errors in ARM's common shape ``{"error": {"code", "message"}}`` with the codes and messages
  Azure documents ("Resolve errors for SKU not available", "Allocation failures",
  "Quota errors"): 409 ``SkuNotAvailable``; ``AllocationFailed``, ``ZonalAllocationFailed``,
  ``OverconstrainedAllocationRequest`` on the operation; 409 ``OperationNotAllowed``
  "...exceeding approved <family> Cores quota" (Spot counts against ``LowPriorityCores``);
  404 ``ResourceGroupNotFound``, ``ResourceNotFound``.

Hooks: ``on_vm_created`` callbacks run in the create's operation before it succeeds; one may
return the address of the machine playing the VM (a twin host), which its NICs and public IPs
then carry. ``on_vm_deleted`` callbacks run as a delete (or ``evict``) completes. ``fail_next``
injects capacity errors; ``set_quota`` sets a cores quota (``azure_twin_quota.py``).
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests import azure_twin_resources
from tests.azure_twin_http import ARM_SCOPE, Request, Response, error, no_group, not_found
from tests.azure_twin_keyvault import KeyVaultsTwin
from tests.azure_twin_lro import Operations, now
from tests.azure_twin_network import network_resources, nic_refs, subnet_ids
from tests.azure_twin_nsg import NsgTwin, missing_reference
from tests.azure_twin_quota import capabilities, quota_error
from tests.azure_twin_rbac import vm_identity
from tests.azure_twin_skus import SkuCatalog
from tests.azure_twin_web import WebTwin

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers"
_SKUS = re.compile(_SUB + r"/providers/Microsoft\.Compute/skus", re.I)
_VMS = re.compile(
    rf"(?:{_RG}|/subscriptions/[^/]+/providers)/Microsoft\.Compute/virtualMachines", re.I
)
_VM = re.compile(_RG + r"/Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)", re.I)
_OP = re.compile(
    _SUB + r"/providers/Microsoft\.Compute/locations/[^/]+/operations/(?P<op>[^/]+)", re.I
)
_NET = re.compile(
    _RG + r"/Microsoft\.Network/(?P<kind>networkInterfaces|publicIPAddresses)/(?P<name>[^/]+)", re.I
)
ASYNC_ERRORS = frozenset(
    {"AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest"}
)
_ALLOCATION_MESSAGE = (
    "Allocation failed. We do not have sufficient capacity for the requested VM size in this "
    "region. Read more about improving likelihood of allocation success at "
    "http://aka.ms/allocation-guidance"
)


@dataclass
class TwinVm:
    """What a host twin needs to play a VM; ``resource`` is its ARM resource."""

    name: str
    resource_group: str
    location: str
    size: str
    priority: str  # "Regular" or "Spot"
    tags: dict[str, str]
    custom_data: str | None  # cloud-init user data, decoded
    admin_username: str
    ssh_public_keys: list[str]
    vm_id: str
    resource: dict[str, Any] = field(repr=False, default_factory=dict)
    address: str | None = None
    network_keys: list[tuple[str, str, str]] = field(default_factory=list, repr=False)

    @property
    def state(self) -> str:
        return str(self.resource["properties"]["provisioningState"])


@dataclass
class _Fault:
    code: str
    size: str | None
    priority: str | None
    times: int


class ArmTwin:
    def __init__(
        self,
        skus: list[dict[str, Any]],
        subscription: str,
        sku_page_size: int = 8,
        retry_after: int = 0,
        provision_seconds: float = 0.0,
    ) -> None:
        self.sku_catalog = SkuCatalog(skus, sku_page_size)
        self.subscription = subscription
        self.provision_seconds = provision_seconds
        self.operations = Operations(subscription, retry_after)
        self.on_vm_created: list[Callable[[TwinVm], str | None]] = []
        self.on_vm_deleted: list[Callable[[TwinVm], None]] = []
        self.resource_groups: dict[str, str] = {}  # lower-cased name -> location
        self.nsgs = NsgTwin(self.resource_groups, lambda: [vm.resource for vm in self.vms()])
        self.key_vaults = KeyVaultsTwin(subscription, self.resource_groups)
        self.resources = azure_twin_resources.for_arm(self)  # what install makes
        self.web = WebTwin(subscription, self.resource_groups, self)  # the manager's app
        self._lock = threading.Lock()
        self._vms: dict[tuple[str, str], TwinVm] = {}  # (rg, name), lower-cased
        self._net: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, rg, name), lower
        self._faults: list[_Fault] = []
        self._quotas: dict[str, int] = {}  # family or "lowPriority" -> cores
        self._next_ip = 4

    @property
    def skus(self) -> list[dict[str, Any]]:
        return self.sku_catalog.skus

    # --- test controls -------------------------------------------------------------------
    def add_resource_group(self, name: str, location: str) -> None:
        self.resource_groups[name.lower()] = location

    def fail_next(
        self, code: str, size: str | None = None, priority: str | None = None, times: int = 1
    ) -> None:
        """The next ``times`` creates of ``size`` (any if None) at ``priority`` ("Spot",
        "Regular", None: either) fail with ``code``: allocation failures on the operation,
        ``SkuNotAvailable`` and ``OperationNotAllowed`` (a quota message) at once with 409,
        any other code at once with 400."""
        with self._lock:
            self._faults.append(_Fault(code, size, priority, times))

    def set_quota(self, family: str, cores: int) -> None:
        """Cores allowed for a size family (``standardDSv5Family``) or ``lowPriority`` (Spot)."""
        with self._lock:
            self._quotas[family] = cores

    def vms(self) -> list[TwinVm]:
        with self._lock:
            return list(self._vms.values())

    def evict(self, resource_group: str, name: str) -> None:
        """Azure reclaims a Spot VM (``evictionPolicy: Delete``): it and its NICs go."""
        with self._lock:
            vm = self._vms[(resource_group.lower(), name.lower())]
        self._finish_delete(vm)

    # --- the REST API ----------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        path, method, query = request.path, request.method, request.query
        if not path.lower().startswith("/subscriptions/"):
            return None
        if request.token_scope() != ARM_SCOPE:
            return error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or invalid.",
            )
        if "api-version" not in query:
            return error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if path.split("/")[2].lower() != self.subscription.lower():
            return error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{path.split('/')[2]}' could not be found.",
            )
        if _SKUS.fullmatch(path) and method == "GET":
            return self.sku_catalog.list(request)
        if (m := _OP.fullmatch(path)) and method == "GET":
            return self.operations.answer(m["op"], query.get("monitor") == "true")
        if (m := _VMS.fullmatch(path)) and method == "GET":
            return self._list_vms(m["rg"])
        if m := _VM.fullmatch(path):
            if m["rg"].lower() not in self.resource_groups:
                return no_group(m["rg"])
            if method == "PUT":
                return self._create(request, m["rg"], m["name"])
            if method == "GET":
                with self._lock:
                    vm = self._vms.get((m["rg"].lower(), m["name"].lower()))
                if vm is None:
                    return not_found("Microsoft.Compute/virtualMachines", m["name"], m["rg"])
                return Response(200, vm.resource)
            if method == "DELETE":
                return self._delete(request, m["rg"], m["name"])
        if (answer := self.nsgs.handle(request)) is not None:
            return answer
        if (answer := self.resources.handle(request)) is not None:
            return answer
        if (answer := self.web.handle(request)) is not None:
            return answer
        if (answer := self.key_vaults.handle(request)) is not None:
            return answer
        if (m := _NET.fullmatch(path)) and method == "GET":
            with self._lock:
                found = self._net.get((m["kind"].lower(), m["rg"].lower(), m["name"].lower()))
            if found is None:
                return not_found(f"Microsoft.Network/{m['kind']}", m["name"], m["rg"])
            return Response(200, found)
        return error(400, "InvalidResourceType", f"The twin does not serve {method} {path}.")

    def _create(self, request: Request, rg: str, name: str) -> Response:
        body = request.json() or {}
        props = body.get("properties") or {}
        location = str(body.get("location", "")).lower()
        size = str((props.get("hardwareProfile") or {}).get("vmSize", ""))
        priority = str(props.get("priority") or "Regular")
        network = props.get("networkProfile") or {}
        if not location:
            return error(400, "LocationRequired", "The location property is required.")
        if network.get("networkInterfaces") or not network.get("networkInterfaceConfigurations"):
            return error(
                400,
                "InvalidParameter",
                "The twin creates VMs with inline networkInterfaceConfigurations only.",
            )
        rg_id = request.path.split("/providers/")[0]
        nic_id = nic_refs(rg_id, name, network["networkInterfaceConfigurations"])[0]["id"]
        if (missing := self.nsgs.missing_reference(body, nic_id)) is not None:
            return missing
        for subnet_id in subnet_ids(body):
            if not self.resources.subnet_exists(subnet_id):
                return missing_reference(subnet_id, nic_id)
        with self._lock:
            if (rg.lower(), name.lower()) in self._vms:
                return error(409, "Conflict", f"The twin does not update VMs; '{name}' exists.")
        sku = self.sku_catalog.offered(size, location)
        fault = self._take_fault(size, priority)
        if sku is None or (fault and fault.code == "SkuNotAvailable"):
            return error(
                409,
                "SkuNotAvailable",
                f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                f"Restrictions: {size}' is currently not available in location '{location}'. "
                "Please try another size or deploy to a different location or different zone. "
                "See https://aka.ms/azureskunotavailable for details.",
            )
        if priority == "Spot" and capabilities(sku).get("LowPriorityCapable") != "True":
            return error(409, "SkuNotAvailable", f"The VM size {size} is not available for Spot.")
        with self._lock:
            live = [(v.size, v.priority) for v in self._vms.values() if v.state != "Failed"]
        quota = quota_error(self._quotas, sku, priority, location, live, self.sku_catalog.offered)
        if quota is None and fault and fault.code == "OperationNotAllowed":
            quota = "Operation could not be completed as it results in exceeding approved "
            quota += "Total Regional Cores quota."
        if quota:
            return error(409, "OperationNotAllowed", quota)
        if fault and fault.code not in ASYNC_ERRORS:
            return error(400, fault.code, f"The request failed with {fault.code} (injected).")
        vm = self._new_vm(rg, name, location, size, priority, body)
        late = fault.code if fault and fault.code in ASYNC_ERRORS else None
        op = self.operations.start(lambda: self._finish_create(vm, late))
        return Response(201, vm.resource, self.operations.headers(request, location, op, False))

    def _new_vm(
        self, rg: str, name: str, location: str, size: str, priority: str, body: dict[str, Any]
    ) -> TwinVm:
        props = dict(body["properties"])
        os_profile = dict(props.get("osProfile") or {})
        custom = os_profile.pop("customData", None)
        os_profile.pop("adminPassword", None)
        ssh = (os_profile.get("linuxConfiguration") or {}).get("ssh") or {}
        rg_id = f"/subscriptions/{self.subscription}/resourceGroups/{rg}"
        vm = TwinVm(
            name=name,
            resource_group=rg,
            location=location,
            size=size,
            priority=priority,
            tags=dict(body.get("tags") or {}),
            custom_data=base64.b64decode(custom).decode() if custom else None,
            admin_username=str(os_profile.get("adminUsername", "")),
            ssh_public_keys=[str(k["keyData"]) for k in ssh.get("publicKeys", [])],
            vm_id=str(uuid.uuid4()),
        )
        configs = props["networkProfile"]["networkInterfaceConfigurations"]
        props.update(
            osProfile=os_profile,
            networkProfile={
                **props["networkProfile"],
                "networkInterfaces": nic_refs(rg_id, name, configs),
            },
            vmId=vm.vm_id,
            provisioningState="Creating",
            timeCreated=now(),
        )
        vm.resource = {
            "id": f"{rg_id}/providers/Microsoft.Compute/virtualMachines/{name}",
            "name": name,
            "type": "Microsoft.Compute/virtualMachines",
            "location": location,
            "tags": vm.tags,
            "properties": props,
        }
        if body.get("identity"):  # principals filled in, as ARM does
            found = self.resources.resources.get
            vm.resource["identity"] = vm_identity(body["identity"], lambda i: found(i.lower()))
        if body.get("zones"):
            vm.resource["zones"] = body["zones"]
        with self._lock:
            self._vms[(rg.lower(), name.lower())] = vm
        return vm

    def _take_fault(self, size: str, priority: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.size in (None, size) and fault.priority in (None, priority):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _finish_create(self, vm: TwinVm, late_error: str | None) -> dict[str, str] | None:
        time.sleep(self.provision_seconds)
        if late_error:
            vm.resource["properties"]["provisioningState"] = "Failed"
            return {"code": late_error, "message": _ALLOCATION_MESSAGE}
        address = None
        for callback in self.on_vm_created:
            address = callback(vm) or address
        rg_id = f"/subscriptions/{self.subscription}/resourceGroups/{vm.resource_group}"
        with self._lock:
            if address is None:
                address, self._next_ip = f"10.0.0.{self._next_ip}", self._next_ip + 1
            vm.address = address
            for kind, resource in network_resources(rg_id, vm.resource, address):
                key = (kind.lower(), vm.resource_group.lower(), resource["name"].lower())
                self._net[key] = resource
                vm.network_keys.append(key)
        vm.resource["properties"]["provisioningState"] = "Succeeded"
        return None

    def _list_vms(self, rg: str | None) -> Response:
        if rg is not None and rg.lower() not in self.resource_groups:
            return no_group(rg)
        with self._lock:
            found = [
                vm.resource
                for (vm_rg, _), vm in sorted(self._vms.items())
                if rg is None or vm_rg == rg.lower()
            ]
        return Response(200, {"value": found})

    def _delete(self, request: Request, rg: str, name: str) -> Response:
        with self._lock:
            vm = self._vms.get((rg.lower(), name.lower()))
        if vm is None:
            return Response(204)
        vm.resource["properties"]["provisioningState"] = "Deleting"
        op = self.operations.start(lambda: self._finish_delete(vm))
        return Response(202, None, self.operations.headers(request, vm.location, op, True))

    def _finish_delete(self, vm: TwinVm) -> None:
        with self._lock:
            if self._vms.pop((vm.resource_group.lower(), vm.name.lower()), None) is None:
                return
            for key in vm.network_keys:
                self._net.pop(key, None)
        for callback in self.on_vm_deleted:
            callback(vm)
