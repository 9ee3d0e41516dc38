"""The Azure manager's pass against the Azure twin and Azurite (orphan and stale VMs deleted,
a live one kept, rows of gone VMs forgotten, abandoned queues and expired raffle entries
deleted), and its Functions package run as the Functions host would import it."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

from meadowrun_core.azure.account import default_credential, open_data_plane
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.install import install
from meadowrun_core.azure.manager import manage_once
from meadowrun_core.azure.manager_package import SCHEDULE, manager_zip
from meadowrun_core.azure.table_entities import RAFFLE
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.seams.raffle import RAFFLE_ENTRY_SECONDS
from tests.azure_admin_cloud import AdminCloud
from tests.azure_twin_web import run_timer_function
from tests.waiting import wait_until

ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("Standard_D2s_v5", 2, 8, 0.096)


def test_the_manager_deletes_lost_vms_and_stale_queues(azure_admin: AdminCloud) -> None:
    cloud = azure_admin
    install(cloud.target)
    credential = default_credential()
    plane = open_data_plane(credential, create=False)
    table = plane.table
    cloud.create_vm("meadowrun-orphan", "orphan")  # created through ARM, never in the table
    assert table.allocate_on_new_instance("stale", SMALL, ["j-s"], ONE, "c", "s", 99, 999)
    table.register_instance("stale", "10.0.0.20", 7)
    cloud.create_vm("meadowrun-stale", "stale")
    time.sleep(2.2)  # the stale one's heartbeat is now older than the live one's
    assert table.allocate_on_new_instance("live", SMALL, ["map-keep-0"], ONE, "c", "l", 99, 999)
    table.register_instance("live", "10.0.0.21", 8)
    cloud.create_vm("meadowrun-live", "live")
    assert table.allocate_on_new_instance("gone", SMALL, ["j-g"], ONE, "c", "g", 99, 999)
    plane.queues.create_queue("mr-old-requests")
    plane.queues.create_queue("mr-keep-requests")
    table.enter_raffle("t-1", 1.0, "c", time.time() - RAFFLE_ENTRY_SECONDS - 5)

    arm = Arm(credential, cloud.target.subscription_id, poll_seconds=0.05)
    time.sleep(0.6)  # past the launch grace: "gone" has a row and never had a VM
    done = manage_once(
        cloud.target, arm, plane, launch_grace=0.5, heartbeat_timeout=2.0, queue_max_age=-10
    )

    assert any(line.startswith("deleted VM meadowrun-orphan") for line in done), done
    assert any(line.startswith("deleted VM meadowrun-stale") for line in done), done
    wait_until(lambda: cloud.vm_names() == ["meadowrun-live"], 10, "only the live VM left")
    assert sorted(r.instance_id for r in table.list_instances()) == ["live"]
    queues = [q.name for q in plane.storage.queue_service().list_queues()]
    assert queues == ["meadowrun-mr-keep-requests"]
    assert table._partition(RAFFLE) == []
    assert manage_once(cloud.target, arm, plane, launch_grace=0.5, heartbeat_timeout=60) == []


def test_the_function_package_runs_the_handler(azure_admin: AdminCloud, tmp_path: Path) -> None:
    """The zip unpacked as the Functions host sees it (``tests/azure_twin_web.py``, with
    ``azure.functions`` stubbed: the runtime's own package): the timer is registered with the
    schedule and its function lists the VMs through ARM. (The deployed package, with its
    dependencies, runs on its own: ``test_azure_function_deploy.py``.)"""
    install(azure_admin.target)
    data = manager_zip()
    assert data == manager_zip()  # deterministic
    app = tmp_path / "app"
    zipfile.ZipFile(io.BytesIO(data)).extractall(app)
    names = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert {"function_app.py", "host.json", "requirements.txt"} <= names
    assert "meadowrun_core/azure/manager.py" in names
    assert "meadowrun_core/azure/vm_provider.py" not in names  # no compute SDK, no client
    lists = azure_admin.twin.requests_to("/virtualMachines")
    result = run_timer_function(app, dict(os.environ), tmp_path, isolated=False)
    assert result.returncode == 0, result.stderr
    assert f"schedule: {SCHEDULE}" in result.stdout
    assert azure_admin.twin.requests_to("/virtualMachines") > lists
