"""Checking a function given by name (``"package.module.function"``) before anything launches.

When the job runs the caller's own code with the caller's own interpreter on this machine (the
local cloud with ``Deployment.mirror_local()`` and ``LocalCurrentInterpreter()``), what the
worker can import is known here: the interpreter's own modules and the mirrored code. Then a
module that does not exist, one outside both, or a module without that attribute fails at once
with ``BadInputError``. For other deployments (a git repository, a container, another
interpreter, another cloud) the name is resolved on the worker only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from meadowrun_core.deployment.code_roots import code_roots, interpreter_dirs, is_within
from meadowrun_core.deployment.spec import Deployment, LocalCurrentInterpreter
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import AllocLocalInstance, Host, resolve_host


def name_is_checkable(host: Host | None, deployment: Deployment | None) -> bool:
    deployment = deployment or Deployment.mirror_local()
    return (
        isinstance(resolve_host(host), AllocLocalInstance)
        and deployment.git is None
        and isinstance(deployment.interpreter, LocalCurrentInterpreter)
        and not deployment.interpreter.recreate
    )


def check_function_name(function: object, host: Host | None, deployment: Deployment | None) -> None:
    """Raise BadInputError if a function name cannot resolve on the worker (see module doc)."""
    if not isinstance(function, str) or not name_is_checkable(host, deployment):
        return
    deployment = deployment or Deployment.mirror_local()
    module_name, _, attr = function.rpartition(".")
    if not module_name or not attr:
        return  # upload_function says what is wrong with the form
    spec = _find_spec(module_name, deployment)
    if spec is None:
        raise BadInputError(
            f"function {function!r}: there is no module {module_name!r} for this interpreter "
            f"({sys.executable}), so the worker cannot import it either. Check the spelling, or "
            "put its directory on sys.path or in Deployment.mirror_local(additional_sys_paths="
            "[...])."
        )
    origin = spec.origin if spec.has_location else None
    if origin:
        path = Path(origin).resolve()
        roots = code_roots(deployment.include_sys_path, tuple(deployment.additional_sys_paths))
        if not is_within(path, interpreter_dirs()) and not any(
            is_within(path, [root.path]) or path == root.path for root in roots
        ):
            raise BadInputError(
                f"function {function!r}: module {module_name!r} ({origin}) is neither in the "
                "mirrored code nor installed in the interpreter, so the worker cannot import "
                f"it. Mirror its directory: Deployment.mirror_local(additional_sys_paths="
                f"[{str(_search_root(path, module_name))!r}])."
            )
    if not _has_attribute(spec, module_name, attr):
        raise BadInputError(
            f"function {function!r}: module {module_name!r} ({origin or 'built in'}) has no "
            f"attribute {attr!r}. Check the spelling of the function's name."
        )


def _find_spec(module_name: str, deployment: Deployment) -> importlib.machinery.ModuleSpec | None:
    """Where the worker finds the module: this interpreter's path, then (as the worker's
    path ends) the deployment's ``additional_sys_paths``."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None or not deployment.additional_sys_paths:
        return spec
    parts = module_name.split(".")
    search: list[str] | None = [str(p) for p in deployment.additional_sys_paths]
    for depth in range(len(parts)):
        if search is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), search)
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    return spec


def _has_attribute(spec: importlib.machinery.ModuleSpec, module_name: str, attr: str) -> bool:
    """Whether the module defines ``attr``: read from its source without running it when
    possible (no import side effects in the client), else by importing it."""
    module = sys.modules.get(module_name)
    if module is not None:
        return hasattr(module, attr)
    origin = spec.origin if spec.has_location else None
    if origin and origin.endswith(".py"):
        try:
            tree = ast.parse(Path(origin).read_bytes())
        except (OSError, SyntaxError, ValueError):
            return True  # the worker reports it with its traceback
        names = _top_level_names(tree)
        if names is None or attr in names:
            return True
        if spec.submodule_search_locations:  # a package: attr may be a submodule
            return importlib.util.find_spec(f"{module_name}.{attr}") is not None
        return False
    try:
        return hasattr(importlib.import_module(module_name), attr)
    except Exception:
        return True  # not ours to judge here; the worker reports it


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at top level (any nesting of if/try/with), or None if it cannot be
    known statically (a star import, a module ``__getattr__``, writes to ``globals()``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Name) and node.id in ("globals", "vars"):
            return None
    return None if "__getattr__" in names else names


def _search_root(path: Path, module_name: str) -> Path:
    """The directory to put on sys.path for ``module_name`` at ``path``."""
    root = path.parent
    if path.name == "__init__.py":
        root = root.parent
    for _ in range(module_name.count(".")):
        root = root.parent
    return root
