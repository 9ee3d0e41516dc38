"""Bad input gets a clear error naming the problem and the fix, before anything is launched."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable


def _nothing_launched(home: Path) -> bool:
    return SqliteAllocationTable(home / "state.db").list_instances() == []


def test_unpicklable_function_fails_before_launch(local_cloud: Path) -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(mr.BadInputError, match="cannot be pickled"):
        mr.run_function(uses_lock)
    assert _nothing_launched(local_cloud)


def test_unpicklable_argument_is_named(local_cloud: Path) -> None:
    with pytest.raises(mr.BadInputError, match="keyword argument 'b'"):
        mr.run_function(workloads.add, args=(1,), kwargs={"b": threading.Lock()})
    with pytest.raises(mr.BadInputError, match="argument of task 1"):
        mr.run_map(workloads.double, [1, threading.Lock()])
    assert _nothing_launched(local_cloud)


def test_impossible_resources_name_the_largest_type(local_cloud: Path) -> None:
    with pytest.raises(mr.ResourcesNotAvailableError, match="largest local instance type") as info:
        mr.run_function(workloads.double, args=(1,), resources=mr.Resources(logical_cpu=10_000))
    assert "4 CPU / 16 GB" in str(info.value)
    assert "MEADOWRUN_LOCAL_MAX_CPU" in str(info.value)
    with pytest.raises(mr.ResourcesNotAvailableError):
        mr.run_map(workloads.double, [1], resources_per_task=mr.Resources(memory_gb=10_000))
    assert _nothing_launched(local_cloud)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_gb": -1}, "memory_gb must be zero or positive"),
        ({"logical_cpu": -2}, "logical_cpu must be zero or positive"),
        ({"max_eviction_rate": 150}, "percentage"),
        ({"logical_cpu": "four"}, "must be a number"),
    ],
)
def test_invalid_resources_rejected_on_construction(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        mr.Resources(**kwargs)  # type: ignore[arg-type]


def test_wrong_types_are_explained(local_cloud: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(mr.BadInputError, match="resources must be"):
        mr.run_function(workloads.double, args=(1,), resources={"cpu": 1})  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match="must be callable"):
        mr.run_function(42)  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match="max_num_task_attempts"):
        mr.run_map(workloads.double, [1], max_num_task_attempts=0)
    with pytest.raises(mr.BadInputError, match="empty"):
        mr.run_command([])
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    with pytest.raises(mr.BadInputError, match="AZURE_SUBSCRIPTION_ID"):
        mr.run_function(workloads.double, args=(1,), host=mr.AllocAzureVM())
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(local_cloud / "no-azure-cli"))
    monkeypatch.delenv("MEADOWRUN_AZURE_LOCATION", raising=False)
    with pytest.raises(mr.BadInputError, match="needs a location"):
        mr.run_function(workloads.double, args=(1,), host=mr.AllocAzureVM())
    with pytest.raises(mr.BadInputError, match="not a subnet"):
        mr.AllocAzureVM(subnet_id="subnet-1")
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(local_cloud / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(local_cloud / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(mr.BadInputError, match="no AWS credentials"):
        mr.run_function(workloads.double, args=(1,), host=mr.AllocEC2Instance("us-east-1"))
    assert _nothing_launched(local_cloud)


def test_function_not_importable_on_worker(local_cloud: Path) -> None:
    # the caller's own code and interpreter: checked before anything launches (issue 14)
    with pytest.raises(mr.BadInputError, match="no module 'no_such_module_xyz'"):
        mr.run_function("no_such_module_xyz.func")
    with pytest.raises(mr.BadInputError, match="has no attribute 'nope'"):
        mr.run_function("workloads.nope")
    # an interpreter the client cannot see into: the worker says so
    preinstalled = mr.Deployment.preinstalled_interpreter(sys.executable)
    with pytest.raises(mr.TaskException, match="no_such_module_xyz") as info:
        mr.run_function("no_such_module_xyz.func", deployment=preinstalled)
    assert "could not load the function" in str(info.value)
    with pytest.raises(mr.TaskException, match="has no attribute 'nope'"):
        mr.run_function("json.nope", deployment=preinstalled)


def test_command_that_does_not_exist(local_cloud: Path) -> None:
    with pytest.raises(mr.BadInputError, match="no-such-program-xyz"):
        mr.run_command(["no-such-program-xyz", "--help"])


def test_unpicklable_result_is_explained(local_cloud: Path) -> None:
    with pytest.raises(mr.TaskException, match="cannot be pickled") as info:
        mr.run_function(workloads.return_unpicklable)
    assert "lock" in str(info.value).lower()


def test_out_of_memory_is_reported(local_cloud: Path) -> None:
    with pytest.raises(mr.OutOfMemoryError, match=r"more than the 0.25 GB it asked for"):
        mr.run_function(
            workloads.allocate_memory,
            args=(700, 5.0),
            resources=mr.Resources(logical_cpu=1, memory_gb=0.25),
        )
    assert SqliteAllocationTable(local_cloud / "state.db").list_allocations() == []
