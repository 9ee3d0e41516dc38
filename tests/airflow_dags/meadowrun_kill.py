"""A MeadowrunOperator killed by Airflow (execution_timeout calls on_kill): the job must be
cancelled and its allocation freed before the next task runs."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, task

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

with DAG("meadowrun_kill", schedule=None, catchup=False, params={"pid_file": "/dev/null"}) as dag:
    sleepy = MeadowrunOperator(
        task_id="sleepy",
        command="echo $$ > {{ params.pid_file }}; echo started; exec sleep 120",
        resources=mr.Resources(logical_cpu=1, memory_gb=1),
        execution_timeout=timedelta(seconds=5),
    )

    @task(trigger_rule="all_done")
    def jobs_left() -> list[str]:
        """Runs in the same process right after the kill, while its client lease still holds
        (so a job that on_kill forgot would still be listed)."""
        from meadowrun_core.config import meadowrun_home
        from meadowrun_core.local.allocation_table import SqliteAllocationTable

        table = SqliteAllocationTable(meadowrun_home() / "state.db")
        return [a.job_id for a in table.list_allocations()]

    sleepy >> jobs_left()
