"""Functions given by name (``"package.module.function"``): importing them where they run.

Used by the worker and by the client's stand-in for a named map function; the client's
check before launch is ``client/names.py``.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_function(qualified_name: str) -> Any:
    """The function a ``"package.module.function"`` name refers to, imported in this process
    (on a worker: from the deployed code); errors say which part is missing and why."""
    module_name, _, attr = qualified_name.rpartition(".")
    if not module_name:
        raise ValueError(f"function name {qualified_name!r} must be 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"cannot import module {module_name!r} for {qualified_name!r} on the worker: {exc}. "
            "Is the code part of the deployment (Deployment.mirror_local or git_repo)?"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(
            f"module {module_name!r} has no attribute {attr!r} (asked for {qualified_name!r})"
        ) from None
