"""Result caching (``cache=True``) on the real local cloud: what is reused, what runs again,
what is never stored, tampering, re-runs that pick up where a map stopped, and
``meadowrun cache``. Executions are counted by files the functions write as they run.

The functions come from ``tests/cache_workloads.py``, copied into a private code folder that
is the whole deployment: the cache key covers the deployed code, so edits elsewhere in the
checkout cannot change it, and a test can change the code itself."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.cli import app
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.local import admin
from meadowrun_core.local.collect import CLEAN_OBJECT_GRACE_SECONDS, OBJECT_MAX_AGE_SECONDS
from tests.waiting import wait_until

SOURCE = Path(__file__).parent / "cache_workloads.py"


class Workspace:
    """A private code folder holding a copy of ``cache_workloads`` (imported under a name of
    its own), the deployment that mirrors only that folder, and a folder of executions."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.code = root / "code"
        self.code.mkdir()
        self.module_name = f"cache_work_{uuid.uuid4().hex[:8]}"
        self.path = self.code / f"{self.module_name}.py"
        self.path.write_text(SOURCE.read_text())
        monkeypatch.syspath_prepend(str(self.code))
        self.work: ModuleType = importlib.import_module(self.module_name)
        self.records = root / "records"
        self.records.mkdir()
        self.deployment = mr.Deployment.mirror_local(
            include_sys_path=False, additional_sys_paths=[str(self.code)]
        )

    def ran(self) -> list[int]:
        return list(self.work.executions(self.records))

    def double(self) -> Any:
        """``double_and_record`` with this workspace's record folder, for maps."""
        return functools.partial(self.work.double_and_record, record_dir=str(self.records))


@pytest.fixture
def ws(local_cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    return Workspace(tmp_path, monkeypatch)


def _jobs_run() -> int:
    """How many jobs this local cloud has run (map slots included)."""
    return len(ClientRuntime.get().backend(None).table.job_history(100_000))


def _cache_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "objects" / "named").rglob("*") if p.is_file())


def test_same_call_twice_returns_the_cached_result_without_launching(ws: Workspace) -> None:
    def call(**extra: Any) -> Any:
        return mr.run_function(
            ws.work.double_and_record,
            args=(21, str(ws.records)),
            deployment=ws.deployment,
            **extra,
        )

    assert call(cache=True) == 42
    assert ws.ran() == [21] and _jobs_run() == 1
    assert call(cache=True) == 42  # from the cache: nothing allocated, nothing ran
    assert call(cache=True, wait_for_result=False).result(timeout=30) == 42
    again = mr.run_function_async(
        ws.work.double_and_record,
        args=(21, str(ws.records)),
        deployment=ws.deployment,
        cache=True,
    )
    assert asyncio.run(again) == 42
    assert ws.ran() == [21] and _jobs_run() == 1
    assert call() == 42  # the default, cache=False, always runs
    assert ws.ran() == [21, 21]
    # (back to back with the call before: its room, and so its history row, is held a moment
    # for a next call, client/held_rooms.py)
    wait_until(lambda: _jobs_run() == 2, 5, "the second run's room to be given back")


def test_changed_argument_code_or_deployment_runs_again(ws: Workspace) -> None:
    records = str(ws.records)
    work = ws.work

    def run(function: Any, x: int, deployment: mr.Deployment = ws.deployment) -> Any:
        return mr.run_function(function, args=(x,), deployment=deployment, cache=True)

    def f(x: int) -> int:  # pickled by value: its code is part of its pickle
        return int(work.double_and_record(x, records))

    assert run(f, 1) == 2 and run(f, 1) == 2 and ws.ran() == [1]
    assert run(f, 2) == 4 and ws.ran() == [1, 2]  # another argument

    def f(x: int) -> int:  # the same name, changed code
        return int(work.double_and_record(x, records)) + 1

    assert run(f, 1) == 3 and run(f, 1) == 3 and ws.ran() == [1, 1, 2]
    # another deployment: an environment variable, then the mirrored code itself
    other = mr.Deployment.mirror_local(
        include_sys_path=False,
        additional_sys_paths=[str(ws.code)],
        environment_variables={"MODE": "b"},
    )
    assert run(f, 1, other) == 3 and run(f, 1, other) == 3 and ws.ran() == [1, 1, 1, 2]
    by_name = f"{ws.module_name}.double_and_record"
    mr.run_function(by_name, args=(5, records), deployment=ws.deployment, cache=True)
    mr.run_function(by_name, args=(5, records), deployment=ws.deployment, cache=True)
    assert ws.ran().count(5) == 1
    ws.path.write_text(ws.path.read_text() + "\n# changed\n")  # a function given by name
    mr.run_function(by_name, args=(5, records), deployment=ws.deployment, cache=True)
    assert ws.ran().count(5) == 2
    assert run(f, 1) == 3 and ws.ran().count(1) == 4  # the module f calls changed too


def test_map_runs_only_the_tasks_not_done_before(ws: Workspace) -> None:
    double = ws.double()
    assert mr.run_map(double, range(6), deployment=ws.deployment, cache=True) == [
        0,
        2,
        4,
        6,
        8,
        10,
    ]
    assert ws.ran() == list(range(6))
    results = list(mr.run_map_as_completed(double, range(10), deployment=ws.deployment, cache=True))
    assert sorted((r.task_id, r.result) for r in results) == [(i, 2 * i) for i in range(10)]
    assert sorted(r.task_id for r in results if r.cached) == list(range(6))
    assert ws.ran() == [*range(6), *range(6, 10)]  # only the four new ones ran
    jobs = _jobs_run()
    assert mr.run_map(double, range(10), deployment=ws.deployment, cache=True) == [
        2 * i for i in range(10)
    ]

    async def twin() -> list[Any]:
        return [
            r
            async for r in mr.run_map_as_completed_async(
                double, range(10), deployment=ws.deployment, cache=True
            )
        ]

    assert all(r.cached for r in asyncio.run(twin()))
    assert asyncio.run(
        mr.run_map_async(double, range(10), deployment=ws.deployment, cache=True)
    ) == [2 * i for i in range(10)]
    assert _jobs_run() == jobs and len(ws.ran()) == 10  # fully cached: nothing launched


def test_failures_are_not_cached_and_a_fixed_rerun_runs_only_them(ws: Workspace) -> None:
    marker = ws.records.parent / "broken"
    marker.write_text("")
    task = functools.partial(
        ws.work.double_unless_broken, record_dir=str(ws.records), broken_marker=str(marker)
    )
    with pytest.raises(mr.RunMapTasksFailedException) as failed:
        mr.run_map(task, range(20), deployment=ws.deployment, cache=True)
    assert sorted(t.task_id for t in failed.value.failed_tasks) == list(range(15, 20))
    assert ws.ran() == list(range(20))
    with pytest.raises(mr.RunMapTasksFailedException):  # still broken: the failures run again
        mr.run_map(task, range(20), deployment=ws.deployment, cache=True)
    assert ws.ran() == sorted([*range(20), *range(15, 20)])
    marker.unlink()  # the fix
    results = list(mr.run_map_as_completed(task, range(20), deployment=ws.deployment, cache=True))
    assert sorted((r.task_id, r.result) for r in results) == [(i, 2 * i) for i in range(20)]
    assert sorted(r.task_id for r in results if not r.cached) == list(range(15, 20))
    assert ws.ran() == sorted([*range(20), *range(15, 20), *range(15, 20)])
    # a single function's failure is not stored either
    with pytest.raises(mr.TaskException, match="broken"):
        marker.write_text("")
        mr.run_function(task, args=(16,), deployment=ws.deployment, cache=True)
    marker.unlink()
    assert mr.run_function(task, args=(16,), deployment=ws.deployment, cache=True) == 32
    assert ws.ran().count(16) == 5


def test_a_map_left_early_is_picked_up_where_it_stopped(ws: Workspace) -> None:
    """Each result is stored as it arrives, not at the end: a map abandoned after a few
    results (as a crash or Ctrl-C would) re-runs only what it had not finished."""
    double = ws.double()
    seen = []
    for r in mr.run_map_as_completed(
        double, range(40), deployment=ws.deployment, num_concurrent_tasks=2, cache=True
    ):
        seen.append(r.task_id)
        if len(seen) == 5:
            break  # leaving the loop cancels the rest
    first = ws.ran()
    assert len(first) < 40
    results = list(mr.run_map_as_completed(double, range(40), deployment=ws.deployment, cache=True))
    assert sorted((r.task_id, r.result) for r in results) == [(i, 2 * i) for i in range(40)]
    cached = {r.task_id for r in results if r.cached}
    assert set(seen) <= cached
    again = [x for x in ws.ran()]
    for x in set(first):
        again.remove(x)
    assert sorted(again) == sorted(set(range(40)) - cached)  # each uncached task ran once


def test_a_tampered_or_moved_entry_is_ignored_and_the_call_runs_again(
    ws: Workspace, local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def call(x: int) -> Any:
        return mr.run_function(
            ws.work.double_and_record,
            args=(x, str(ws.records)),
            deployment=ws.deployment,
            cache=True,
        )

    assert call(3) == 6
    (entry,) = _cache_files(local_cloud)
    data = bytearray(entry.read_bytes())
    data[-1] ^= 1  # one bit of the pickled result
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="meadowrun_core.client.result_cache"):
        assert call(3) == 6
    assert "does not verify" in caplog.text and ws.ran() == [3, 3]
    assert call(3) == 6 and ws.ran() == [3, 3]  # stored again, intact
    # a valid entry copied under another call's name is refused too
    assert call(4) == 8
    three, four = sorted(_cache_files(local_cloud), key=lambda p: p.stat().st_mtime_ns)
    four.write_bytes(three.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meadowrun_core.client.result_cache"):
        assert call(4) == 8
    assert "stored for another call" in caplog.text and ws.ran() == [3, 3, 4, 4]


def test_another_client_process_finds_the_results(ws: Workspace, local_cloud: Path) -> None:
    """The key covers the code's content, not how one client process uploaded it: this
    process uploads the code twice (two packs in its manifest), a fresh one once (one pack),
    and the fresh one still finds every result."""
    extras = [ws.code / f"extra_{i}.py" for i in range(12)]  # enough files to be packed
    for version in ("a", "b"):
        for path in extras:
            path.write_text(f"VERSION = {version!r}  # {path.name}\n")
        mr.run_map(ws.double(), range(5), deployment=ws.deployment, cache=True)
    assert ws.ran() == sorted([*range(5), *range(5)])
    script = (
        "import functools, meadowrun_core as mr\n"
        f"import {ws.module_name} as w\n"
        f"f = functools.partial(w.double_and_record, record_dir={str(ws.records)!r})\n"
        "d = mr.Deployment.mirror_local(include_sys_path=False, "
        f"additional_sys_paths=[{str(ws.code)!r}])\n"
        "r = list(mr.run_map_as_completed(f, range(5), deployment=d, cache=True))\n"
        "print(sorted((x.task_id, x.result, x.cached) for x in r))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ws.code)}
    jobs = _jobs_run()
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([(i, 2 * i, True) for i in range(5)])
    assert len(ws.ran()) == 10 and _jobs_run() == jobs


def test_cache_clear_and_info(ws: Workspace, local_cloud: Path) -> None:
    double = ws.double()
    mr.run_map(double, range(3), deployment=ws.deployment, cache=True)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--json"])
    assert info.exit_code == 0, info.output
    assert '"entries": 3' in info.stdout
    kept = runner.invoke(app, ["cache", "clear", "--older-than", "1h"])
    assert kept.exit_code == 0 and "removed 0 cached result(s)" in kept.stdout, kept.output
    assert len(_cache_files(local_cloud)) == 3
    bad = runner.invoke(app, ["cache", "clear", "--older-than", "soon"])
    assert bad.exit_code != 0 and "not a duration" in bad.output
    cleared = runner.invoke(app, ["cache", "clear", "--cloud", "local"])
    assert cleared.exit_code == 0 and "removed 3 cached result(s)" in cleared.stdout
    assert _cache_files(local_cloud) == []
    mr.run_map(double, range(3), deployment=ws.deployment, cache=True)
    assert ws.ran() == [0, 0, 1, 1, 2, 2]  # ran again after the clear


def test_collector_keeps_entries_younger_than_its_age_limit(
    ws: Workspace, local_cloud: Path
) -> None:
    mr.run_map(ws.double(), range(2), deployment=ws.deployment, cache=True)
    young, old = _cache_files(local_cloud)
    past = time.time() - CLEAN_OBJECT_GRACE_SECONDS - 60  # older than clean's object grace
    os.utime(young, (past, past))
    way_past = time.time() - OBJECT_MAX_AGE_SECONDS - 60
    os.utime(old, (way_past, way_past))
    admin.clean()  # stops instances, then collects (content objects older than an hour)
    assert _cache_files(local_cloud) == [young]


def test_bad_cache_arguments_fail_before_anything_runs(ws: Workspace) -> None:
    with pytest.raises(mr.BadInputError, match="cache must be True or False"):
        mr.run_function(ws.work.double_and_record, args=(1, "x"), cache="yes")  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match="cache must be True or False"):
        mr.run_map(ws.double(), [1], cache=1)  # type: ignore[arg-type]
    with pytest.raises(mr.BadInputError, match="cannot be combined with job_key"):
        mr.run_function(ws.work.double_and_record, args=(1, "x"), cache=True, job_key="k")
    assert _jobs_run() == 0 and ws.ran() == []
