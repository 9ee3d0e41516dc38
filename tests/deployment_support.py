"""Shared helpers of the deployment tests (tests/test_deployment_*.py): the pinned package
they install, a git that commits without a configured identity, a tiny git repository with a
package in it, the local object store and signer, and whether anything was launched. One copy
here rather than one per test module."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.serialization import Signer

SIX = "six==1.17.0"
GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]


def nothing_launched(home: Path) -> bool:
    return SqliteAllocationTable(home / "state.db").list_instances() == []


def store_and_signer(tmp_path: Path) -> tuple[FileObjectStore, Signer]:
    return FileObjectStore(tmp_path / "objects"), Signer(b"k" * 32)


def run_git(repo: Path, *args: str) -> str:
    out = subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "src" / "gitpkg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "src" / "gitpkg" / "__init__.py").write_text(
        "import importlib.util\n\n\ndef info():\n    import six\n\n"
        "    return six.__version__, importlib.util.find_spec('typer') is not None\n"
    )
    (repo / "src" / "gitpkg" / "mod.py").write_text("def version():\n    return 'v1'\n")
    (repo / "requirements.txt").write_text(SIX + "\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "v1")
    return repo, run_git(repo, "rev-parse", "HEAD")
