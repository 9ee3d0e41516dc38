"""Garbage collection of the local cloud: nothing in ``MEADOWRUN_HOME`` grows forever.

Collected, at most ``MAX_REMOVALS`` entries a run:

- ``instances/<id>/`` of an instance that is neither in the table nor has a live agent
  (its environments, mirrored code, git checkouts and log), once its log is older than
  ``instance_max_age`` (``meadowrun clean``: at once);
- objects in ``objects/`` untouched (written, found by a client, or read) for
  ``object_max_age`` (``meadowrun clean``: ``CLEAN_OBJECT_GRACE_SECONDS``), and also untouched
  since the oldest live job began, that no kept keyed-job outcome references;
- named objects (``objects/named/``: the result cache) written more than
  ``OBJECT_MAX_AGE_SECONDS`` ago, also on ``meadowrun clean`` (``meadowrun cache clear``
  empties the cache): they live as long as an S3 object does under the bucket's lifecycle.

Clients run ``collect_if_due`` in the background when they open the local cloud, at most once
every ``COLLECT_EVERY_SECONDS`` per home; ``meadowrun clean`` runs ``collect`` after it stopped
every instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import NAMED_FOLDER

log = logging.getLogger(__name__)

INSTANCE_MAX_AGE_SECONDS = 24 * 3600.0
OBJECT_MAX_AGE_SECONDS = 7 * 24 * 3600.0
CLEAN_OBJECT_GRACE_SECONDS = 3600.0
COLLECT_EVERY_SECONDS = 3600.0
MAX_REMOVALS = 20000
_TMP_MAX_AGE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class CollectReport:
    instance_dirs: int
    objects: int
    bytes_freed: int


def collect(
    home: Path,
    table: SqliteAllocationTable,
    live_instances: set[str],
    instance_max_age: float = INSTANCE_MAX_AGE_SECONDS,
    object_max_age: float = OBJECT_MAX_AGE_SECONDS,
) -> CollectReport:
    """Remove what no live instance or job uses (see the module doc); ``live_instances`` are
    instance ids with a running agent, whether the table lists them or not."""
    now = time.time()
    live = live_instances | {r.instance_id for r in table.list_instances()}
    dirs = freed = 0
    for folder in sorted((home / "instances").glob("i-*")):
        if dirs >= MAX_REMOVALS or folder.name in live or not folder.is_dir():
            continue
        marker = folder / "agent.log"
        with contextlib.suppress(FileNotFoundError):
            if (marker if marker.exists() else folder).stat().st_mtime > now - instance_max_age:
                continue
            freed += _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            dirs += 1
    kept, oldest_live = table.object_references()
    cutoff = now - object_max_age
    if oldest_live is not None:
        cutoff = min(cutoff, oldest_live - 60)
    objects = 0
    for prefix in sorted((home / "objects").glob("*")):
        if not prefix.is_dir() or prefix.name == NAMED_FOLDER:
            continue
        for blob in prefix.iterdir():
            if objects >= MAX_REMOVALS:
                break
            try:
                st = blob.stat()
            except FileNotFoundError:
                continue
            is_tmp = blob.name.startswith(".")
            if is_tmp and st.st_mtime > now - _TMP_MAX_AGE_SECONDS:
                continue
            if not is_tmp and (st.st_mtime > cutoff or prefix.name + blob.name in kept):
                continue
            with contextlib.suppress(FileNotFoundError):
                blob.unlink()
                objects += 1
                freed += st.st_size
        with contextlib.suppress(OSError):
            prefix.rmdir()  # only if now empty
    named, named_bytes = _collect_named(home / "objects" / NAMED_FOLDER, now, MAX_REMOVALS)
    objects += named
    freed += named_bytes
    if dirs or objects:
        log.info(
            "collected %d instance folder(s) and %d object(s), %.1f MB",
            dirs,
            objects,
            freed / 1e6,
        )
    return CollectReport(dirs, objects, freed)


def collect_if_due(home: Path, table: SqliteAllocationTable) -> CollectReport | None:
    """``collect`` by age, at most once every ``COLLECT_EVERY_SECONDS`` for this home."""
    from meadowrun_core.local.admin import home_agents

    marker = home / ".last_collect"
    try:
        if marker.stat().st_mtime > time.time() - COLLECT_EVERY_SECONDS:
            return None
    except FileNotFoundError:
        pass
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))
        os.utime(marker)
        return collect(home, table, set(home_agents(home).values()))
    except Exception as exc:  # housekeeping must never break a job
        log.warning("garbage collection of %s failed: %s", home, exc)
        return None


def _collect_named(top: Path, now: float, limit: int) -> tuple[int, int]:
    """Remove named objects written over ``OBJECT_MAX_AGE_SECONDS`` ago (and write leftovers
    over a day old); return how many and their bytes."""
    removed = freed = 0
    for folder, _, files in os.walk(top, topdown=False):
        for name in files:
            if removed >= limit:
                return removed, freed
            path = Path(folder) / name
            max_age = _TMP_MAX_AGE_SECONDS if name.startswith(".") else OBJECT_MAX_AGE_SECONDS
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                if st.st_mtime > now - max_age:
                    continue
                path.unlink()
                removed += 1
                freed += st.st_size
        if Path(folder) != top:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if now empty
    return removed, freed


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
