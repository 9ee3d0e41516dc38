"""Functions the twin tests run on instances. Importable there through the code mirror, so
this module imports only the standard library (a twin host has nothing else of ours)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path


def where() -> tuple[str, str | None, str, int]:
    """(host name, meadowrun instance id, interpreter, 42)."""
    return socket.gethostname(), os.environ.get("MEADOWRUN_INSTANCE_ID"), sys.executable, 42


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


def die_once(x: int) -> int:
    """SIGKILL its worker the first time it sees 3 (a marker on the instance's /tmp)."""
    marker = Path("/tmp") / f"died-{x}"
    if x == 3 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def sleep_and_mark(seconds: float, name: str) -> str:
    """Sleep, then leave /tmp/<name> on the instance (it must not appear if stopped)."""
    time.sleep(seconds)
    Path("/tmp", name).write_text("ran to the end")
    return name


def random_bytes(i: int) -> bytes:
    """Data that cannot be recomputed to the same value (so a move is told from a rerun)."""
    return os.urandom(1000) + bytes([i])


def grow(blob: bytes) -> bytes:
    """A result as large as the argument again (1 MB in, 2 MB out)."""
    return blob + b"r" * len(blob)


def hungry_square(x: int) -> int:
    """``x`` squared; task 2 first holds 300 MB for 2.5 s (more than 0.25 GB)."""
    if x == 2:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(2.5)
    return x * x
