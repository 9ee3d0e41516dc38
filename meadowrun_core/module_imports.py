"""Which meadowrun_core modules a source file imports, and where a module's file lies: how a
cloud's manager package (the AWS Lambda, the Azure Function) collects only what it needs."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds meadowrun_core/


def imported_modules(path: Path, package: str) -> set[str]:
    """meadowrun_core modules a source file imports (absolute and relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "meadowrun_core"}


def module_file(module: str) -> Path | None:
    """The source file of a meadowrun_core module or package; None if there is none."""
    base = PACKAGE_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None
