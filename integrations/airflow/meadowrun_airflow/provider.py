"""Airflow provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point.

Kept free of Airflow imports: the ProvidersManager calls it while it is still discovering.

The ``meadowrun`` connection's form is declared here (``conn-fields``, Airflow's declarative
replacement, since 3.2, for a hook's ``get_connection_form_widgets``): one typed field per
host setting, stored in the connection's extra, so nobody has to write JSON by hand.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MODULE = "meadowrun_airflow"
DISTRIBUTION = "meadowrun-core"
CONN_TYPE = "meadowrun"

# Host kinds a connection may name, and the host settings each takes (``AllocLocalInstance``,
# ``AllocEC2Instance``, ``AllocAzureVM`` parameters; ``meadowrun_home`` is the local cloud's
# ``home``).
HOST_KINDS: dict[str, tuple[str, ...]] = {
    "local": ("idle_timeout", "max_cpu", "max_memory_gb", "meadowrun_home"),
    "ec2": (
        "region_name",
        "ami_id",
        "subnet_id",
        "security_group_ids",
        "iam_role_instance_profile",
        "idle_timeout",
        "max_cpu",
        "max_memory_gb",
        "ssh_cidr",
        "use_private_ip",
    ),
    "azure": ("location",),
}


def _field(label: str, kind: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "label": label,
        "schema": {"type": [kind, "null"], **schema},
        "description": description,
    }


# The connection form: typed fields, saved in the extra under these names.
CONNECTION_FIELDS: dict[str, dict[str, Any]] = {
    "host": _field(
        "Host kind",
        "string",
        "Where jobs run: local (the embedded local cloud on the Airflow machine), ec2, azure.",
        enum=sorted(HOST_KINDS),
        default="local",
    ),
    "meadowrun_home": _field(
        "MEADOWRUN_HOME (local)",
        "string",
        "State directory of the local cloud; empty: the worker's MEADOWRUN_HOME.",
    ),
    "max_cpu": _field(
        "Max CPU (local, ec2)",
        "number",
        "Most logical CPUs running at once; empty: the machine's (local) or no cap (ec2).",
        minimum=0,
    ),
    "max_memory_gb": _field(
        "Max memory GB (local, ec2)",
        "number",
        "Most memory (GB) running at once; empty: the machine's (local) or no cap (ec2).",
        minimum=0,
    ),
    "idle_timeout": _field(
        "Idle timeout, seconds (local, ec2)",
        "number",
        "How long an instance with no job lives on.",
        minimum=0,
    ),
    "region_name": _field("AWS region (ec2)", "string", "e.g. us-east-2; empty: boto3's default."),
    "ami_id": _field("AMI id (ec2)", "string", "Empty: the region's Amazon Linux 2023 image."),
    "subnet_id": _field("Subnet id (ec2)", "string", "Empty: the default VPC's."),
    "security_group_ids": _field(
        "Security group ids (ec2)", "string", "Comma-separated; empty: a meadowrun group."
    ),
    "iam_role_instance_profile": _field(
        "Instance profile (ec2)", "string", "Empty: the one `meadowrun install` creates."
    ),
    "ssh_cidr": _field(
        "SSH from CIDR (ec2)", "string", "Who may SSH in; empty: this machine's address."
    ),
    "use_private_ip": _field(
        "Use private IPs (ec2)", "boolean", "Connect to private addresses (inside the VPC)."
    ),
    "location": _field("Azure location (azure)", "string", "e.g. westeurope."),
}

# How the Airflow UI shows a meadowrun connection (shared with MeadowrunHook). The standard
# Host field is hidden: the kind is the typed ``host`` field (a Host field of an older
# connection is still read).
CONNECTION_UI: dict[str, Any] = {
    "hidden-fields": ["schema", "login", "password", "port", "host"],
    "relabeling": {},
    "placeholders": {"extra": '{"host": "ec2", "region_name": "us-east-2"}'},
}

# This project's own documentation of the provider (docs/airflow.md in the repository).
_DOCS = Path(__file__).resolve().parents[3] / "docs" / "airflow.md"


@cache
def documentation_url() -> str | None:
    """Where this provider is documented: the ``Documentation`` project URL of the installed
    distribution (Airflow shows that one as the provider's documentation URL), else
    docs/airflow.md of this project's source tree (an editable or source install)."""
    try:
        urls = metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        name, _, url = str(entry).partition(",")
        if name.strip().lower() == "documentation" and url.strip():
            return url.strip()
    if _DOCS.is_file():
        return _DOCS.as_uri()
    log.debug("no documentation URL for %s: no Project-URL and no %s", DISTRIBUTION, _DOCS)
    return None


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's ProvidersManager (operators, trigger, connection
    type with its form, extra link and the ``@task.meadowrun`` TaskFlow decorator)."""
    integration: dict[str, Any] = {"integration-name": "Meadowrun", "tags": ["compute"]}
    info: dict[str, Any] = {
        "package-name": DISTRIBUTION,
        "name": "Meadowrun",
        "description": "Run Airflow tasks on meadowrun instances (local cloud, EC2, Azure).",
        "versions": ["0.1.0"],
        "integrations": [integration],
        "operators": [
            {"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.operators"]}
        ],
        "hooks": [{"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.hooks"]}],
        "triggers": [{"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.triggers"]}],
        "connection-types": [
            {
                "hook-class-name": f"{_MODULE}.hooks.MeadowrunHook",
                "hook-name": "Meadowrun",
                "connection-type": CONN_TYPE,
                "conn-fields": CONNECTION_FIELDS,
                "ui-field-behaviour": CONNECTION_UI,
            }
        ],
        "extra-links": [f"{_MODULE}.links.MeadowrunJobLogLink"],
        "task-decorators": [
            {"class-name": f"{_MODULE}.decorators.meadowrun_task", "name": "meadowrun"}
        ],
    }
    if (url := documentation_url()) is not None:
        integration["external-doc-url"] = url
        # Airflow replaces this with the distribution's Documentation Project-URL, if any
        info["documentation-url"] = url
    return info
