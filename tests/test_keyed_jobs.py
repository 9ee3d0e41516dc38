"""Keyed and detached jobs: found, followed and cancelled from any process (what Airflow's
deferrable mode and reattach need)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable

TESTS_DIR = Path(__file__).parent


def _submit_in_other_process(code: str) -> None:
    script = "import meadowrun_core as mr, workloads\n" + textwrap.dedent(code)
    subprocess.run([sys.executable, "-c", script], cwd=TESTS_DIR, check=True, timeout=60)


def test_detached_job_outlives_its_client_and_is_reattached(local_cloud: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, time, meadowrun_core as mr, workloads
        h = mr.run_function(workloads.slow_square, args=(7, 4.0), wait_for_result=False,
                            job_key="k-detached", detach=True)
        while mr.job_status("k-detached") != "running" or not any(
                a.worker_pid for a in __import__("meadowrun_core.local.allocation_table",
                fromlist=["x"]).SqliteAllocationTable(
                    __import__("meadowrun_core.config", fromlist=["x"]).meadowrun_home()
                    / "state.db").list_allocations()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    client = subprocess.run([sys.executable, "-c", script], cwd=TESTS_DIR, timeout=60)
    assert client.returncode == -signal.SIGKILL
    assert mr.job_status("k-detached") == "running"
    handle = mr.attach_job("k-detached")
    value, instance = handle.result(timeout=30)
    assert value == 49 and instance
    assert mr.job_status("k-detached") == "succeeded"
    # a finished keyed job can be read again, and forgotten
    assert mr.attach_job("k-detached").result(timeout=5)[0] == 49
    assert mr.forget_job("k-detached")
    assert mr.job_status("k-detached") == "unknown"


def test_same_key_follows_the_existing_job(local_cloud: Path) -> None:
    first = mr.run_function(
        workloads.worker_pid_and_sleep, args=(1.5,), wait_for_result=False, job_key="k-same"
    )
    second = mr.run_function(
        workloads.worker_pid_and_sleep, args=(1.5,), wait_for_result=False, job_key="k-same"
    )
    assert first.result(timeout=30) == second.result(timeout=30)
    history = SqliteAllocationTable(local_cloud / "state.db").job_history()
    assert len([r for r in history if r["description"].startswith("run_function")]) == 1


def test_cancel_job_from_another_process(local_cloud: Path) -> None:
    mr.run_command(["sleep", "60"], wait_for_result=False, job_key="k-cancel", detach=True)
    table = SqliteAllocationTable(local_cloud / "state.db")
    deadline = time.monotonic() + 20
    while not any(a.worker_pid for a in table.list_allocations()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _submit_in_other_process('assert mr.cancel_job("k-cancel")')
    assert mr.job_status("k-cancel") == "cancelled"
    assert table.list_allocations() == []
    with pytest.raises(mr.JobCancelledError):
        mr.attach_job("k-cancel").result(timeout=10)


def test_command_outcome_is_kept(local_cloud: Path) -> None:
    _submit_in_other_process('mr.run_command(["sh", "-c", "exit 4"], job_key="k-cmd", detach=True)')
    assert mr.job_status("k-cmd") == "exited"
    result = mr.attach_job("k-cmd").result(timeout=10)
    assert isinstance(result, mr.CommandResult) and result.return_code == 4


def test_cancelling_a_waiter_leaves_the_job_running(local_cloud: Path) -> None:
    mr.run_function(
        workloads.slow_square, args=(3, 2.0), wait_for_result=False, job_key="k-wait", detach=True
    )

    async def give_up_waiting() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mr.wait_job_async("k-wait"), timeout=0.5)

    asyncio.run(give_up_waiting())
    assert mr.job_status("k-wait") in ("pending", "running")
    assert asyncio.run(mr.wait_job_async("k-wait"))[0] == 9


def test_failure_of_keyed_job_keeps_traceback(local_cloud: Path) -> None:
    _submit_in_other_process(
        """
        try:
            mr.run_function(workloads.fail_with_value_error, args=("kept",), job_key="k-fail")
        except mr.TaskException:
            pass
        """
    )
    assert mr.job_status("k-fail") == "failed"
    with pytest.raises(mr.TaskException) as info:
        mr.attach_job("k-fail").result(timeout=10)
    assert "fail_with_value_error" in info.value.remote_traceback


def test_unknown_key(local_cloud: Path) -> None:
    assert mr.job_status("nope") == "unknown"
    with pytest.raises(mr.JobNotFoundError):
        mr.attach_job("nope").result(timeout=10)
    assert not mr.cancel_job("nope")


def test_late_follower_gets_the_whole_output(local_cloud: Path) -> None:
    handle = mr.run_function(
        workloads.print_and_sleep, args=(3, 0.5), wait_for_result=False, job_key="k-output"
    )
    time.sleep(1.2)  # some lines were written before anyone attached
    seen: list[bytes] = []
    follower = mr.attach_job("k-output", on_output=lambda stream, data: seen.append(data))
    assert follower.result(timeout=30) == "finished" == handle.result(timeout=30)
    assert b"".join(seen).decode().splitlines() == ["line 0", "line 1", "line 2"]
    # after the end, the kept output is replayed too
    after: list[bytes] = []
    mr.attach_job("k-output", on_output=lambda stream, data: after.append(data)).result(10)
    assert b"".join(after).decode().splitlines() == ["line 0", "line 1", "line 2"]


def test_stop_following_leaves_the_job_running(local_cloud: Path) -> None:
    handle = mr.run_function(
        workloads.slow_square,
        args=(5, 2.0),
        wait_for_result=False,
        job_key="k-unfollowed",
        detach=True,
    )
    deadline = time.monotonic() + 20
    while mr.job_status("k-unfollowed") != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    info = mr.job_info("k-unfollowed")
    assert info["job_id"] and info["instance_id"]
    handle.stop_following()
    assert handle.cancelled()
    assert mr.job_status("k-unfollowed") == "running"
    assert mr.attach_job("k-unfollowed").result(timeout=30)[0] == 25


def test_job_whose_submitter_died_before_sending_it(local_cloud: Path) -> None:
    table = SqliteAllocationTable(local_cloud / "state.db")
    table.renew_lease("ghost", 1, 0.01)
    assert table.claim_job_key("k-ghost", "pending", "ghost") is None
    time.sleep(0.05)
    assert mr.job_status("k-ghost") == "died"
    with pytest.raises(mr.WorkerDiedError, match="submitter went away"):
        mr.attach_job("k-ghost").result(timeout=10)
