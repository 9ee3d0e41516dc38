"""Airflow provider for meadowrun: ``MeadowrunOperator``, ``@task.meadowrun``, the
``meadowrun`` connection type and ``MeadowrunJobTrigger``.

Names are imported lazily so that ``meadowrun_airflow.provider`` (read by Airflow's providers
manager while it is still discovering) and ``meadowrun_airflow.jobs`` never pay for (or depend
on) importing Airflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MeadowrunOperator": "meadowrun_airflow.operators",
    "MeadowrunJobError": "meadowrun_airflow.operators",
    "MeadowrunHook": "meadowrun_airflow.hooks",
    "MeadowrunJobTrigger": "meadowrun_airflow.triggers",
    "meadowrun_task": "meadowrun_airflow.decorators",
    "job_key": "meadowrun_airflow.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'meadowrun_airflow' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
