"""Runs DAGs with ``dag.test()`` for tests/test_airflow.py, in a process of its own.

A process of its own so that Airflow reads the test's AIRFLOW_HOME and its logging setup stays
out of the pytest process. Two modes:

- ``_run_dag.py DAG_FILE DAG_ID [--logical-date ISO] [--conf JSON]``: run one DAG, print
  ``RESULT_JSON {...}`` (task states and XComs) and exit.
- ``_run_dag.py --serve``: read one JSON request a line on stdin (dag_file, dag_id, conf,
  logical_date, env) and answer each between ``=== BEGIN id`` and ``=== END id RESULT_JSON``
  lines, so that several tests share one warm Airflow (its in-process API takes ~15 s to
  start). ``env`` carries the test's MEADOWRUN_* variables (its private local cloud) and any
  other variables of that one request (``AIRFLOW_CONN_*``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

_counter = itertools.count()


def _load_dag(dag_file: Path, dag_id: str) -> Any:
    # A module name workers cannot import, like Airflow's own "unusual_prefix_..." names.
    name = f"airflow_test_{dag_file.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise LookupError(f"no DAG {dag_id!r} in {dag_file}")


def _providers() -> dict[str, Any]:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    form = {
        name: {"schema": info.field["schema"], "source": info.package_name}
        for name, info in manager.connection_form_widgets.items()
        if name.startswith("extra__meadowrun__")
    }
    return {
        "decorators": sorted(ProvidersManagerTaskRuntime().taskflow_decorators),
        "connection_types": sorted(manager.hooks),
        "providers": sorted(manager.providers),
        "extra_links": manager.extra_links_class_names,
        "meadowrun_form": form,
        "meadowrun_behaviour": manager.field_behaviours.get("meadowrun"),
        "meadowrun_info": manager.providers["meadowrun-core"].data,
    }


def run_dag(
    dag_file: str,
    dag_id: str,
    conf: dict[str, Any] | None = None,
    logical_date: str | None = None,
    providers: bool = False,
) -> dict[str, Any]:
    dag = _load_dag(Path(dag_file), dag_id)
    kwargs: dict[str, Any] = {"run_conf": conf}
    if logical_date:
        when = datetime.fromisoformat(logical_date)
        kwargs.update(logical_date=when, run_after=when)
    dag_run = dag.test(**kwargs)

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    tasks: dict[str, Any] = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            tasks[name] = {"state": str(ti.state)}
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag.dag_id, XComModel.run_id == dag_run.run_id)
            .all()
        )
        for row in rows:
            name = row.task_id if row.map_index < 0 else f"{row.task_id}[{row.map_index}]"
            tasks.setdefault(name, {})[f"xcom:{row.key}"] = XComModel.deserialize_value(row)
    summary: dict[str, Any] = {
        "state": str(dag_run.state),
        "run_id": dag_run.run_id,
        "tasks": tasks,
    }
    if providers:
        summary["providers"] = _providers()
    return summary


_request_env: set[str] = set()


def _use_env(env: dict[str, str]) -> None:
    """Point this process at the requesting test's local cloud (and its connections)."""
    from meadowrun_core.client.runtime import ClientRuntime

    ClientRuntime.get().forget_backends()
    for name in [n for n in os.environ if n.startswith("MEADOWRUN_")] + sorted(_request_env):
        os.environ.pop(name, None)
    _request_env.clear()
    _request_env.update(env)
    os.environ.update(env)


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        request_id = request.pop("id")
        print(f"=== BEGIN {request_id}", flush=True)
        try:
            _use_env(request.pop("env", {}))
            summary = run_dag(**request)
        except Exception:
            summary = {"error": traceback.format_exc()}
        finally:
            _use_env({})
        # one write, newline included: other threads' log lines must not land inside it
        sys.stdout.write(f"=== END {request_id} RESULT_JSON {json.dumps(summary, default=str)}\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("dag_file", nargs="?")
    parser.add_argument("dag_id", nargs="?")
    parser.add_argument("--logical-date")
    parser.add_argument("--conf", type=json.loads, default=None, help="run conf (JSON)")
    parser.add_argument("--providers", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    summary = run_dag(args.dag_file, args.dag_id, args.conf, args.logical_date, args.providers)
    print("RESULT_JSON " + json.dumps(summary, default=str), flush=True)


if __name__ == "__main__":
    main()
