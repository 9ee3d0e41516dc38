"""MeadowrunOperator running a callable: templated arguments, a context value asked for by
name, and the result consumed downstream through XCom."""

from __future__ import annotations

from airflow.sdk import DAG, task

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator


def add(a: str, b: str, ds: str | None = None) -> dict[str, object]:
    import os

    print(f"adding {a} and {b} in pid {os.getpid()}", flush=True)
    return {"sum": int(a) + int(b), "ds": ds, "pid": os.getpid()}


with DAG("meadowrun_sync", schedule=None, catchup=False, params={"a": 40, "b": 2}) as dag:
    added = MeadowrunOperator(
        task_id="add",
        python_callable=add,
        op_args=["{{ params.a }}"],
        op_kwargs={"b": "{{ params.b }}"},
        resources=mr.Resources(logical_cpu=1, memory_gb=1),
    )

    @task
    def consume(value: dict[str, object]) -> int:
        import os

        assert value["pid"] != os.getpid(), "the callable ran in the Airflow worker"
        return int(value["sum"]) * 10  # type: ignore[call-overload]

    consume(added.output)
