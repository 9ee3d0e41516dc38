"""The public API end to end on the real local cloud."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from pathlib import Path

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable


def _table(home: Path) -> SqliteAllocationTable:
    return SqliteAllocationTable(home / "state.db")


def test_run_function_with_args_and_kwargs(local_cloud: Path) -> None:
    assert mr.run_function(workloads.add, args=(1, 2), kwargs={"c": 3}) == 6


def test_run_function_by_dotted_name(local_cloud: Path) -> None:
    assert mr.run_function("workloads.double", args=(5,)) == 10


def test_run_function_lambda_and_closure(local_cloud: Path) -> None:
    offset = 7
    assert mr.run_function(lambda x: x + offset, args=(1,)) == 8


def test_remote_exception_carries_traceback(local_cloud: Path) -> None:
    with pytest.raises(mr.TaskException) as info:
        mr.run_function(workloads.fail_with_value_error, args=("boom 123",))
    error = info.value
    assert isinstance(error.original, ValueError)
    assert "boom 123" in str(error)
    assert "fail_with_value_error" in error.remote_traceback
    assert "Traceback" in error.remote_traceback


def test_async_twins(local_cloud: Path) -> None:
    async def main() -> tuple[object, ...]:
        return await asyncio.gather(
            mr.run_function_async(workloads.double, args=(4,)),
            mr.run_map_async(workloads.double, [1, 2, 3]),
            mr.run_command_async(["true"]),
        )

    value, mapped, command = asyncio.run(main())
    assert value == 8
    assert mapped == [2, 4, 6]
    assert isinstance(command, mr.CommandResult) and command.return_code == 0


def test_async_map_as_completed(local_cloud: Path) -> None:
    async def main() -> list[mr.TaskResult]:
        return [r async for r in mr.run_map_as_completed_async(workloads.double, range(10))]

    results = asyncio.run(main())
    assert sorted(r.task_id for r in results) == list(range(10))
    assert all(r.is_success and r.result == 2 * r.task_id for r in results)


def test_run_command_streams_output_and_exit_code(
    local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meadowrun_core.job")
    result = mr.run_command(
        ["sh", "-c", "echo out-$GREETING; echo err-line >&2; exit 3"],
        environment={"GREETING": "hello"},
    )
    assert isinstance(result, mr.CommandResult)
    assert result.return_code == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "meadowrun_core.job"]
    assert f"[{result.job_id}] out-hello" in messages
    assert f"[{result.job_id}] err-line" in messages


def test_output_streams_while_job_runs(local_cloud: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meadowrun_core.job")
    handle = mr.run_function(workloads.print_and_sleep, args=(3, 1.0), wait_for_result=False)
    deadline = time.monotonic() + 20
    while not any("line 0" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no output streamed"
        time.sleep(0.05)
    assert not handle.done(), "output arrived only after the job finished"
    assert handle.result(timeout=30) == "finished"
    lines = [r.getMessage().split("] ", 1)[1] for r in caplog.records if "line " in r.getMessage()]
    assert lines == ["line 0", "line 1", "line 2"]


def test_handle_wait_poll_and_result(local_cloud: Path) -> None:
    handle = mr.run_function(workloads.double, args=(21,), wait_for_result=False)
    assert isinstance(handle, mr.JobHandle)
    assert handle.result(timeout=30) == 42
    assert handle.done()


def test_handle_cancel_stops_worker_and_frees_allocation(local_cloud: Path) -> None:
    handle = mr.run_function(workloads.worker_pid_and_sleep, args=(60,), wait_for_result=False)
    deadline = time.monotonic() + 20
    while not _table(local_cloud).list_allocations() or not any(
        a.worker_pid for a in _table(local_cloud).list_allocations()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (allocation,) = _table(local_cloud).list_allocations()
    assert handle.cancel()
    deadline = time.monotonic() + 10
    while _table(local_cloud).list_allocations():
        assert time.monotonic() < deadline, "allocation not freed after cancel"
        time.sleep(0.05)
    import psutil

    assert allocation.worker_pid is not None
    assert (
        not psutil.pid_exists(allocation.worker_pid)
        or psutil.Process(allocation.worker_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_run_map_as_completed_and_failures(local_cloud: Path) -> None:
    results = list(
        mr.run_map_as_completed(workloads.fail_with_value_error, ["a", "b"], num_concurrent_tasks=1)
    )
    assert sorted(r.task_id for r in results) == [0, 1]
    assert all(not r.is_success for r in results)
    assert all(isinstance(r.exception, mr.TaskException) for r in results)
    assert all(
        "fail_with_value_error" in r.exception.remote_traceback for r in results if r.exception
    )
    with pytest.raises(mr.RunMapTasksFailedException) as info:
        mr.run_map(workloads.fail_with_value_error, ["x"])
    assert info.value.failed_tasks[0].exception is not None
    assert "ValueError" in str(info.value)


def test_map_retries_failed_tasks(local_cloud: Path, tmp_path: Path) -> None:
    results = mr.run_map(
        partial(workloads.fail_first_time, marker_dir=str(tmp_path)),
        range(6),
        max_num_task_attempts=2,
        num_concurrent_tasks=2,
    )
    assert results == [x + 1000 for x in range(6)]


def test_map_many_tiny_tasks(local_cloud: Path) -> None:
    results = mr.run_map(workloads.double, range(3000), num_concurrent_tasks=2)
    assert results == [2 * i for i in range(3000)]


def test_environment_variables_reach_worker(local_cloud: Path) -> None:
    deployment = mr.Deployment.mirror_local(environment_variables={"MY_SETTING": "xyz"})
    assert mr.run_function(workloads.read_env, args=("MY_SETTING",), deployment=deployment) == "xyz"


def test_reuses_instances_before_launching(local_cloud: Path) -> None:
    for _ in range(5):
        mr.run_function(workloads.double, args=(1,))
    assert len(_table(local_cloud).list_instances()) == 1


def test_first_submissions_from_many_threads(local_cloud: Path) -> None:
    """Threads submitting the process's first jobs at once share one backend and key."""
    from concurrent.futures import ThreadPoolExecutor

    from meadowrun_core.client.runtime import ClientRuntime

    ClientRuntime.get().forget_backends()
    with ThreadPoolExecutor(8) as pool:
        handles = list(
            pool.map(
                lambda i: mr.run_function(workloads.double, args=(i,), wait_for_result=False),
                range(8),
            )
        )
    assert [h.result(timeout=60) for h in handles] == [2 * i for i in range(8)]


def test_abandoning_map_as_completed_stops_its_workers(local_cloud: Path) -> None:
    results = mr.run_map_as_completed(
        partial(workloads.slow_square, seconds=0.3), range(100), num_concurrent_tasks=2
    )
    first = [next(results) for _ in range(3)]
    assert all(r.is_success for r in first)
    results.close()  # the caller lost interest: its slots must stop and free their room
    deadline = time.monotonic() + 10
    while _table(local_cloud).list_allocations():
        assert time.monotonic() < deadline, "map slots kept running after the caller left"
        time.sleep(0.05)


def test_host_with_its_own_home(local_cloud: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-cloud"
    host = mr.AllocLocalInstance(home=str(other))
    try:
        assert mr.run_function(workloads.double, args=(8,), host=host) == 16
        assert len(_table(other).list_instances()) == 1
        assert _table(local_cloud).list_instances() == []
    finally:
        for record in _table(other).list_instances():
            assert record.agent_pid is not None
            import os
            import signal

            os.kill(record.agent_pid, signal.SIGTERM)


def test_job_reports_and_placement(local_cloud: Path) -> None:
    handle = mr.run_function(
        workloads.report_then_wait, args=([{"port": 1234}, "second"], 1.0), wait_for_result=False
    )
    assert handle.next_report(timeout=30) == {"port": 1234}
    assert handle.next_report(timeout=5) == "second"
    assert handle.wait_started(timeout=1)
    assert handle.job_id and handle.job_id.startswith("job-")
    assert handle.instance_id in {i.instance_id for i in _table(local_cloud).list_instances()}
    assert handle.instance_address and handle.instance_address.startswith("127.0.0.1:")
    assert handle.result(timeout=30) == "done"
    with pytest.raises(TimeoutError):
        handle.next_report(timeout=0.1)
    with pytest.raises(RuntimeError, match="only inside a meadowrun job"):
        mr.report("not in a job")


def test_cancel_and_wait_frees_the_allocation(local_cloud: Path) -> None:
    handle = mr.run_function(workloads.worker_pid_and_sleep, args=(60,), wait_for_result=False)
    assert handle.wait_started(timeout=30)
    handle.cancel(wait=True)
    assert _table(local_cloud).list_allocations() == []


def test_cancel_while_instance_launches_frees_the_allocation(local_cloud: Path) -> None:
    handle = mr.run_function(
        workloads.worker_pid_and_sleep,
        args=(60,),
        wait_for_result=False,
        resources=mr.Resources(logical_cpu=2, memory_gb=2),
    )
    deadline = time.monotonic() + 10
    while not _table(local_cloud).list_allocations():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert not handle.wait_started(timeout=0)  # still launching
    handle.cancel()
    deadline = time.monotonic() + 10
    while _table(local_cloud).list_allocations():
        assert time.monotonic() < deadline, "allocation leaked by a cancel during launch"
        time.sleep(0.05)


def test_interruption_notice_is_visible_inside_the_job(local_cloud: Path) -> None:
    from meadowrun_core.local import admin

    assert mr.interruption_notice() is None  # not in a job
    handle = mr.run_function(
        workloads.wait_for_interruption_notice, args=(30,), wait_for_result=False
    )
    assert handle.wait_started(timeout=30)
    assert handle.instance_id is not None
    admin.interrupt(handle.instance_id, delay_seconds=5)
    notice = handle.result(timeout=30)
    assert notice is not None and notice > time.time()
