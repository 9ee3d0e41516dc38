"""Content-addressed blobs in a private directory: the local cloud's S3. Named objects live
under ``named/`` in the same directory (content keys use two-character folders)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from meadowrun_core.seams.object_store import NamedObject, check_name, content_key

NAMED_FOLDER = "named"


class FileObjectStore:
    # objects untouched this long are collected (local/collect.py OBJECT_MAX_AGE_SECONDS)
    expiry_seconds: float | None = 7 * 24 * 3600.0

    def __init__(self, root: Path) -> None:
        self._root = root
        self._named = root / NAMED_FOLDER
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
        # a name of its own per write: two threads putting the same bytes object at once
        # (one function for several jobs) must not share, and lose, a temporary file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        for attempt in range(3):
            _make_folder(path.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except FileNotFoundError:
                # the collector removed the (empty) prefix folder between mkdir and open
                if attempt == 2:
                    raise
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # the folder went with our file in it: write again
                if attempt == 2:
                    raise
                continue
            return key
        raise AssertionError("unreachable")

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

    def put_named(self, name: str, data: bytes) -> None:
        path = self._named / check_name(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        for attempt in range(3):
            with contextlib.suppress(FileExistsError):  # and gone again: see _make_folder
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
                return
            except FileNotFoundError:  # a clear removed the emptied folder meanwhile
                if attempt == 2:
                    raise

    def get_named(self, name: str) -> bytes:
        try:
            return (self._named / check_name(name)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyError(f"object {name} is not in the store") from None

    def list_named(self, prefix: str) -> Iterator[NamedObject]:
        top = self._named / check_name(prefix) if prefix else self._named
        for folder, _, files in os.walk(top):
            for file in files:
                if file.startswith("."):
                    continue  # a write in progress
                path = Path(folder) / file
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    name = path.relative_to(self._named).as_posix()
                    yield NamedObject(name, st.st_mtime, st.st_size)

    def delete_named(self, names: Iterable[str]) -> None:
        for name in names:
            path = self._named / check_name(name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if now empty


def _touch(path: Path) -> bool:
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _make_folder(folder: Path) -> None:
    """Create a prefix folder unless it exists. Not ``Path.mkdir(exist_ok=True)``: that
    re-checks ``is_dir()`` after EEXIST and raises when the collector removed the empty folder
    in between; here the open that follows fails instead and the write is tried again."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
