"""The ``meadowrun`` connection type: which meadowrun host (cloud) a task runs on.

A connection keeps cloud settings out of DAG code, as the Amazon provider's ``aws``
connection does for BatchOperator. Its form has one typed field per setting (declared in
``provider.CONNECTION_FIELDS``), saved in the connection's extra: ``host`` (the kind:
``local``, ``ec2``, ``azure``) and that kind's settings, e.g. ``{"host": "local",
"max_cpu": 8}``, ``{"host": "local", "meadowrun_home": "/srv/meadowrun"}`` or
``{"host": "ec2", "region_name": "us-east-2"}``. JSON written by hand in the extra, the
``extra__meadowrun__<field>`` names of older forms and the standard Host field naming the kind
are read too.

Like ``aws_default`` for the Amazon provider, ``meadowrun_default`` is used when a task names
no connection; if it does not exist, tasks run on the default host (``MEADOWRUN_HOST``, else
the local cloud), so nothing needs to be set up to start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

import meadowrun_core as mr
from meadowrun_airflow.provider import CONN_TYPE, CONNECTION_UI, HOST_KINDS

_HOST_CLASSES: dict[str, type[mr.Host]] = {
    "local": mr.AllocLocalInstance,
    "ec2": mr.AllocEC2Instance,
    "azure": mr.AllocAzureVM,
}
_NUMBERS = frozenset({"idle_timeout", "max_cpu", "max_memory_gb"})
_FORM_PREFIX = f"extra__{CONN_TYPE}__"
_ALL_FIELDS = frozenset(name for names in HOST_KINDS.values() for name in names)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"meadowrun connection: {name} must be true or false, got {value!r}")


def host_from_extra(extra: Mapping[str, Any]) -> mr.Host:
    """Build the meadowrun host an extra dict describes (``host``: the kind, default
    ``local``; the kind's settings). Empty fields are ignored, so a form that saves every
    field works; a setting of another kind with a value, or an unknown field, is an error."""
    fields = {
        (name[len(_FORM_PREFIX) :] if name.startswith(_FORM_PREFIX) else name): value
        for name, value in extra.items()
    }
    kind = str(fields.pop("host", None) or "local").strip().lower()
    if kind not in HOST_KINDS:
        raise ValueError(
            f"meadowrun connection: host must be one of {sorted(HOST_KINDS)}, got {kind!r}"
        )
    allowed = HOST_KINDS[kind]
    unknown = sorted(set(fields) - _ALL_FIELDS)
    if unknown:
        raise ValueError(
            f"meadowrun connection: unknown field(s) {unknown}; the fields are: host, "
            f"{', '.join(sorted(_ALL_FIELDS))}"
        )
    misplaced = sorted(n for n, v in fields.items() if n not in allowed and not _empty(v))
    if misplaced:
        raise ValueError(
            f"meadowrun connection: {misplaced} do not apply to host {kind!r}; it takes "
            f"{sorted(allowed)}"
        )
    params: dict[str, Any] = {}
    for name in allowed:
        value: Any = fields.get(name)
        if _empty(value):
            continue
        if name in _NUMBERS:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"meadowrun connection: {name} must be a number, got {value!r}"
                ) from None
        elif name == "security_group_ids":
            value = (
                tuple(str(v) for v in value)
                if isinstance(value, list | tuple)
                else tuple(v.strip() for v in str(value).split(",") if v.strip())
            )
        elif name == "use_private_ip":
            value = _flag(name, value)
        else:
            value = str(value).strip()
        # meadowrun_home: AllocLocalInstance(home=...), the local cloud's state directory
        params["home" if name == "meadowrun_home" else name] = value
    return _HOST_CLASSES[kind](**params)


def host_from_value(value: Any) -> mr.Host:
    """An operator's ``host`` argument (after templating) as an ``mr.Host``: a host itself, a
    kind (``"local"``, ``"ec2"``, ``"azure"``), or a dict (or its JSON) of connection fields,
    e.g. ``{"host": "local", "meadowrun_home": "{{ params.home }}"}``."""
    if isinstance(value, mr.Host):
        return value
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("{") else {"host": text}
    if isinstance(value, Mapping):
        return host_from_extra(value)
    raise TypeError(
        "host must be an mr.Host (AllocLocalInstance(), AllocEC2Instance(), AllocAzureVM()), "
        f"a host kind (local, ec2, azure) or a dict of connection fields; got {value!r}"
    )


class MeadowrunHook(BaseHook):
    """Reads a ``meadowrun`` connection and returns the ``mr.Host`` it describes.

    :param meadowrun_conn_id: the connection; default ``meadowrun_default``, which may be
        missing (then the default host is used).
    """

    conn_name_attr = "meadowrun_conn_id"
    default_conn_name = "meadowrun_default"
    conn_type = CONN_TYPE
    hook_name = "Meadowrun"

    def __init__(self, meadowrun_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.meadowrun_conn_id = meadowrun_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's layout, for Airflow versions that ask the hook (Airflow 3.2 and later
        read it, and the typed fields, from the provider info)."""
        return {
            "hidden_fields": CONNECTION_UI["hidden-fields"],
            "relabeling": CONNECTION_UI["relabeling"],
            "placeholders": CONNECTION_UI["placeholders"],
        }

    def get_extra(self) -> dict[str, Any]:
        """The connection's extra; the connection's Host field may name the host kind."""
        conn = self.get_connection(self.meadowrun_conn_id)
        extra = dict(conn.extra_dejson)
        if _empty(extra.get("host")) and _empty(extra.get(f"{_FORM_PREFIX}host")) and conn.host:
            extra["host"] = conn.host
        return extra

    def get_host(self) -> mr.Host | None:
        """The host of the connection. ``None`` (the default host: ``MEADOWRUN_HOST``, else
        the local cloud) when the connection is the default one and it does not exist; a
        missing connection named otherwise is an error (``AirflowNotFoundException``)."""
        try:
            extra = self.get_extra()
        except AirflowNotFoundException:
            if self.meadowrun_conn_id != self.default_conn_name:
                raise
            self.log.info(
                "No connection %r: running on the default meadowrun host (MEADOWRUN_HOST, "
                "else the local cloud)",
                self.meadowrun_conn_id,
            )
            return None
        return host_from_extra(extra)

    def test_connection(self) -> tuple[bool, str]:
        try:
            host = host_from_extra(self.get_extra())
        except Exception as exc:
            return False, str(exc)
        return True, f"meadowrun host {host!r}"
