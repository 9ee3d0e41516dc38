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

On the instance each node becomes a directory once (``<cache>/nodes/<key>``) whose
sub-directories are symlinks to their own nodes, so a changed file rewrites one directory;
packs are fetched once per instance (``<cache>/packs/<key>``).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import shutil
import site
import struct
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.config import meadowrun_home
from meadowrun_core.deployment.watch import DirectoryWatcher
from meadowrun_core.seams.object_store import (
    DamagedObjectError,
    ObjectStore,
    content_key,
    get_verified,
)
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages", "build", "dist"}
_CODE_SUFFIXES = (".py", ".pyi", ".so", ".pyd", ".pth")
_MAX_FILE_BYTES = 50 * 2**20
# More new blobs than this in one upload go out in packs of at most _PACK_BYTES each.
_SINGLE_PUTS = 8
_PACK_BYTES = 8 * 2**20
_PACK_MAGIC = b"MRPACK1"
_U32 = struct.Struct("!I")


@dataclass(frozen=True)
class CodeRoot:
    """One directory (or file) of the caller's code and where it stood on ``sys.path``.

    ``position`` is ``front`` (before the interpreter's own paths) or ``back`` (after them, as
    editable installs' ``.pth`` entries are); ``prefix`` mirrors it as a sub-directory (or file)
    of that name, for editable installs that map a package name to a path.
    """

    path: Path
    position: str = "front"
    prefix: str = ""
    original: str = ""


@functools.cache
def _interpreter_dirs() -> list[Path]:
    """Directories that belong to the interpreter (stdlib, site-packages), never mirrored."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    dirs.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.USER_SITE:
        dirs.add(site.USER_SITE)
    return [Path(d).resolve() for d in dirs if d]


def _is_within(path: Path, parents: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


def code_roots(include_sys_path: bool, additional_sys_paths: tuple[str, ...]) -> list[CodeRoot]:
    """The ``sys.path`` entries holding the user's own code, in ``sys.path`` order, plus the
    packages of editable installs that are found through an import hook, not a path."""
    interpreter_dirs = _interpreter_dirs()
    roots: list[CodeRoot] = []
    seen: set[Path] = set()
    position = "front"
    for entry in sys.path if include_sys_path else []:
        path = Path(entry or os.getcwd()).resolve()
        if _is_within(path, interpreter_dirs):
            position = "back"
            continue
        if path in seen or not path.is_dir() or (path / "pyvenv.cfg").exists():
            continue
        seen.add(path)
        roots.append(CodeRoot(path, position, original=str(path)))
    if include_sys_path:
        for name, target in sorted(_editable_finder_mappings().items()):
            if target not in seen and not _is_within(target, interpreter_dirs):
                roots.append(CodeRoot(target, "back", prefix=name if target.is_dir() else ""))
    for entry in additional_sys_paths:
        path = Path(entry).resolve()
        if path.is_dir() and path not in seen:
            seen.add(path)
            roots.append(CodeRoot(path, "back", original=str(path)))
    return roots


_finder_cache: dict[tuple[str, int], dict[str, Path]] = {}


def _editable_finder_mappings() -> dict[str, Path]:
    """setuptools' editable installs (``__editable___*_finder.py``) map package names to
    directories with an import hook instead of a ``sys.path`` entry; read those maps."""
    found: dict[str, Path] = {}
    for directory in site.getsitepackages():
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            continue
        cache_key = (directory, mtime)
        if cache_key not in _finder_cache:
            mapping: dict[str, Path] = {}
            for name in os.listdir(directory):
                if name.startswith("__editable___") and name.endswith("_finder.py"):
                    mapping.update(_read_finder(Path(directory) / name))
            _finder_cache[cache_key] = mapping
        found.update(_finder_cache[cache_key])
    return found


def _read_finder(path: Path) -> dict[str, Path]:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        target: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == "MAPPING" and value is not None:
            try:
                raw = ast.literal_eval(value)
            except ValueError:
                return {}
            return {str(k): Path(v) for k, v in raw.items() if Path(v).exists()}
    return {}


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
            if self._watcher is not None:
                dirty = self._watcher.changed()
                if dirty is None:
                    self._dirs.clear()  # events were lost: look at everything again
                self._dirty = dirty or set()
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
            for pack in packs:
                blob = self._signer.sign(_pack(pack))
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


@dataclass(frozen=True)
class MaterializedRoot:
    path: str
    position: str
    original: str


def _pack(blobs: list[tuple[str, bytes]]) -> bytes:
    """Several signed blobs in one object: an index of (key, length), then the blobs."""
    index = json.dumps([[key, len(blob)] for key, blob in blobs]).encode()
    return b"".join([_PACK_MAGIC, _U32.pack(len(index)), index, *(blob for _, blob in blobs)])


def _unpack(payload: bytes) -> dict[str, bytes]:
    if not payload.startswith(_PACK_MAGIC):
        raise ValueError("not a code pack")
    start = len(_PACK_MAGIC)
    (length,) = _U32.unpack_from(payload, start)
    offset = start + 4 + length
    blobs = {}
    for key, size in json.loads(payload[start + 4 : offset]):
        blobs[str(key)] = payload[offset : offset + size]
        offset += size
    return blobs


class _Blobs:
    """Verified blobs of one manifest: from its packs (fetched once per instance into
    ``<cache>/packs``), else one by one from the store."""

    def __init__(self, store: ObjectStore, signer: Signer, packs: list[str], cache: Path) -> None:
        self._store = store
        self._signer = signer
        self._packs = packs
        self._cache = cache
        self._blobs: dict[str, tuple[str, bytes]] | None = None

    def _load(self) -> dict[str, tuple[str, bytes]]:
        if self._blobs is None:
            self._blobs = {}
            for pack in self._packs:
                path = self._cache / pack
                try:
                    payload = self._signer.verify(path.read_bytes())
                except (OSError, UnauthenticatedDataError):
                    payload = get_verified(self._store, self._signer, pack)
                    self._cache.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{pack}.{os.getpid()}.{threading.get_ident()}")
                    tmp.write_bytes(self._signer.sign(payload))
                    os.replace(tmp, path)
                for key, blob in _unpack(payload).items():
                    self._blobs.setdefault(key, (pack, blob))
        return self._blobs

    def get(self, key: str) -> bytes:
        found = self._load().get(key) if self._packs else None
        if found is None:
            return get_verified(self._store, self._signer, key)
        pack, blob = found
        try:
            return self._signer.verify(blob)
        except UnauthenticatedDataError as exc:
            raise DamagedObjectError(pack, f"blob {key} in it: {exc}") from None


def materialize(
    store: ObjectStore, signer: Signer, manifest_key: str, cache_dir: Path
) -> list[MaterializedRoot]:
    """Write the code of a manifest under ``cache_dir`` (only directories not written before);
    return one directory per mirrored ``sys.path`` entry, in order."""
    manifest = json.loads(get_verified(store, signer, manifest_key))
    nodes = cache_dir / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(store, signer, list(manifest.get("packs", [])), cache_dir / "packs")
    return [
        MaterializedRoot(
            str(_node_dir(blobs, root["tree"], nodes)), root["position"], root["original"]
        )
        for root in manifest["roots"]
    ]


def _safe(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid file name {name!r} in a code manifest")
    return name


def _node_dir(blobs: _Blobs, key: str, nodes: Path) -> Path:
    target = nodes / key
    if target.is_dir():
        return target
    node = json.loads(blobs.get(key))
    subdirs = [(name, _node_dir(blobs, sub, nodes)) for name, sub in node["d"]]
    tmp = nodes / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, file_key in node["f"]:
        (tmp / _safe(name)).write_bytes(blobs.get(file_key))
    for name, sub_dir in subdirs:
        os.symlink(os.path.join("..", sub_dir.name), tmp / _safe(name))
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker wrote it first; same content
    return target
