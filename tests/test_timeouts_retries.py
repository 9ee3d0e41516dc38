"""Timeouts and retries on the real local cloud: a job past its ``timeout`` is killed (its
worker gone, its allocation freed) and raises ``JobTimeoutError``; map tasks time out one by
one; failed single jobs are run again within ``max_num_task_attempts``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import psutil
import pytest
import timeout_workloads as tw
from waiting import local_table, wait_until

import meadowrun_core as mr


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_stopped(home: Path, pid_file: Path) -> None:
    """Nothing allocated any more, and the process that ran the job is gone."""
    assert local_table(home).list_allocations() == []
    pid = int(pid_file.read_text())
    wait_until(lambda: _gone(pid), 5, f"process {pid} to be gone")


def test_function_past_its_timeout_is_killed(local_cloud: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(mr.JobTimeoutError) as caught:
        mr.run_function(tw.sleep_and_record_pid, args=(30, str(pid_file)), timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # includes launching the instance
    assert isinstance(caught.value, TimeoutError)
    assert "timeout of 1 s" in str(caught.value)
    assert "run_function sleep_and_record_pid" in str(caught.value)
    _assert_stopped(local_cloud, pid_file)


def test_command_past_its_timeout_is_killed(local_cloud: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    mr.run_command("true")  # the instance is up: the timed run below measures the timeout
    started = time.monotonic()
    with pytest.raises(mr.JobTimeoutError, match=r"run_command sh.*timeout of 1 s"):
        mr.run_command(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=1)
    assert time.monotonic() - started < 5
    _assert_stopped(local_cloud, pid_file)


def test_quick_job_within_its_timeout_returns(local_cloud: Path) -> None:
    assert mr.run_function(sum, args=([1, 2, 3],), timeout=10) == 6
    assert mr.run_command("true", timeout=10).return_code == 0


def test_handle_result_raises_job_timeout(local_cloud: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    handle = mr.run_function(
        tw.sleep_and_record_pid, args=(30, str(pid_file)), timeout=1, wait_for_result=False
    )
    with pytest.raises(mr.JobTimeoutError):
        handle.result(timeout=20)
    _assert_stopped(local_cloud, pid_file)


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "5"},
        {"timeout": True},
        {"timeout": float("inf")},
        {"max_num_task_attempts": 0},
        {"max_num_task_attempts": 1.5},
        {"max_num_task_attempts": True},
        {"max_num_task_attempts": 2, "job_key": "k"},
    ],
)
def test_bad_limits_fail_before_launching(local_cloud: Path, bad: dict[str, object]) -> None:
    name = next(iter(bad))
    with pytest.raises(mr.BadInputError, match=name):
        mr.run_function(sum, args=([1],), **bad)  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match=name):
        mr.run_command("true", **bad)  # type: ignore[arg-type]
    assert local_table(local_cloud).list_instances() == []


def test_function_that_raises_once_succeeds_on_its_second_attempt(
    local_cloud: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meadowrun_core.client.job_events")
    marker = str(tmp_path / "marker-a")
    assert mr.run_function(tw.fail_first_time, args=(marker,), max_num_task_attempts=2) == (
        "second attempt"
    )
    retries = [r.getMessage() for r in caplog.records if "running it again" in r.getMessage()]
    assert len(retries) == 1 and "attempt 1 of 2 failed" in retries[0]
    assert "ValueError: first attempt fails" in retries[0]
    with pytest.raises(mr.TaskException, match="first attempt fails"):
        mr.run_function(tw.fail_first_time, args=(str(tmp_path / "marker-b"),))


def test_timeout_counts_as_a_failed_attempt(local_cloud: Path, tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    started = time.monotonic()
    value = mr.run_function(tw.slow_first_time, args=(marker,), timeout=1, max_num_task_attempts=2)
    assert value == "fast"
    assert Path(marker).exists()  # its first attempt ran, and was cut short:
    assert time.monotonic() - started < 20
    # (the second attempt came back to back: its room is held a moment for a next call)
    wait_until(lambda: local_table(local_cloud).list_allocations() == [], 5, "room freed")


def test_command_that_fails_once_is_run_again(local_cloud: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = f"test -e {marker} || {{ touch {marker}; exit 3; }}"
    assert mr.run_command(["sh", "-c", script], max_num_task_attempts=2).return_code == 0
    marker.unlink()
    assert mr.run_command(["sh", "-c", script]).return_code == 3


def test_map_task_past_its_timeout_fails_and_the_others_succeed(local_cloud: Path) -> None:
    # the slow element comes after many quick ones: it runs inside a batch of several tasks,
    # and those after it in the batch go to a fresh worker
    args = [*range(4, 200), 3, *range(200, 400)]
    started = time.monotonic()
    results = list(
        mr.run_map_as_completed(
            tw.slow_task, args, timeout=2, num_concurrent_tasks=2, progress=False
        )
    )
    assert time.monotonic() - started < 20
    by_id = {r.task_id: r for r in results}
    assert sorted(by_id) == list(range(len(args)))
    slow = args.index(3)
    assert not by_id[slow].is_success
    assert by_id[slow].exception is not None
    assert "timed out: ran past its timeout of 2 s" in str(by_id[slow].exception)
    others = [i for i in range(len(args)) if i != slow]
    assert all(by_id[i].is_success and by_id[i].result == args[i] * 10 for i in others)
    with pytest.raises(mr.RunMapTasksFailedException, match="timeout of 2 s") as caught:
        mr.run_map(tw.slow_task, [3, 4], timeout=2, progress=False)
    assert [t.task_id for t in caught.value.failed_tasks] == [0]
    wait_until(lambda: local_table(local_cloud).list_allocations() == [], 10, "slots to be freed")


def test_map_task_slow_only_on_its_first_attempt_succeeds_on_its_second(
    local_cloud: Path, tmp_path: Path
) -> None:
    marker = str(tmp_path / "marker")
    started = time.monotonic()
    results = mr.run_map(
        tw.slow_task_first_time,
        [(i, marker) for i in range(5)],
        timeout=2,
        max_num_task_attempts=2,
        num_concurrent_tasks=2,
        progress=False,
    )
    assert results == [0, 10, 20, 30, 40]
    assert Path(marker).exists()  # its first attempt ran, and was cut short:
    assert time.monotonic() - started < 20


def test_map_bad_timeout_fails_before_launching(local_cloud: Path) -> None:
    with pytest.raises(mr.BadInputError, match="timeout"):
        mr.run_map(tw.slow_task, range(3), timeout=-1)
    assert local_table(local_cloud).list_instances() == []
