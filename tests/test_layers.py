"""The adapters (Prefect, Airflow, Dask) use only meadowrun_core's public API: ``import
meadowrun_core as mr`` and the names in ``mr.__all__``, so the core's internals can move
without breaking them (docs/architecture.md, layer rule 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import meadowrun_core as mr

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ROOT / "integrations"
PUBLIC = frozenset(mr.__all__)


def private_uses(source: str) -> list[str]:
    """What ``source`` takes from meadowrun_core besides its public API: imports of modules
    under it, ``from meadowrun_core import`` of names outside ``__all__``, and attributes of
    the imported package (``mr.x``) outside ``__all__``. Imports inside functions count."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("meadowrun_core."):
                    found.append(f"line {node.lineno}: import {alias.name}")
                elif alias.name == "meadowrun_core":
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("meadowrun_core."):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "meadowrun_core":
                found.extend(
                    f"line {node.lineno}: from meadowrun_core import {alias.name}"
                    for alias in node.names
                    if alias.name not in PUBLIC
                )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr not in PUBLIC
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_adapters_use_only_the_public_api() -> None:
    files = sorted(INTEGRATIONS.rglob("*.py"))
    assert files, f"no adapter sources under {INTEGRATIONS}"
    offences = [
        f"{path.relative_to(ROOT)}, {use}"
        for path in files
        for use in private_uses(path.read_text())
    ]
    assert offences == [], (
        "adapters must use only `import meadowrun_core as mr` and names in mr.__all__ "
        "(add what they need to the public API):\n" + "\n".join(offences)
    )


def test_the_check_finds_private_imports() -> None:
    source = (
        "import meadowrun_core as mr\n"
        "from meadowrun_core import Resources, api\n"
        "import meadowrun_core.hosts\n"
        "def f():\n"
        "    from meadowrun_core.client.runtime import ClientRuntime\n"
        "    return mr.run_function, mr.job_context\n"
    )
    assert private_uses(source) == [
        "line 2: from meadowrun_core import api",
        "line 3: import meadowrun_core.hosts",
        "line 5: from meadowrun_core.client.runtime import ...",
        "line 6: mr.job_context",
    ]
