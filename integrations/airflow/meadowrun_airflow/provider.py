"""Airflow provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's ProvidersManager."""
    return {
        "package-name": "meadowrun-core",
        "name": "Meadowrun",
        "description": "Run Airflow tasks on meadowrun instances (local cloud, EC2, Azure).",
        "versions": ["0.1.0"],
    }
