"""AllocAzureVM on the Azure twin (tests/azure_cloud.py) when things go wrong, and run_command:
the same guarantees as on the EC2 twin (tests/test_aws_e2e.py, test_aws_twin_deployments.py)
and the local cloud, through Table storage, Storage queues and SSH to twin hosts. Kept apart
from tests/test_azure_e2e.py (the happy paths) so each module stays short."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import meadowrun_core as mr
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON
from tests import twin_workloads as work
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud


def test_run_command_on_the_twin(azure: AzureTwinCloud) -> None:
    result = mr.run_command(
        ["/bin/sh", "-c", "hostname > /tmp/command-ran; test -x " + AGENT_PYTHON],
        host=azure.host(),
        deployment=DEPLOYMENT,
    )
    assert isinstance(result, mr.CommandResult) and result.return_code == 0
    (vm,) = azure.vms()
    host = azure.twin_host(vm.name)
    assert host.path("/tmp/command-ran").read_text().strip() == vm.name  # ran on that VM
    failed = mr.run_command(["/bin/sh", "-c", "exit 3"], host=azure.host(), deployment=DEPLOYMENT)
    # the command's own exit status comes back
    assert isinstance(failed, mr.CommandResult) and failed.return_code == 3


def test_killed_worker_task_is_redelivered(azure: AzureTwinCloud) -> None:
    results = mr.run_map(
        work.die_once,
        range(6),
        host=azure.host(),
        num_concurrent_tasks=1,  # one VM: the marker is on its disk
        max_num_task_attempts=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x + 100 for x in range(6)]  # task 3 ran again, none was lost
    (vm,) = azure.vms()
    assert azure.twin_host(vm.name).path("/tmp/died-3").exists()  # its worker was killed


_CLIENT = textwrap.dedent(
    """
    import meadowrun_core as mr
    from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON
    from tests import twin_workloads as work
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(AGENT_PYTHON))
    print("starting", flush=True)
    mr.run_function(work.sleep_and_mark, args=(30, "orphan-ran"), host=mr.AllocAzureVM(),
                    deployment=deployment)
    """
)


def test_sigkilled_client_leaves_no_worker_past_its_lease(azure: AzureTwinCloud) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable

    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT],
        cwd=Path(__file__).parent.parent,
        env=os.environ.copy(),  # the fixture's Azure settings: the same subscription and twin
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        table = AzureTableAllocationTable(azure.storage.table_service())
        deadline = time.monotonic() + 180
        worker_pid = None
        while worker_pid is None:  # the job's own worker (not an idle pre-started one)
            assert time.monotonic() < deadline, "the job never started on Azure"
            assert client.poll() is None, client.stdout.read() if client.stdout else ""
            with contextlib.suppress(ResourceNotFoundError):  # no table yet
                worker_pid = next(
                    (a.worker_pid for a in table.list_allocations() if a.worker_pid), None
                )
            time.sleep(0.3)
        assert Path(f"/proc/{worker_pid}").exists()  # the twin shares the pid namespace
        client.send_signal(signal.SIGKILL)
        client.wait()
        killed = time.monotonic()
        (vm,) = azure.vms()
        host = azure.twin_host(vm.name)
        lease = float(os.environ["MEADOWRUN_LEASE_SECONDS"])
        # the lease lapses within its length; the agent's reconciler (0.5 s) then reads the
        # table on Azurite, slower on a loaded machine: a margin for that
        deadline = killed + lease + 10
        while Path(f"/proc/{worker_pid}").exists():
            assert time.monotonic() < deadline, "the worker outlived its client's lease"
            time.sleep(0.2)
        print(f"worker stopped {time.monotonic() - killed:.1f} s after its client was killed")
        assert not host.path("/tmp/orphan-ran").exists()
        deadline = time.monotonic() + 10
        while table.list_allocations():  # its room in the table is freed too
            assert time.monotonic() < deadline, "the killed client's allocation stayed"
            time.sleep(0.2)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
