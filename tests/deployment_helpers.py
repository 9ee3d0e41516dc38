"""Module-level functions the deployment tests run remotely (importable through the mirror)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def env_info(module: str) -> dict[str, object]:
    """Which interpreter runs, and what it can import."""
    found = importlib.util.find_spec(module) is not None
    return {
        "prefix": sys.prefix,
        "executable": sys.executable,
        "version": importlib.import_module(module).__version__ if found else None,
        "has_typer": importlib.util.find_spec("typer") is not None,
        "virtual_env": os.environ.get("VIRTUAL_ENV"),
    }


def sys_path() -> list[str]:
    return list(sys.path)
