"""Mirror the caller's code as a Merkle tree of content-addressed, signed blobs.

Every file is a blob; every directory is a small signed JSON node listing its files' and
sub-directories' keys; a manifest lists one tree per ``sys.path`` entry with where it stood.
A re-run with unchanged code uploads nothing, and a change to one file uploads that file, its
directory's node and the nodes above it (a few kB), never the whole tree.

New blobs of one upload go out together: a few as single objects, more (a cold tree) as
packs of up to 8 MiB listed in the manifest, so mirroring a fresh tree takes a handful of
requests, not one per file, and never a HEAD: the mirror trusts only what it wrote itself,
and only for half the store's expiry (then it writes everything again, which also restarts
the objects' expiry).

Where the code is: ``code_roots.py``; how an instance writes it out: ``code_materialize.py``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from meadowrun_core.config import meadowrun_home
from meadowrun_core.deployment.code_materialize import pack
from meadowrun_core.deployment.code_roots import CodeRoot
from meadowrun_core.deployment.watch import DirectoryWatcher
from meadowrun_core.seams.object_store import (
    ObjectStore,
    content_key,
)
from meadowrun_core.serialization import Signer

_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages", "build", "dist"}
_CODE_SUFFIXES = (".py", ".pyi", ".so", ".pyd", ".pth")
_MAX_FILE_BYTES = 50 * 2**20
# More new blobs than this in one upload go out in packs of at most _PACK_BYTES each.
_SINGLE_PUTS = 8
_PACK_BYTES = 8 * 2**20


@dataclass
class _CachedDir:
    globs: tuple[str, ...]
    files: list[list[str]]
    subdirs: list[tuple[str, str]]
    sub_keys: list[str | None]
    key: str | None


@dataclass
class _CachedFile:
    size: int
    mtime_ns: int
    key: str


class CodeMirror:
    """Uploads code trees to an object store, remembering which blobs it wrote (and when)."""

    def __init__(
        self, store: ObjectStore, signer: Signer, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._signer = signer
        self._clock = clock
        self._watcher = DirectoryWatcher.create()
        self._lock = threading.Lock()
        self._state_dir = str(meadowrun_home())
        self.bytes_uploaded = 0
        self.requests = 0  # object store writes, for benchmarks
        self._overwrite_next = False
        self._forget()

    def close(self) -> None:
        """Let go of the directory watcher (an inotify instance); uploads still work, each
        looking at the whole tree."""
        with self._lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
                self._dirs.clear()

    def _forget(self) -> None:
        """Trust nothing written before: the next upload writes every blob again."""
        self._files: dict[str, _CachedFile] = {}
        self._nodes: dict[str, tuple[object, str]] = {}
        self._dirs: dict[str, _CachedDir] = {}
        self._dirty: set[str] = set()
        self._written: set[str] = set()  # keys this mirror wrote (alone or in a pack)
        self._packs: list[str] = []  # packs written since the epoch, newest first
        self._pending: dict[str, bytes] = {}
        self._epoch = self._clock()
        # (roots, globs, packs) and the manifest key of the last upload that found every
        # directory watched and unchanged, for the next such upload to return at once
        self._unchanged_key: tuple[tuple[object, ...], str] | None = None
        self._looked = False  # this upload read a directory or a file root from disk

    def _refresh_age(self) -> float | None:
        """How long what this mirror wrote is trusted: half the store's expiry, so anything a
        manifest names has at least that long left."""
        expiry = self._store.expiry_seconds
        return None if expiry is None else expiry / 2

    def knows(self, key: str) -> bool:
        with self._lock:
            return key in self._written or key in self._packs

    def invalidate(self, overwrite: bool = False) -> None:
        """Forget what was uploaded (a stored blob was found damaged, or may have expired);
        with ``overwrite`` the next upload also replaces blobs that exist in the store."""
        with self._lock:
            self._forget()
            self._overwrite_next = overwrite

    def upload(
        self, roots: list[CodeRoot], globs: tuple[str, ...] = (), overwrite: bool = False
    ) -> str:
        """Upload what changed under ``roots``; return the manifest's key. ``overwrite``
        writes every blob again, replacing damaged copies."""
        with self._lock:
            overwrite = overwrite or self._overwrite_next
            self._overwrite_next = False
            age = self._refresh_age()
            if overwrite or (age is not None and self._clock() - self._epoch > age):
                self._forget()
            unchanged = False
            if self._watcher is not None:
                dirty = self._watcher.changed()
                if dirty is None:
                    self._dirs.clear()  # events were lost: look at everything again
                self._dirty = dirty or set()
                unchanged = dirty == set()
            # every directory watched and no event since: the same manifest as last time
            # (the upload that made it wrote all its blobs)
            last = self._unchanged_key
            same = last is not None and last[0] == (tuple(roots), globs, tuple(self._packs))
            if unchanged and not overwrite and same and last is not None:
                return last[1]
            self._unchanged_key = None
            self._looked = False
            try:
                entries = []
                for root in roots:
                    tree = self._root_tree(root, globs)
                    entries.append(
                        {"tree": tree, "position": root.position, "original": root.original}
                    )
                self._write_pending(overwrite)
                manifest = {"version": 3, "roots": entries, "packs": self._packs}
                body = json.dumps(manifest, sort_keys=True).encode()
                key = self._put(self._signer.sign(body))
                self._write_pending(overwrite)
                if unchanged and not self._looked:
                    self._unchanged_key = ((tuple(roots), globs, tuple(self._packs)), key)
                return key
            except BaseException:
                self._forget()  # some blobs may not have been written: trust nothing
                raise

    def _write_pending(self, overwrite: bool) -> None:
        """Write the blobs collected since the last call: alone when few, else in packs."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        if len(pending) <= _SINGLE_PUTS:
            for blob in pending.values():
                self._store.put(blob, overwrite=overwrite)
                self._count(len(blob))
        else:
            packs: list[list[tuple[str, bytes]]] = [[]]
            size = 0
            for item in pending.items():
                if packs[-1] and size + len(item[1]) > _PACK_BYTES:
                    packs.append([])
                    size = 0
                packs[-1].append(item)
                size += len(item[1])
            for blobs in packs:
                blob = self._signer.sign(pack(blobs))
                # always written (no HEAD): one PUT costs less than asking, and restarts expiry
                key = self._store.put(blob, overwrite=True)
                self._count(len(blob))
                self._packs.insert(0, key)
        self._written.update(pending)

    def _count(self, size: int) -> None:
        self.bytes_uploaded += size
        self.requests += 1

    def _root_tree(self, root: CodeRoot, globs: tuple[str, ...]) -> str:
        path = str(root.path)
        if root.prefix or root.path.is_file():
            files: list[list[str]] = []
            dirs: list[list[str]] = []
            if root.path.is_file():
                self._looked = True  # a file root is not watched: stat it every time
                key = self._file_key(path)
                if key is not None:
                    files.append([root.path.name, key])
            else:
                sub = self._tree(path, globs, f"{root.prefix}/")
                if sub is not None:
                    dirs.append([root.prefix, sub])
            return self._node(f"{path}\0{root.prefix}", files, dirs)
        return self._tree(path, globs, "") or self._node(path, [], [])

    def _tree(self, dirpath: str, globs: tuple[str, ...], rel: str) -> str | None:
        """The key of the node for ``dirpath``, or None if it holds no code."""
        cached = self._dirs.get(dirpath)
        if (
            cached is not None
            and cached.globs == globs
            and dirpath not in self._dirty
            and dirpath in self._watched()
        ):
            # nothing in this directory changed: only its sub-directories may have
            current = [self._tree(path, globs, f"{rel}{name}/") for name, path in cached.subdirs]
            if current == cached.sub_keys:
                return cached.key
            found = [[n, k] for (n, _), k in zip(cached.subdirs, current, strict=True) if k]
            new_key = self._node(dirpath, cached.files, found) if cached.files or found else None
            self._dirs[dirpath] = _CachedDir(globs, cached.files, cached.subdirs, current, new_key)
            return new_key
        self._looked = True
        watched = self._watcher is not None and self._watcher.watch(dirpath)
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return None
        files: list[list[str]] = []
        dirs: list[list[str]] = []
        subdirs: list[tuple[str, str]] = []
        sub_keys: list[str | None] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if self._skip_dir(name, entry.path):
                        continue
                    sub = self._tree(entry.path, globs, f"{rel}{name}/")
                    subdirs.append((name, entry.path))
                    sub_keys.append(sub)
                    if sub is not None:
                        dirs.append([name, sub])
                elif entry.is_file() and (
                    name.endswith(_CODE_SUFFIXES)
                    or any(fnmatch.fnmatch(f"{rel}{name}", g) for g in globs)
                ):
                    key = self._file_key(entry.path, entry.stat())
                    if key is not None:
                        files.append([name, key])
            except OSError:
                continue
        key = self._node(dirpath, files, dirs) if files or dirs else None
        if watched:
            self._dirs[dirpath] = _CachedDir(globs, files, subdirs, sub_keys, key)
        return key

    def _watched(self) -> set[str]:
        return self._watcher.watched if self._watcher is not None else set()

    def _skip_dir(self, name: str, path: str) -> bool:
        return (
            name.startswith(".")
            or name in _SKIP_DIRS
            or name.endswith(".egg-info")
            or path == self._state_dir  # meadowrun's own state holds earlier mirrors
            or os.path.exists(os.path.join(path, "pyvenv.cfg"))  # a virtualenv
        )

    def _node(self, cache_key: str, files: list[list[str]], dirs: list[list[str]]) -> str:
        signature = (files, dirs)
        cached = self._nodes.get(cache_key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        body = json.dumps({"f": files, "d": dirs}, separators=(",", ":")).encode()
        key = self._put(self._signer.sign(body))
        self._nodes[cache_key] = (signature, key)
        return key

    def _put(self, blob: bytes) -> str:
        """The blob's key; it is written with the upload's other new blobs."""
        key = content_key(blob)
        if key not in self._written:
            self._pending[key] = blob
        return key

    def _file_key(self, path: str, stat: os.stat_result | None = None) -> str | None:
        try:
            stat = stat or os.stat(path)
        except OSError:
            return None
        if stat.st_size > _MAX_FILE_BYTES:
            return None
        cached = self._files.get(path)
        if cached and cached.size == stat.st_size and cached.mtime_ns == stat.st_mtime_ns:
            return cached.key
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        key = self._put(self._signer.sign(data))
        self._files[path] = _CachedFile(stat.st_size, stat.st_mtime_ns, key)
        return key
