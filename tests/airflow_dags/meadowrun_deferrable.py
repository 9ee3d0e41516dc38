"""MeadowrunOperator with deferrable=True: the worker submits, a trigger follows the job, the
task resumes with the result. Also a deferred job that overruns its execution_timeout, and a
deferred job killed the way the triggerer kills it."""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import DAG, task

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


def slow_square(x: int) -> int:
    for step in range(3):
        print(f"deferred step {step}", flush=True)
        time.sleep(0.7)
    return x * x


def list_allocations() -> list[str]:
    from meadowrun_core.config import meadowrun_home
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    table = SqliteAllocationTable(meadowrun_home() / "state.db")
    return [a.job_id for a in table.list_allocations()]


def kill_deferred_job() -> dict[str, object]:
    """What the triggerer does when a user kills a deferred task: cancel the trigger's
    coroutine, then call its on_kill. The job must end and free its allocation."""
    import asyncio

    from meadowrun_airflow.jobs import JobSpec, local_home, submit_detached, wait_until_started
    from meadowrun_airflow.triggers import MeadowrunJobTrigger

    key = "airflow-test-kill-deferred"
    handle = submit_detached(key, JobSpec(command=["sleep", "120"], resources=SMALL), None)
    assert wait_until_started(key, handle, None) == "running"
    handle.stop_following()  # as a deferring worker does
    trigger = MeadowrunJobTrigger(job_key=key, meadowrun_home=local_home(None))

    async def kill() -> None:
        following = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(1.0)
        assert not following.done(), "the trigger fired while the job was still running"
        following.cancel()
        await trigger.on_kill()

    asyncio.run(kill())
    return {"status": mr.job_status(key), "allocations": list_allocations()}


with DAG(
    "meadowrun_deferrable", schedule=None, catchup=False, params={"pid_file": "/dev/null"}
) as dag:
    squared = MeadowrunOperator(
        task_id="square",
        python_callable=slow_square,
        op_args=[7],
        resources=SMALL,
        deferrable=True,
    )

    @task
    def consume(value: int) -> int:
        return value + 1

    consume(squared.output)

    MeadowrunOperator(
        task_id="command",
        command="echo deferred-command-out; echo last {{ ds_nodash }}",
        resources=SMALL,
        deferrable=True,
    )
    overrun = MeadowrunOperator(
        task_id="overrun",
        command="echo $$ > {{ params.pid_file }}; sleep 120",
        resources=SMALL,
        deferrable=True,
        execution_timeout=timedelta(seconds=4),
    )
    # Runs right after the overrun task, in the same process.
    overrun >> task(list_allocations, task_id="jobs_left", trigger_rule="all_done")()
    task(kill_deferred_job, task_id="kill_deferred")()
