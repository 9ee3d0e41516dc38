"""What ``MeadowrunOperator``'s arguments become for the job: its resources (in meadowrun's,
a dict's or Airflow's own form), whether a value is still a template, and which values may
travel to the instance (plain context values, XCom proxies as plain data)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import meadowrun_core as mr

# Context values a remote callable may ask for by parameter name: plain data that pickles.
# (``ti``, ``dag_run`` and the like are live objects of the worker and cannot travel.)
REMOTE_CONTEXT_KEYS = frozenset(
    {
        "ds",
        "ds_nodash",
        "ts",
        "ts_nodash",
        "ts_nodash_with_tz",
        "logical_date",
        "data_interval_start",
        "data_interval_end",
        "run_id",
        "params",
        "task_instance_key_str",
    }
)


# Airflow's own executor resources (RAM and disk in MB), what ``resources`` of a mapped task is.
AIRFLOW_RESOURCE_NAMES = frozenset({"cpus", "ram", "disk", "gpus"})
_AIRFLOW_ONLY = AIRFLOW_RESOURCE_NAMES - {"gpus"}  # gpus is a field of both
_NUMERIC_RESOURCES = frozenset(
    {"logical_cpu", "memory_gb", "max_eviction_rate", "gpus", "gpu_memory"}
)


def is_templated(value: Any) -> bool:
    """Whether a value still holds Jinja (rendered only when the task runs)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_templated(v) for v in value)
    return False


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"resources: {name} must be a number, got {value!r}") from None


def to_meadowrun_resources(resources: Any) -> mr.Resources | None:
    """``mr.Resources`` from itself; from a dict (or its JSON) of its fields, e.g. the
    templated ``{"logical_cpu": "{{ params.cpu }}", "memory_gb": 4}``; or from Airflow's
    executor resources (cpus, ram in MB, gpus), which is what ``resources`` becomes on a
    mapped task."""
    if resources is None or isinstance(resources, mr.Resources):
        return resources
    if isinstance(resources, str):
        try:
            resources = json.loads(resources)
        except ValueError:
            raise TypeError(
                f"resources must be mr.Resources or a dict of its fields, got {resources!r}"
            ) from None
    airflow_form = isinstance(resources, Mapping) and bool(set(resources) & _AIRFLOW_ONLY)
    if isinstance(resources, Mapping) and not airflow_form:
        fields: dict[str, Any] = {}
        for name, value in resources.items():
            if value is None:
                continue
            if name in _NUMERIC_RESOURCES:
                value = _number(name, value)
            elif name == "flags":
                value = (value,) if isinstance(value, str) else tuple(value)
            elif name == "custom":
                value = {str(k): _number(f"custom[{k!r}]", v) for k, v in dict(value).items()}
            fields[str(name)] = value
        try:
            return mr.Resources(**fields)
        except TypeError as exc:
            raise TypeError(f"resources {dict(resources)!r}: {exc}") from None
    if isinstance(resources, Mapping):
        from airflow.sdk.definitions.operator_resources import Resources

        resources = Resources(**resources)  # type: ignore[no-untyped-call]
    cpus, ram, gpus = (getattr(resources, name, None) for name in ("cpus", "ram", "gpus"))
    if cpus is None or ram is None:
        raise TypeError(f"resources must be meadowrun_core.Resources, got {resources!r}")
    return mr.Resources(
        logical_cpu=float(cpus.qty),
        memory_gb=float(ram.qty) / 1024,
        gpus=float(gpus.qty) if gpus is not None else 0,
    )


def plain_argument(value: Any) -> Any:
    """Airflow's lazy XCom proxies (the results of a mapped task) as plain lists and dicts:
    they hold live handles of the worker and must not be pickled."""
    if type(value).__module__.startswith("airflow."):
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            # by index: iterating probes one past the end, which Airflow logs as an error
            return [value[i] for i in range(len(value))]
    return value
