"""The event loop that the client's background thread and the agent run on.

uvloop's where it is installed (a dependency on Linux and macOS), else asyncio's. A warm
``run_function`` is a chain of hand-overs between event loops (calling thread -> client loop
-> agent -> worker and back), and uvloop's lighter loop turns and socket writes took about
12% off its round trip and 16% off its CPU here (docs/performance.md, "Session 12").
``MEADOWRUN_EVENT_LOOP=asyncio`` picks asyncio's loop, to rule uvloop out when chasing a
problem.
"""

from __future__ import annotations

import asyncio
import os

try:
    import uvloop
except ImportError:  # Windows, or an environment without it: asyncio's loop does the same job
    uvloop = None  # type: ignore[assignment]

CHOICES = ("uvloop", "asyncio")


def chosen() -> str:
    """``MEADOWRUN_EVENT_LOOP`` (``uvloop``, the default, or ``asyncio``), falling back to
    asyncio where uvloop is not installed."""
    wanted = os.environ.get("MEADOWRUN_EVENT_LOOP", "").strip().lower() or "uvloop"
    if wanted not in CHOICES:
        raise ValueError(
            f"MEADOWRUN_EVENT_LOOP={wanted!r} is not one of {', '.join(CHOICES)}; unset it "
            "(uvloop where installed) or set it to asyncio"
        )
    return "uvloop" if wanted == "uvloop" and uvloop is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the chosen kind (see ``chosen``)."""
    if chosen() == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
