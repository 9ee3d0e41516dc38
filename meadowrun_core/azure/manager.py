"""The periodic manager on Azure: what an agent cannot clean up by itself, as
``aws/manager.py`` does on AWS.

A VM whose agent never started or stopped heartbeating cannot delete itself; a client that
died leaves its queues and raffle entries behind. ``manage_once`` is one pass; the Azure
Functions timer (``manager_package.py``) calls ``timer_handler`` every five minutes. It may
import only light modules (the Function's zip carries them, not the compute SDK): VMs are
listed and deleted through ``arm.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from meadowrun_core.azure import installed
from meadowrun_core.azure.account import DataPlane, default_credential, open_data_plane
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.azure.table_allocation_table import (
    VM_LAUNCH_GRACE_SECONDS,
    AzureTableAllocationTable,
)

log = logging.getLogger(__name__)

INSTANCE_ID_TAG = installed.INSTANCE_ID_TAG
LAUNCH_GRACE_SECONDS = VM_LAUNCH_GRACE_SECONDS  # a VM's create, boot and agent install
HEARTBEAT_TIMEOUT_SECONDS = 120.0
QUEUE_MAX_AGE_SECONDS = 86400.0
_MAP_QUEUE = re.compile(r"mr-(?P<map_id>[0-9A-Za-z]+)-(?:requests|results)")


@dataclass
class ManagedVm:
    name: str
    resource_id: str
    instance_id: str  # meadowrun's id (the table's key), from its tag
    created: float
    state: str


def meadowrun_vms(arm: Arm, target: AzureTarget) -> list[ManagedVm]:
    """meadowrun's VMs in the group (those tagged with an instance id)."""
    path = f"{installed.group_path(target)}/providers/Microsoft.Compute/virtualMachines"
    found = []
    page = arm.get(path, installed.API_COMPUTE) or {}
    while True:
        for vm in page.get("value", []):
            tags = vm.get("tags") or {}
            if INSTANCE_ID_TAG not in tags:
                continue
            props = vm.get("properties") or {}
            found.append(
                ManagedVm(
                    name=str(vm["name"]),
                    resource_id=str(vm["id"]),
                    instance_id=str(tags[INSTANCE_ID_TAG]),
                    created=_timestamp(props.get("timeCreated")),
                    state=str(props.get("provisioningState", "")),
                )
            )
        if not page.get("nextLink"):
            return found
        page = arm.get(page["nextLink"], installed.API_COMPUTE) or {}


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0  # unknown: old enough
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def delete_vm(arm: Arm, vm: ManagedVm, wait: bool = False) -> None:
    """Delete the VM (its NIC, public IP and disk go with it: ``deleteOption: Delete``)."""
    arm.delete(vm.resource_id, installed.API_COMPUTE, wait=wait)


def _delete_lost_vms(
    arm: Arm,
    target: AzureTarget,
    table: AzureTableAllocationTable,
    now: float,
    launch_grace: float,
    heartbeat_timeout: float,
) -> list[str]:
    records = {r.instance_id: r for r in table.list_instances()}
    done = []
    for vm in meadowrun_vms(arm, target):
        if vm.state == "Deleting":
            continue
        record = records.get(vm.instance_id)
        if record is None or record.address is None:
            if vm.created >= now - launch_grace:
                continue
            reason = f"never registered {now - vm.created:.0f} s after its creation"
        elif record.last_heartbeat < now - heartbeat_timeout:
            reason = f"no heartbeat for {now - record.last_heartbeat:.0f} s"
        else:
            continue
        delete_vm(arm, vm)
        table.remove_instance(vm.instance_id, f"deleted by the manager: {reason}")
        done.append(f"deleted VM {vm.name} (meadowrun {vm.instance_id}): {reason}")
    return done


def _remove_rows_of_gone_vms(
    arm: Arm, target: AzureTarget, table: AzureTableAllocationTable, now: float, grace: float
) -> list[str]:
    """Rows of instances with no VM once the launch grace is over (a row is written before
    its VM is created)."""
    live = {vm.instance_id for vm in meadowrun_vms(arm, target)}
    done = []
    for record in table.list_instances():
        if record.instance_id not in live and record.created < now - grace:
            table.remove_instance(record.instance_id, "its Azure VM is gone")
            done.append(f"removed table row of gone instance {record.instance_id}")
    return done


def queue_job_prefix(name: str) -> str:
    """The job ids that use the seam's queue ``name`` start with this (map queues
    ``mr-<id>-...`` serve workers ``map-<id>-...``)."""
    match = _MAP_QUEUE.fullmatch(name)
    return f"map-{match['map_id']}-" if match else name


def stale_queues(
    plane: DataPlane, table: AzureTableAllocationTable, now: float, max_age: float
) -> list[tuple[str, float]]:
    """(Storage queue name, age) of meadowrun's queues older than ``max_age`` that no job
    uses (a queue made before its creation time was recorded counts as old)."""
    job_ids = [a.job_id for a in table.list_allocations()]
    service = plane.storage.queue_service()
    found = []
    for queue in service.list_queues(name_starts_with="meadowrun-", include_metadata=True):
        metadata = queue.metadata or {}
        age = now - float(metadata.get("created") or 0)
        prefix = queue_job_prefix(str(metadata.get("name") or queue.name))
        if age > max_age and not any(j.startswith(prefix) for j in job_ids):
            found.append((str(queue.name), age))
    return found


def delete_storage_queue(plane: DataPlane, name: str) -> bool:
    try:
        plane.storage.queue_service().get_queue_client(name).delete_queue()
    except ResourceNotFoundError:
        return False
    return True


def manage_once(
    target: AzureTarget,
    arm: Arm,
    plane: DataPlane,
    now: float | None = None,
    launch_grace: float = LAUNCH_GRACE_SECONDS,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_SECONDS,
    queue_max_age: float = QUEUE_MAX_AGE_SECONDS,
) -> list[str]:
    """One pass: delete lost VMs, forget gone ones, delete abandoned queues, drop long-expired
    raffle entries."""
    now = time.time() if now is None else now
    table = plane.table
    done = _delete_lost_vms(arm, target, table, now, launch_grace, heartbeat_timeout)
    done += _remove_rows_of_gone_vms(arm, target, table, now, launch_grace)
    for name, age in stale_queues(plane, table, now, queue_max_age):
        if delete_storage_queue(plane, name):
            done.append(f"deleted queue {name} ({age / 3600:.1f} h old, no job uses it)")
    table.raffle_entries()  # reading deletes long-expired entries
    for line in done:
        log.info("%s", line)
    return done


def timer_handler(target: AzureTarget, credential: Any | None = None) -> list[str]:
    """The Function's entry point: the group from its app settings, its identity's token."""
    credential = credential or default_credential()
    plane = open_data_plane(credential, create=False)
    return manage_once(target, Arm(credential, target.subscription_id), plane)
