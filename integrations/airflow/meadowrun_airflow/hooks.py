"""The ``meadowrun`` connection type: which meadowrun host (cloud) a task runs on.

A connection keeps cloud settings out of DAG code, as the Amazon provider's ``aws``
connection does for BatchOperator. Everything lives in the connection's extra, e.g.
``{"host": "local", "max_cpu": 8}``, ``{"host": "local", "meadowrun_home": "/srv/meadowrun"}``
or ``{"host": "ec2", "region_name": "us-east-2"}``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

import meadowrun_core as mr
from meadowrun_airflow.provider import CONNECTION_UI

_HOST_FIELDS: dict[str, tuple[type[mr.Host], tuple[str, ...]]] = {
    "local": (mr.AllocLocalInstance, ("idle_timeout", "max_cpu", "max_memory_gb",
                                      "meadowrun_home")),
    "ec2": (mr.AllocEC2Instance, ("region_name", "ami_id", "subnet_id", "security_group_ids",
                                  "iam_role_instance_profile")),
    "azure": (mr.AllocAzureVM, ("location",)),
}


def host_from_extra(extra: dict[str, Any]) -> mr.Host:
    """Build the meadowrun host an extra dict describes; unknown keys are an error."""
    kind = str(extra.get("host") or "local").strip().lower()
    if kind not in _HOST_FIELDS:
        raise ValueError(f"meadowrun connection: host must be one of {sorted(_HOST_FIELDS)}, "
                         f"got {kind!r}")
    cls, allowed = _HOST_FIELDS[kind]
    known = {"host", *allowed}
    unknown = set(extra) - known
    if unknown:
        raise ValueError(f"meadowrun connection: unknown field(s) {sorted(unknown)} for host "
                         f"{kind!r}; allowed: {sorted(known)}")
    params: dict[str, Any] = {}
    for name in allowed:
        value = extra.get(name)
        if value in (None, ""):
            continue
        if name in ("idle_timeout", "max_cpu", "max_memory_gb"):
            value = float(value)
        elif name == "security_group_ids":
            value = tuple(value) if isinstance(value, list | tuple) else tuple(
                v.strip() for v in str(value).split(",") if v.strip())
        elif name == "meadowrun_home":
            value = str(value)
        # meadowrun_home: AllocLocalInstance(home=...), the local cloud's state directory
        params["home" if name == "meadowrun_home" else name] = value
    return cls(**params)


class MeadowrunHook(BaseHook):
    """Reads a ``meadowrun`` connection and returns the ``mr.Host`` it describes."""

    conn_name_attr = "meadowrun_conn_id"
    default_conn_name = "meadowrun_default"
    conn_type = "meadowrun"
    hook_name = "Meadowrun"

    def __init__(self, meadowrun_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.meadowrun_conn_id = meadowrun_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return CONNECTION_UI

    def get_extra(self) -> dict[str, Any]:
        """The connection's extra; the connection's Host field may name the host kind."""
        conn = self.get_connection(self.meadowrun_conn_id)
        extra = dict(conn.extra_dejson)
        if not extra.get("host") and conn.host:
            extra["host"] = conn.host
        return extra

    def get_host(self) -> mr.Host:
        """The host of the connection. For ``local``, a ``meadowrun_home`` field selects the
        local cloud's state directory (``AllocLocalInstance(home=...)``) instead of
        ``MEADOWRUN_HOME``'s."""
        return host_from_extra(self.get_extra())

    def test_connection(self) -> tuple[bool, str]:
        try:
            host = host_from_extra(self.get_extra())
        except Exception as exc:
            return False, str(exc)
        return True, f"meadowrun host {host!r}"
