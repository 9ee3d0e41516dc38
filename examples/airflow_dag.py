"""An Airflow DAG whose tasks run on meadowrun instances: ``@task.meadowrun`` with ``.expand``
and a deferrable ``MeadowrunOperator`` command (the task defers while its job runs).

In a deployment, drop this file in your DAGs folder. To try it with nothing set up, run
``python examples/airflow_dag.py``: it uses a temporary AIRFLOW_HOME (sqlite) and the embedded
local cloud, and runs the DAG once with ``dag.test()``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # set up a throwaway Airflow before airflow is imported
    _home = Path(tempfile.mkdtemp(prefix="meadowrun-airflow-demo-"))
    (_home / "dags").mkdir()
    shutil.copy(__file__, _home / "dags" / "meadowrun_example.py")
    os.environ.update(
        AIRFLOW_HOME=str(_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(_home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )

from airflow.sdk import dag, task

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

log = logging.getLogger(__name__)
SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


@dag(schedule=None, catchup=False, tags=["meadowrun"], params={"n": 4})
def meadowrun_example() -> None:
    @task.meadowrun(resources=SMALL)
    def numbers(n: int) -> list[int]:
        """Runs on a meadowrun instance; the list becomes the XCom that .expand maps over."""
        return list(range(1, int(n) + 1))

    @task.meadowrun(resources=SMALL)
    def square(x: int) -> int:
        import socket

        print(f"squaring {x} on {socket.gethostname()} (pid {os.getpid()})")
        return x * x

    @task.meadowrun(resources=SMALL)
    def total(values: list[int]) -> int:
        return sum(values)

    summed = total(square.expand(x=numbers("{{ params.n }}")))

    # A longer step: deferrable, so no worker slot is held while it runs; the triggerer
    # follows the job and relays its output to this task's log.
    report = MeadowrunOperator(
        task_id="report",
        command="sleep 2; echo 'sum of squares: {{ ti.xcom_pull(task_ids=\"total\") }}'",
        resources=SMALL,
        deferrable=True,
    )
    summed >> report


example_dag = meadowrun_example()

if __name__ == "__main__":
    from airflow.utils.db import initdb

    logging.basicConfig(level=logging.INFO)
    try:
        initdb()
        run = example_dag.test()
        for ti in sorted(run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
            log.info("task %s[%d]: %s", ti.task_id, ti.map_index, ti.state)
        log.info("DAG run %s ended %s", run.run_id, run.state)
        succeeded = str(run.state) == "success"
    finally:
        shutil.rmtree(_home, ignore_errors=True)
    sys.exit(0 if succeeded else 1)
