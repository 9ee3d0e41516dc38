"""retry_with_more_memory: an attempt that ran out of memory runs again with twice the memory,
within max_num_task_attempts, up to the largest instance type; every attempt is visible."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable

# Asks 0.25 GB, holds 300 MB (plus the interpreter): out of memory at 0.25 GB, fits in 0.5 GB.
SMALL = mr.Resources(logical_cpu=1, memory_gb=0.25)
HUNGRY_MB = 300
HOLD_SECONDS = 2.5  # longer than the agent's memory check interval


def test_without_the_flag_a_job_out_of_memory_fails(local_cloud: Path) -> None:
    with pytest.raises(mr.OutOfMemoryError, match=r"more than the 0\.25 GB"):
        mr.run_function(
            workloads.allocate_memory,
            args=(HUNGRY_MB, HOLD_SECONDS),
            resources=SMALL,
            max_num_task_attempts=2,
        )


def test_run_function_retries_with_twice_the_memory(local_cloud: Path) -> None:
    handle = mr.run_function(
        workloads.allocate_memory,
        args=(HUNGRY_MB, HOLD_SECONDS),
        resources=SMALL,
        max_num_task_attempts=2,
        retry_with_more_memory=True,
        wait_for_result=False,
    )
    assert handle.result(timeout=120) == HUNGRY_MB * 2**20
    assert handle.attempts == (
        mr.Attempt(1, 0.25, "out_of_memory"),
        mr.Attempt(2, 0.5, "succeeded"),
    )


def test_the_attempts_run_out_and_the_error_names_each_memory(local_cloud: Path) -> None:
    with pytest.raises(mr.OutOfMemoryError, match=r"attempts with 0.125 GB, 0.25 GB"):
        mr.run_function(
            workloads.allocate_memory,
            args=(HUNGRY_MB, HOLD_SECONDS),
            resources=mr.Resources(logical_cpu=1, memory_gb=0.125),
            max_num_task_attempts=2,
            retry_with_more_memory=True,
        )


def test_run_map_retries_only_the_tasks_out_of_memory(local_cloud: Path) -> None:
    hungry = [1, 4]
    results = sorted(
        mr.run_map_as_completed(
            partial(
                workloads.allocate_memory_for,
                hungry=hungry,
                megabytes=HUNGRY_MB,
                hold_seconds=HOLD_SECONDS,
            ),
            range(6),
            resources_per_task=SMALL,
            num_concurrent_tasks=2,
            max_num_task_attempts=3,
            retry_with_more_memory=True,
        ),
        key=lambda r: r.task_id,
    )
    assert [r.result for r in results] == [x * x for x in range(6)]
    for r in results:
        if r.task_id in hungry:
            assert r.attempt == 2
            assert r.attempts == (
                mr.Attempt(1, 0.25, "out_of_memory"),
                mr.Attempt(2, 0.5, "succeeded"),
            )
        else:
            assert r.attempt == 1 and r.attempts == (mr.Attempt(1, 0.25, "succeeded"),)


def test_memory_is_capped_at_the_largest_instance_type(local_cloud: Path) -> None:
    """On a local cloud of at most 0.4 GB the second attempt gets 0.4 GB, not 0.5, and with
    no more to give, a third attempt is not made."""
    host = mr.AllocLocalInstance(max_memory_gb=0.4)
    handle = mr.run_function(
        workloads.allocate_memory,
        args=(500, HOLD_SECONDS),
        host=host,
        resources=SMALL,
        max_num_task_attempts=3,
        retry_with_more_memory=True,
        wait_for_result=False,
    )
    with pytest.raises(mr.OutOfMemoryError):
        handle.result(timeout=120)
    assert [(a.number, a.memory_gb) for a in handle.attempts] == [(1, 0.25), (2, 0.4)]


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_bad_flag_is_refused_before_anything_launches(local_cloud: Path, value: object) -> None:
    bad = {"retry_with_more_memory": value}
    refused = "retry_with_more_memory must be True or False"
    with pytest.raises(mr.BadInputError, match=refused):
        mr.run_function(workloads.double, args=(1,), **bad)  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match=refused):
        mr.run_map(workloads.double, [1], **bad)  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match=refused):
        next(mr.run_map_as_completed(workloads.double, [1], **bad))  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match=refused):
        asyncio.run(mr.run_function_async(workloads.double, args=(1,), **bad))  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match=refused):
        asyncio.run(mr.run_map_async(workloads.double, [1], **bad))  # type: ignore[arg-type]
    assert SqliteAllocationTable(local_cloud / "state.db").list_instances() == []


def test_results_of_the_bigger_wave_are_cached_under_their_own_task(local_cloud: Path) -> None:
    """The wave numbers its tasks from 0: their results must still be stored under the
    original tasks' keys, so a re-run gets every value right."""
    function = partial(
        workloads.allocate_memory_for, hungry=[2], megabytes=HUNGRY_MB, hold_seconds=HOLD_SECONDS
    )
    kwargs = {"resources_per_task": SMALL, "max_num_task_attempts": 2, "cache": True}
    first = mr.run_map(function, range(4), retry_with_more_memory=True, **kwargs)
    assert first == [0, 1, 4, 9]
    again = sorted(mr.run_map_as_completed(function, range(4), **kwargs), key=lambda r: r.task_id)
    assert [(r.result, r.cached) for r in again] == [(0, True), (1, True), (4, True), (9, True)]


def test_without_the_flag_a_map_task_out_of_memory_fails_at_the_same_memory(
    local_cloud: Path,
) -> None:
    """Behaviour without the flag is unchanged: the retry gets the same 0.25 GB, and no
    attempts are recorded."""
    function = partial(
        workloads.allocate_memory_for, hungry=[1], megabytes=HUNGRY_MB, hold_seconds=HOLD_SECONDS
    )
    results = sorted(
        mr.run_map_as_completed(
            function,
            range(3),
            resources_per_task=SMALL,
            num_concurrent_tasks=2,
            max_num_task_attempts=2,
        ),
        key=lambda r: r.task_id,
    )
    assert [r.result for r in results] == [0, None, 4]
    failed = results[1]
    assert not failed.is_success and failed.attempt == 2
    assert "more than the 0.25 GB" in str(failed.exception)
    assert [r.attempts for r in results] == [(), (), ()]


BEFORE_SECONDS = 1.0  # every attempt runs at least this long before it allocates


def test_a_map_task_doubles_again_and_pays_for_every_attempt(local_cloud: Path) -> None:
    """0.25 -> 0.5 -> 1 GB in two waves of bigger slots (through the async twin); the task's
    cost counts its attempts out of memory too. With 4 CPUs per task a slot holds its whole
    4-CPU instance, so ``instance_seconds`` are the seconds the attempts ran: at least
    3 x BEFORE_SECONDS + HOLD_SECONDS, where the last attempt alone is about 2 s less."""
    function = partial(
        workloads.allocate_memory_after,
        hungry=[0],
        before=BEFORE_SECONDS,
        megabytes=600,
        hold_seconds=HOLD_SECONDS,
    )

    async def collect() -> list[mr.TaskResult]:
        return [
            r
            async for r in mr.run_map_as_completed_async(
                function,
                range(2),
                resources_per_task=mr.Resources(logical_cpu=4, memory_gb=0.25),
                max_num_task_attempts=3,
                retry_with_more_memory=True,
            )
        ]

    results = sorted(asyncio.run(collect()), key=lambda r: r.task_id)
    assert [r.result for r in results] == [0, 1]
    assert results[0].attempts == (
        mr.Attempt(1, 0.25, "out_of_memory"),
        mr.Attempt(2, 0.5, "out_of_memory"),
        mr.Attempt(3, 1.0, "succeeded"),
    )
    assert results[1].attempts == (mr.Attempt(1, 0.25, "succeeded"),)
    cost = results[0].cost
    assert cost is not None
    assert cost.instance_seconds >= 3 * BEFORE_SECONDS + HOLD_SECONDS


def test_a_memory_error_counts_as_running_out_of_memory(local_cloud: Path) -> None:
    """A function that raises MemoryError ran out of memory too, for a single job and for a
    map task (the async twins)."""
    markers = [local_cloud.parent / f"raised-{i}" for i in range(3)]
    markers[2].write_text("")  # task 1 of the map raises no MemoryError

    async def run() -> tuple[str, tuple[mr.Attempt, ...], list[mr.TaskResult]]:
        handle = await mr.run_function_async(
            workloads.memory_error_once,
            args=(str(markers[0]),),
            resources=SMALL,
            max_num_task_attempts=2,
            retry_with_more_memory=True,
            wait_for_result=False,
        )
        value = await handle
        tasks = [
            r
            async for r in mr.run_map_as_completed_async(
                workloads.memory_error_once,
                [str(m) for m in markers[1:]],
                resources_per_task=SMALL,
                max_num_task_attempts=2,
                retry_with_more_memory=True,
            )
        ]
        return value, handle.attempts, sorted(tasks, key=lambda r: r.task_id)

    value, attempts, tasks = asyncio.run(run())
    twice = (mr.Attempt(1, 0.25, "out_of_memory"), mr.Attempt(2, 0.5, "succeeded"))
    assert (value, attempts) == ("enough", twice)
    assert [(r.result, r.attempts) for r in tasks] == [
        ("enough", twice),
        ("enough", (mr.Attempt(1, 0.25, "succeeded"),)),
    ]
