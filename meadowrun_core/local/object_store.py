"""Content-addressed blobs in a private directory: the local cloud's S3."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from meadowrun_core.seams.object_store import content_key


class FileObjectStore:
    # objects untouched this long are collected (local/collect.py OBJECT_MAX_AGE_SECONDS)
    expiry_seconds: float | None = 7 * 24 * 3600.0

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"invalid object key {key!r}")
        return self._root / key[:2] / key[2:]

    def put(self, data: bytes, overwrite: bool = False) -> str:
        key = content_key(data)
        path = self._path(key)
        if not overwrite and _touch(path):
            return key
        path.parent.mkdir(mode=0o700, exist_ok=True)
        # a name of its own per write: two threads putting the same bytes object at once
        # (one function for several jobs) must not share, and lose, a temporary file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"object {key} is not in the store") from None

    def exists(self, key: str) -> bool:
        """Whether the object is stored; one found is marked used (garbage collection keeps
        objects touched recently, see local/collect.py)."""
        return _touch(self._path(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


def _touch(path: Path) -> bool:
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False
