"""@task.meadowrun through the provider's task-decorators entry: four tasks, one mapped with
.expand, one on the host named by a ``meadowrun`` connection, one deferrable."""

from __future__ import annotations

from airflow.sdk import dag, task

import meadowrun_core as mr

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


@dag(schedule=None, catchup=False, params={"n": 3})
def meadowrun_taskflow() -> None:
    @task.meadowrun(resources=SMALL, meadowrun_conn_id="meadowrun_test")
    def numbers(n: str) -> list[int]:
        return list(range(1, int(n) + 1))

    @task.meadowrun(resources=SMALL)
    def cube(x: int) -> int:
        print(f"cubing {x}")
        return x**3

    @task.meadowrun(resources=SMALL, deferrable=True)
    def total(values: list[int]) -> int:
        return sum(values)

    @task.meadowrun(resources=SMALL, multiple_outputs=True)
    def describe(value: int, run_id: str | None = None) -> dict[str, object]:
        import os

        return {"total": value, "run_id": run_id, "pid": os.getpid()}

    describe(total(cube.expand(x=numbers("{{ params.n }}"))))


taskflow_dag = meadowrun_taskflow()
