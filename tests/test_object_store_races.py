"""The local object store against its own garbage collector: the collector removes a prefix
folder once it is empty (``local/collect.py``), which can happen between a writer's ``mkdir``
and its ``open``. Writes must go on, never fail: CI once saw ``FileExistsError`` from
``Path.mkdir(exist_ok=True)``, whose re-check after EEXIST found the folder gone. The race is
made to happen every time by removing the folder inside ``os.mkdir``, as the collector did."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.seams.object_store import content_key


def _collector_strikes_inside_mkdir(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[int]:
    """The first ``mkdir`` of ``folder`` finds it present (EEXIST), and the collector removes it
    before the caller can look again."""
    real_mkdir = os.mkdir
    strikes: list[int] = []

    def mkdir(path: str | os.PathLike[str], mode: int = 0o777, **kwargs: object) -> None:
        if Path(path) == folder and not strikes:
            real_mkdir(path, mode)
            strikes.append(1)
            try:
                real_mkdir(path, mode)  # raises FileExistsError: someone made it meanwhile
            finally:
                os.rmdir(path)  # ... and the collector took it, empty, right after
        real_mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return strikes


def test_a_put_survives_the_collector_removing_its_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileObjectStore(tmp_path / "objects")
    data = b"a blob"
    strikes = _collector_strikes_inside_mkdir(
        monkeypatch, tmp_path / "objects" / content_key(data)[:2]
    )
    key = store.put(data)
    assert strikes, "the race was never exercised"
    assert store.get(key) == data


def test_a_named_put_survives_the_collector_removing_its_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileObjectStore(tmp_path / "objects")
    strikes = _collector_strikes_inside_mkdir(monkeypatch, tmp_path / "objects" / "named" / "cache")
    store.put_named("cache/entry", b"a result")
    assert strikes, "the race was never exercised"
    assert store.get_named("cache/entry") == b"a result"
