"""The channel from a running job back to its client (``meadowrun_core.report``).

It lives in its own module because the worker runs as ``python -m meadowrun_core.worker``
(the ``__main__`` module), while user code imports ``meadowrun_core``: both must see the
same reporter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_reporter: Callable[[Any], None] | None = None


def set_reporter(reporter: Callable[[Any], None] | None) -> None:
    global _reporter
    _reporter = reporter


def report(value: Any) -> None:
    """Send ``value`` (picklable, small) to the job's client now; it arrives as
    ``JobHandle.next_report()``. Works only inside a meadowrun job."""
    if _reporter is None:
        raise RuntimeError("meadowrun_core.report() works only inside a meadowrun job")
    _reporter(value)
