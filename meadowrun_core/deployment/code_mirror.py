"""Mirror the caller's code as a Merkle tree of content-addressed, signed blobs.

Every file is a blob; every directory is a small signed JSON node listing its files' and
sub-directories' keys; a manifest lists one tree per ``sys.path`` entry with where it stood.
A re-run with unchanged code uploads nothing, and a change to one file uploads that file, its
directory's node and the nodes above it (a few kB), never the whole tree.

On the instance each node becomes a directory once (``<cache>/nodes/<key>``) whose
sub-directories are symlinks to their own nodes, so a changed file rewrites one directory.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import shutil
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.config import meadowrun_home
from meadowrun_core.deployment.watch import DirectoryWatcher
from meadowrun_core.seams.object_store import ObjectStore, content_key
from meadowrun_core.serialization import Signer

_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages", "build", "dist"}
_CODE_SUFFIXES = (".py", ".pyi", ".so", ".pyd", ".pth")
_MAX_FILE_BYTES = 50 * 2**20


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
    """Uploads code trees to an object store, remembering which file versions it sent."""

    def __init__(self, store: ObjectStore, signer: Signer) -> None:
        self._store = store
        self._signer = signer
        self._files: dict[str, _CachedFile] = {}
        self._nodes: dict[str, tuple[object, str]] = {}
        self._dirs: dict[str, _CachedDir] = {}
        self._dirty: set[str] = set()
        self._watcher = DirectoryWatcher.create()
        self._lock = threading.Lock()
        self._state_dir = str(meadowrun_home())
        self.bytes_uploaded = 0

    def upload(self, roots: list[CodeRoot], globs: tuple[str, ...] = ()) -> str:
        """Upload what changed under ``roots``; return the manifest's key."""
        with self._lock:
            if self._watcher is not None:
                dirty = self._watcher.changed()
                if dirty is None:
                    self._dirs.clear()  # events were lost: look at everything again
                self._dirty = dirty or set()
            entries = []
            for root in roots:
                tree = self._root_tree(root, globs)
                entries.append({"tree": tree, "position": root.position, "original": root.original})
            manifest = json.dumps({"version": 2, "roots": entries}, sort_keys=True).encode()
            return self._put(self._signer.sign(manifest))

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
        key = content_key(blob)
        if not self._store.exists(key):
            self._store.put(blob)
            self.bytes_uploaded += len(blob)
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


def materialize(
    store: ObjectStore, signer: Signer, manifest_key: str, cache_dir: Path
) -> list[MaterializedRoot]:
    """Write the code of a manifest under ``cache_dir`` (only directories not written before);
    return one directory per mirrored ``sys.path`` entry, in order."""
    manifest = json.loads(signer.verify(store.get(manifest_key)))
    nodes = cache_dir / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    return [
        MaterializedRoot(
            str(_node_dir(store, signer, root["tree"], nodes)), root["position"], root["original"]
        )
        for root in manifest["roots"]
    ]


def _safe(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid file name {name!r} in a code manifest")
    return name


def _node_dir(store: ObjectStore, signer: Signer, key: str, nodes: Path) -> Path:
    target = nodes / key
    if target.is_dir():
        return target
    node = json.loads(signer.verify(store.get(key)))
    subdirs = [(name, _node_dir(store, signer, sub, nodes)) for name, sub in node["d"]]
    tmp = nodes / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, file_key in node["f"]:
        (tmp / _safe(name)).write_bytes(signer.verify(store.get(file_key)))
    for name, sub_dir in subdirs:
        os.symlink(os.path.join("..", sub_dir.name), tmp / _safe(name))
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker wrote it first; same content
    return target
