"""Mirror the caller's code: every file is a content-addressed, signed blob, and a manifest
lists them per ``sys.path`` entry. Unchanged files are never uploaded twice.
"""

from __future__ import annotations

import fnmatch
import json
import os
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.config import meadowrun_home
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.serialization import Signer

_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages", "build", "dist"}
_CODE_SUFFIXES = (".py", ".pyi", ".so", ".pyd", ".pth")
_MAX_FILE_BYTES = 50 * 2**20


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


def code_roots(include_sys_path: bool, additional_sys_paths: tuple[str, ...]) -> list[Path]:
    """The ``sys.path`` entries holding the user's own code, in ``sys.path`` order."""
    interpreter_dirs = _interpreter_dirs()
    roots: list[Path] = []
    candidates = [*(sys.path if include_sys_path else []), *additional_sys_paths]
    for entry in candidates:
        path = Path(entry or os.getcwd()).resolve()
        if not path.is_dir() or path in roots:
            continue
        if _is_within(path, interpreter_dirs) or (path / "pyvenv.cfg").exists():
            continue
        roots.append(path)
    return roots


@dataclass
class _Cached:
    size: int
    mtime_ns: int
    key: str


class CodeMirror:
    """Uploads code trees to an object store, remembering which file versions it sent."""

    def __init__(self, store: ObjectStore, signer: Signer) -> None:
        self._store = store
        self._signer = signer
        self._cache: dict[Path, _Cached] = {}
        self._lock = threading.Lock()
        self.bytes_uploaded = 0

    def upload(self, roots: list[Path], globs: tuple[str, ...] = ()) -> str:
        """Upload changed files under ``roots``; return the manifest's key."""
        with self._lock:
            entries: list[list[str | int]] = []
            for index, root in enumerate(roots):
                for path in _walk(root, globs):
                    key = self._upload_file(path)
                    if key is not None:
                        entries.append([index, str(path.relative_to(root)), key])
            manifest = json.dumps({"roots": len(roots), "files": entries}).encode()
            signed = self._signer.sign(manifest)
            return self._put(signed)

    def _put(self, blob: bytes) -> str:
        from meadowrun_core.seams.object_store import content_key

        key = content_key(blob)
        if not self._store.exists(key):
            self._store.put(blob)
            self.bytes_uploaded += len(blob)
        return key

    def _upload_file(self, path: Path) -> str | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size > _MAX_FILE_BYTES:
            return None
        cached = self._cache.get(path)
        if cached and cached.size == stat.st_size and cached.mtime_ns == stat.st_mtime_ns:
            return cached.key
        key = self._put(self._signer.sign(path.read_bytes()))
        self._cache[path] = _Cached(stat.st_size, stat.st_mtime_ns, key)
        return key


def _walk(root: Path, globs: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    # never mirror meadowrun's own state (it holds earlier mirrors) or a virtualenv
    state_dir = str(meadowrun_home())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in _SKIP_DIRS
            and not d.endswith(".egg-info")
            and os.path.join(dirpath, d) != state_dir
            and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
        )
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if name.endswith(_CODE_SUFFIXES) or any(fnmatch.fnmatch(rel, g) for g in globs):
                found.append(Path(dirpath) / name)
    return found


def materialize(
    store: ObjectStore, signer: Signer, manifest_key: str, cache_dir: Path
) -> list[str]:
    """Write the code of a manifest under ``cache_dir`` once; return the paths for sys.path."""
    target = cache_dir / manifest_key
    manifest = json.loads(signer.verify(store.get(manifest_key)))
    paths = [str(target / str(i)) for i in range(manifest["roots"])]
    if target.exists():
        return paths
    tmp = cache_dir / f".{manifest_key}.{os.getpid()}.tmp"
    for index, rel, key in manifest["files"]:
        dest = tmp / str(index) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(signer.verify(store.get(key)))
    for i in range(manifest["roots"]):
        (tmp / str(i)).mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # another worker won the race; same content
    return paths
