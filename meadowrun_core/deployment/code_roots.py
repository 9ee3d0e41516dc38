"""Where the caller's code is: the ``sys.path`` entries (and editable installs' import-hook
packages) that hold the user's own code rather than the interpreter's, in order."""

from __future__ import annotations

import ast
import functools
import os
import site
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path


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
def interpreter_dirs() -> list[Path]:
    """Directories that belong to the interpreter (stdlib, site-packages), never mirrored."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    dirs.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.USER_SITE:
        dirs.add(site.USER_SITE)
    return [Path(d).resolve() for d in dirs if d]


def is_within(path: Path, parents: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


# The roots are worked out again at most this often for the same sys.path and working
# directory: resolving every entry against the interpreter's directories cost about half a
# millisecond per call, a quarter of a warm run_function (docs/performance.md). What this can
# miss for that long: a sys.path directory created or turned into a venv meanwhile.
ROOTS_TTL_SECONDS = 1.0
_roots_cache: dict[tuple[object, ...], tuple[float, list[CodeRoot]]] = {}


def code_roots(include_sys_path: bool, additional_sys_paths: tuple[str, ...]) -> list[CodeRoot]:
    """The ``sys.path`` entries holding the user's own code, in ``sys.path`` order, plus the
    packages of editable installs that are found through an import hook, not a path."""
    key = (include_sys_path, additional_sys_paths, tuple(sys.path), os.getcwd())
    now = time.monotonic()
    cached = _roots_cache.get(key)
    if cached is not None and now - cached[0] < ROOTS_TTL_SECONDS:
        return list(cached[1])
    roots = _find_code_roots(include_sys_path, additional_sys_paths)
    if len(_roots_cache) > 16:
        _roots_cache.clear()
    _roots_cache[key] = (now, roots)
    return list(roots)


def _find_code_roots(
    include_sys_path: bool, additional_sys_paths: tuple[str, ...]
) -> list[CodeRoot]:
    interpreters = interpreter_dirs()
    roots: list[CodeRoot] = []
    seen: set[Path] = set()
    position = "front"
    for entry in sys.path if include_sys_path else []:
        path = Path(entry or os.getcwd()).resolve()
        if is_within(path, interpreters):
            position = "back"
            continue
        if path in seen or not path.is_dir() or (path / "pyvenv.cfg").exists():
            continue
        seen.add(path)
        roots.append(CodeRoot(path, position, original=str(path)))
    if include_sys_path:
        for name, target in sorted(_editable_finder_mappings().items()):
            if target not in seen and not is_within(target, interpreters):
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
