"""The channel from a running job back to its client (``meadowrun_core.report``).

It lives in its own module because the worker runs as ``python -m meadowrun_core.worker``
(the ``__main__`` module), while user code imports ``meadowrun_core``: both must see the
same reporter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ForwardedLog:
    """A log record of the job, sent to the client as data (not as text on stderr), so it
    is logged there at its own level under its own logger's name."""

    name: str
    levelno: int
    message: str
    created: float
    exc_text: str | None = None


class JobLogForwarder(logging.Handler):
    """A logging handler for code running inside a job: sends each record of ``level`` and
    up (default ``logging.NOTSET``: all) to the job's client as a record, logged there at its
    own level under its own logger's name rather than as a line of stderr. Outside a job it
    does nothing.

    The worker installs one on its root logger; add another to a logger that does not
    propagate (a library's), or with a higher ``level`` to forward less.

    Example::

        logging.getLogger("distributed").addHandler(mr.JobLogForwarder(logging.WARNING))
    """

    def emit(self, record: logging.LogRecord) -> None:
        if _reporter is None:
            return
        try:
            exc_text = None
            if record.exc_info:
                exc_text = logging.Formatter().formatException(record.exc_info)
            _reporter(
                ForwardedLog(
                    record.name, record.levelno, record.getMessage(), record.created, exc_text
                )
            )
        except Exception:
            self.handleError(record)


forwarder = JobLogForwarder()
