"""Where state lives and the tunables, all read from the environment so tests and users can
override them without code changes."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


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
    home = home.resolve()
    if str(home) not in _checked_homes:
        make_private(home)
        _checked_homes.add(str(home))
    return home


_checked_homes: set[str] = set()


def make_private(home: Path) -> None:
    """Tighten a state directory that others can read (and its top-level state) to 0700 /
    0600, with a warning: it holds the cluster key and every job's code and data."""
    mode = home.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by other users (mode %o); made it private (0700)", home, mode)
        os.chmod(home, 0o700)
    for entry in home.iterdir():
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
            continue
        private = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        log.warning("%s had mode %o; made it private (%o)", entry, st.st_mode & 0o777, private)
        os.chmod(entry, private)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, whatever this process's umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(created, 0o700)
    return path


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
