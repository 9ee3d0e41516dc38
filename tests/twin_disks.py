"""Deleting powered-off twin hosts' disks without making anyone wait (tests/twin_hosts.py)."""

from __future__ import annotations

import contextlib
import queue
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path


class DiskShredder:
    """Deletes powered-off hosts' disks on a thread of its own.

    Deleting a host's ~450 MB of small files took 1-8 s in full CI runs (an ``unlink`` each,
    on a disk busy with the other tests), and a twin closing its hosts one after another made
    a test's teardown take 30-50 s. Moving them out of the way is a rename; a network's
    ``close`` waits for the deletions still running, so a session leaves nothing behind."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Path] = queue.Queue()
        self._started = False
        self._lock = threading.Lock()

    def discard(self, disk_dir: Path, paths: Iterable[Path]) -> None:
        trash = disk_dir.with_name(f".{disk_dir.name}.deleted-{secrets.token_hex(4)}")
        trash.mkdir()
        for number, path in enumerate(paths):
            with contextlib.suppress(OSError):  # gone already; left where it is otherwise
                path.rename(trash / f"{number}-{path.name}")
        with self._lock:
            if not self._started:
                threading.Thread(
                    target=self._delete, name="twin-disk-shredder", daemon=True
                ).start()
                self._started = True
        self._queue.put(trash)

    def wait(self) -> None:
        """Until every disk discarded so far is deleted."""
        self._queue.join()

    def _delete(self) -> None:
        while True:
            trash = self._queue.get()
            try:
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                self._queue.task_done()


SHREDDER = DiskShredder()
