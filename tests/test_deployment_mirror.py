"""Deployments (issue 3), the code mirror: uploading only what changed, remembering the last
manifest while nothing changes, globs and editable finders, and mirror_local's sys.path order.
Split from the deployment tests because it needs no environment build and no git."""

from __future__ import annotations

import os
from pathlib import Path

import deployment_helpers
import pytest

import meadowrun_core as mr
from meadowrun_core.deployment import code_roots
from meadowrun_core.deployment.code_materialize import materialize
from meadowrun_core.deployment.code_mirror import CodeMirror
from meadowrun_core.deployment.code_roots import CodeRoot
from tests.deployment_support import store_and_signer


def _tree(root: Path, dirs: int, files: int, size: int = 1000) -> None:
    for d in range(dirs):
        pkg = root / f"pkg{d}"
        pkg.mkdir(parents=True)
        for f in range(files):
            (pkg / f"m{f}.py").write_text(f"X = {d * 1000 + f}\n" + "#" * size)


def test_mirror_uploads_only_what_changed(tmp_path: Path) -> None:
    store, signer = store_and_signer(tmp_path)
    src = tmp_path / "src"
    _tree(src, dirs=20, files=20)
    (src / "data.csv").write_text("not code")
    mirror = CodeMirror(store, signer)
    first = mirror.upload([CodeRoot(src)])
    assert mirror.bytes_uploaded > 400 * 1000
    before = mirror.bytes_uploaded
    assert mirror.upload([CodeRoot(src)]) == first
    assert mirror.bytes_uploaded == before  # unchanged: nothing uploaded
    fresh = CodeMirror(store, signer)  # a new process: trusts nothing, sends one pack
    assert fresh.upload([CodeRoot(src)]) == first and fresh.requests == 2  # pack + manifest
    (src / "pkg3" / "m7.py").write_text("X = 'changed'\n" + "#" * 10_000)
    second = mirror.upload([CodeRoot(src)])
    changed = mirror.bytes_uploaded - before
    assert second != first and 10_000 < changed < 20_000  # the file and 3 small nodes

    cache = tmp_path / "cache"
    (old,) = materialize(store, signer, first, cache)
    (new,) = materialize(store, signer, second, cache)
    assert "'changed'" in (Path(new.path) / "pkg3" / "m7.py").read_text()
    assert "X = 3007" in (Path(old.path) / "pkg3" / "m7.py").read_text()
    assert not (Path(new.path) / "data.csv").exists()
    # unchanged directories are shared between the two versions, not written twice
    assert os.readlink(Path(new.path) / "pkg4") == os.readlink(Path(old.path) / "pkg4")
    assert len(list((cache / "nodes").iterdir())) == 1 + 20 + 2


def test_mirror_returns_the_last_manifest_until_something_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every directory watched and no event since, an upload returns the last manifest
    without reading the tree; any change, deep or shallow, is still seen."""
    store, signer = store_and_signer(tmp_path)
    src = tmp_path / "src"
    _tree(src, dirs=3, files=2)
    mirror = CodeMirror(store, signer)
    first = mirror.upload([CodeRoot(src)])
    assert mirror.upload([CodeRoot(src)]) == first  # from the watched cache: remembered
    scans: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scans.append(path) or real_scandir(path))
    signed: list[bytes] = []
    real_sign = signer.sign
    monkeypatch.setattr(signer, "sign", lambda body: signed.append(body) or real_sign(body))
    assert mirror.upload([CodeRoot(src)]) == first and scans == [] and signed == []
    (src / "pkg2" / "m1.py").write_text("X = 'deep change'\n")
    second = mirror.upload([CodeRoot(src)])
    assert second != first and scans == [str(src / "pkg2")]
    (src / "pkg1" / "sub").mkdir()
    (src / "pkg1" / "sub" / "new.py").write_text("Y = 1\n")
    third = mirror.upload([CodeRoot(src)])
    assert third != second
    (root,) = materialize(store, signer, third, tmp_path / "cache")
    assert (Path(root.path) / "pkg1" / "sub" / "new.py").read_text() == "Y = 1\n"
    assert "deep change" in (Path(root.path) / "pkg2" / "m1.py").read_text()
    mirror.close()  # no watcher: every upload reads the tree, and still sees changes
    scans.clear()
    assert mirror.upload([CodeRoot(src)]) == third and scans
    (src / "pkg0" / "m0.py").write_text("X = 'after close'\n")
    assert mirror.upload([CodeRoot(src)]) != third


def test_mirror_globs_and_editable_finder(tmp_path: Path) -> None:
    store, signer = store_and_signer(tmp_path)
    src = tmp_path / "proj"
    (src / "mypkg").mkdir(parents=True)
    (src / "mypkg" / "__init__.py").write_text("V = 1\n")
    (src / "mypkg" / "table.csv").write_text("a,b\n")
    finder = tmp_path / "__editable___mypkg_0_1_finder.py"
    mapping = {"mypkg": str(src / "mypkg")}
    finder.write_text(f"import sys\nMAPPING: dict[str, str] = {mapping!r}\n")
    assert code_roots._read_finder(finder) == {"mypkg": src / "mypkg"}
    mirror = CodeMirror(store, signer)
    key = mirror.upload([CodeRoot(src / "mypkg", "back", prefix="mypkg")], ("mypkg/*.csv",))
    (root,) = materialize(store, signer, key, tmp_path / "cache")
    assert (Path(root.path) / "mypkg" / "__init__.py").read_text() == "V = 1\n"
    assert (Path(root.path) / "mypkg" / "table.csv").exists()
    assert root.position == "back"


def test_mirror_local_restores_paths_in_order(local_cloud: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, value in ((first, "first"), (second, "second")):
        directory.mkdir()
        (directory / "mr_order_mod.py").write_text(f"def where():\n    return {value!r}\n")
    (second / "mr_only_second.py").write_text("OK = True\n")
    deployment = mr.Deployment.mirror_local(additional_sys_paths=[str(first), str(second)])
    path = mr.run_function(deployment_helpers.sys_path, deployment=deployment)
    mirrored = [p for p in path if "/code/nodes/" in p]
    assert len(mirrored) >= 3  # tests/ (front) ... first, second (back, in order)
    assert path.index(mirrored[-2]) < path.index(mirrored[-1])
    assert mr.run_function("mr_order_mod.where", deployment=deployment) == "first"
    # a change to one file reaches the worker (a new deployment key, a new worker)
    (first / "mr_order_mod.py").write_text("def where():\n    return 'edited'\n")
    assert mr.run_function("mr_order_mod.where", deployment=deployment) == "edited"
