"""Airflow provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point.

Kept free of Airflow imports: the ProvidersManager calls it while it is still discovering.
"""

from __future__ import annotations

from typing import Any

_MODULE = "meadowrun_airflow"

# How the Airflow UI shows a meadowrun connection (shared with MeadowrunHook).
CONNECTION_UI: dict[str, Any] = {
    "hidden-fields": ["schema", "login", "password", "port"],
    "relabeling": {"host": "Host kind (local, ec2, azure)"},
    "placeholders": {
        "host": "local",
        "extra": '{"host": "ec2", "region_name": "us-east-2"}',
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's ProvidersManager (operators, trigger, connection
    type and the ``@task.meadowrun`` TaskFlow decorator)."""
    return {
        "package-name": "meadowrun-core",
        "name": "Meadowrun",
        "description": "Run Airflow tasks on meadowrun instances (local cloud, EC2, Azure).",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Meadowrun",
                "external-doc-url": "https://github.com/meadowdata/meadowrun",
                "tags": ["compute"],
            }
        ],
        "operators": [
            {"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.operators"]}
        ],
        "hooks": [{"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.hooks"]}],
        "triggers": [
            {"integration-name": "Meadowrun", "python-modules": [f"{_MODULE}.triggers"]}
        ],
        "connection-types": [
            {
                "hook-class-name": f"{_MODULE}.hooks.MeadowrunHook",
                "hook-name": "Meadowrun",
                "connection-type": "meadowrun",
                "ui-field-behaviour": CONNECTION_UI,
            }
        ],
        "task-decorators": [
            {"class-name": f"{_MODULE}.decorators.meadowrun_task", "name": "meadowrun"}
        ],
    }
