"""Which directories changed since the last look (Linux inotify), so mirroring an unchanged
tree costs no ``stat`` per file. Without inotify (or with ``MEADOWRUN_MIRROR_WATCH=0``) the
mirror stats every file instead."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# modify, attrib, close_write, moved_from, moved_to, create, delete, delete_self, move_self
_MASK = 0x002 | 0x004 | 0x008 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x800
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


class DirectoryWatcher:
    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._dirs: dict[int, str] = {}
        self.watched: set[str] = set()

    @classmethod
    def create(cls) -> DirectoryWatcher | None:
        if not sys.platform.startswith("linux") or os.environ.get("MEADOWRUN_MIRROR_WATCH") == "0":
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, directory: str) -> bool:
        """Start watching (before reading the directory, so no change slips between)."""
        if directory in self.watched:
            return True
        wd = self._libc.inotify_add_watch(self._fd, directory.encode(), _MASK)
        if wd < 0:
            return False
        self._dirs[wd] = directory
        self.watched.add(directory)
        return True

    def changed(self) -> set[str] | None:
        """Directories with a change since the last call; None if events were lost."""
        dirty: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return dirty
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    return None
                directory = self._dirs.get(wd)
                if directory is not None:
                    dirty.add(directory)
                    if mask & (0x400 | 0x800 | 0x8000):  # gone or moved: watch again later
                        self.watched.discard(directory)
                        dirty.add(os.path.dirname(directory))

    def close(self) -> None:
        os.close(self._fd)
