"""Where state lives and the tunables, all read from the environment so tests and users can
override them without code changes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(
            f"{name}={raw!r} is not a number; set it to a number such as {default}"
        ) from exc


def meadowrun_home(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the local cloud's state (``override``, else ``MEADOWRUN_HOME``,
    else ``~/.meadowrun``), created private to this user."""
    chosen = override or os.environ.get("MEADOWRUN_HOME") or Path.home() / ".meadowrun"
    home = Path(chosen).expanduser()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home.resolve()


@dataclass(frozen=True)
class Settings:
    """Tunables of the local cloud and of the client's lease.

    Every field has an environment variable so that a test can shrink timeouts to seconds.
    """

    lease_seconds: float
    idle_timeout_seconds: float
    visibility_timeout_seconds: float
    max_cpu: float
    max_memory_gb: float
    reconcile_interval_seconds: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            lease_seconds=_float_env("MEADOWRUN_LEASE_SECONDS", 10.0),
            idle_timeout_seconds=_float_env("MEADOWRUN_IDLE_TIMEOUT", 60.0),
            visibility_timeout_seconds=_float_env("MEADOWRUN_VISIBILITY_TIMEOUT", 15.0),
            max_cpu=_float_env("MEADOWRUN_LOCAL_MAX_CPU", float(os.cpu_count() or 1)),
            max_memory_gb=_float_env(
                "MEADOWRUN_LOCAL_MAX_MEMORY_GB",
                round(psutil.virtual_memory().total / 2**30, 1),
            ),
            reconcile_interval_seconds=_float_env("MEADOWRUN_RECONCILE_INTERVAL", 0.5),
        )
