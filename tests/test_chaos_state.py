"""Chaos suite, part 2: damaged, deleted and loose state, unknown names, and leftovers."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.config import meadowrun_home
from meadowrun_core.local import admin
from meadowrun_core.local.collect import collect, collect_if_due
from tests.waiting import local_table, wait_until

pytestmark = pytest.mark.chaos
TESTS_DIR = Path(__file__).parent
MEADOWRUN = [sys.executable, "-m", "meadowrun_core.cli"]


_table = local_table
_wait_until = wait_until


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEADOWRUN, *args], capture_output=True, text=True, timeout=120)


def _agent_pid(home: Path) -> int:
    mr.run_function(workloads.double, args=(1,))
    (instance,) = _table(home).list_instances()
    assert instance.agent_pid is not None
    return instance.agent_pid


# --- damaged and deleted state ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["state.db", "queues.db"])
def test_a_damaged_database_is_moved_aside_and_everything_still_works(
    local_cloud: Path, name: str
) -> None:
    agent_pid = _agent_pid(local_cloud)
    mr.run_map(workloads.double, range(3))
    # damaged beyond what the write-ahead log would mask
    (local_cloud / name).write_bytes(b"this is not a database " * 200)
    for suffix in ("-wal", "-shm"):
        (local_cloud / f"{name}{suffix}").unlink(missing_ok=True)
    for command in (["instances"], ["jobs"], ["clean"]):
        result = _cli(*command)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "DatabaseError" not in result.stderr
    assert list(local_cloud.glob(f"{name}.damaged-*")), "the damaged file is kept aside"
    _wait_until(lambda: not psutil.pid_exists(agent_pid), 15, "clean to stop the agent")
    assert mr.run_function(workloads.double, args=(4,)) == 8
    assert mr.run_map(workloads.double, range(3)) == [0, 2, 4]


def test_clean_finds_and_stops_agents_the_table_lost(local_cloud: Path) -> None:
    """A live agent notices its record is gone and stops by itself; one that cannot (here:
    stopped with SIGSTOP) is still found and stopped by `meadowrun clean`."""
    agent_pid = _agent_pid(local_cloud)
    os.kill(agent_pid, signal.SIGSTOP)
    for suffix in ("", "-wal", "-shm"):
        (local_cloud / f"state.db{suffix}").unlink(missing_ok=True)
    instances = _cli("instances")
    assert instances.returncode == 0, instances.stderr
    assert f"agent pid {agent_pid} runs but is not in the state table" in instances.stderr
    clean = _cli("clean")
    assert clean.returncode == 0 and "terminated 1 instance(s)" in clean.stdout, clean.stdout
    _wait_until(lambda: not psutil.pid_exists(agent_pid), 15, "the agent to stop")
    assert admin.home_agents(local_cloud) == {}


def test_an_agent_that_dies_before_registering_fails_the_job_at_once(
    local_cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()  # every new python here runs it; it ends agents (only) at once
    (hook / "sitecustomize.py").write_text(
        "import sys\nif '--instance-id' in sys.argv:\n    sys.exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))
    started = time.monotonic()
    with pytest.raises(mr.MeadowrunError, match=r"exited \(code \d+\) before it registered"):
        mr.run_function(workloads.double, args=(1,))
    assert time.monotonic() - started < 20, "waited for the launch timeout"
    assert _table(local_cloud).list_allocations() == []


def test_a_vanished_state_directory_stops_lease_renewal_with_one_warning(
    local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent_pid = _agent_pid(local_cloud)
    caplog.set_level(logging.DEBUG, logger="meadowrun_core.client.runtime")
    _remove_while_in_use(local_cloud)
    lease = float(os.environ["MEADOWRUN_LEASE_SECONDS"])
    time.sleep(lease * 2 + 1)  # six renewal periods
    records = [r for r in caplog.records if r.name == "meadowrun_core.client.runtime"]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is gone" in warnings[0].getMessage(), warnings
    assert not any(r.exc_info for r in records), "no tracebacks"
    _wait_until(lambda: not psutil.pid_exists(agent_pid), 15, "the orphaned agent to stop")
    assert mr.run_function(workloads.double, args=(5,)) == 10  # a fresh home works


# --- loose modes ---------------------------------------------------------------------------------
def test_state_is_private_and_a_loose_home_is_tightened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "loose-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "notes").write_text("x")
    os.chmod(home / "notes", 0o644)
    monkeypatch.setenv("MEADOWRUN_HOME", str(home))
    monkeypatch.setenv("MEADOWRUN_LEASE_SECONDS", "3")
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_CPU", "2")
    ClientRuntime.get().forget_backends()
    caplog.set_level(logging.WARNING, logger="meadowrun_core.config")
    try:
        assert mr.run_function(workloads.double, args=(1,)) == 2
        assert mr.run_command(["true"]).return_code == 0
        assert mr.run_map(workloads.double, range(4)) == [0, 2, 4, 6]
        assert any("made it private" in r.getMessage() for r in caplog.records)
        loose = []
        for root, dirs, files in os.walk(home):
            for name in dirs + files:
                st = os.lstat(os.path.join(root, name))
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                    loose.append(f"{os.path.join(root, name)} {st.st_mode & 0o777:o}")
        assert home.stat().st_mode & 0o077 == 0
        assert loose == []
    finally:
        ClientRuntime.get().forget_backends()
        admin.clean()


# --- unknown names -------------------------------------------------------------------------------
def test_unknown_function_names_fail_before_anything_launches(
    local_cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside_module.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(outside))
    cases = [
        ("no_such_module.func", None, "there is no module 'no_such_module'"),
        ("json.no_such_func", None, "has no attribute 'no_such_func'"),
        ("workloads.no_such_func", None, "has no attribute 'no_such_func'"),
        (
            "outside_module.f",
            mr.Deployment.mirror_local(include_sys_path=False),
            "neither in the mirrored code nor installed",
        ),
    ]
    for name, deployment, message in cases:
        with pytest.raises(mr.BadInputError, match=message):
            mr.run_function(name, deployment=deployment)
        with pytest.raises(mr.BadInputError, match=message):
            mr.run_map(name, [1, 2], deployment=deployment)
    assert _table(local_cloud).list_instances() == [], "nothing may launch for a bad name"
    assert mr.run_function("json.dumps", args=([1],)) == "[1]"
    assert mr.run_function("outside_module.f") == 1  # on sys.path, so mirrored


# --- reconciliation and collection ---------------------------------------------------------------
def test_the_reaper_frees_dead_pids_only(local_cloud: Path) -> None:
    _agent_pid(local_cloud)
    table = _table(local_cloud)
    (instance,) = table.list_instances()
    placed = table.allocate_on_existing(
        ["foreign-job"], mr.Resources(logical_cpu=1, memory_gb=1), mr.api.current_client_id(), "x"
    )
    assert placed == {"foreign-job": instance.instance_id}
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = local_cloud / "instances" / instance.instance_id / "pids" / "foreign-job.pid"
        pid_file.write_text(str(alive.pid))
        time.sleep(3)  # six reconcile intervals
        assert [a.job_id for a in table.list_allocations()] == ["foreign-job"], (
            "the reaper freed the job of a live PID"
        )
    finally:
        alive.kill()
        alive.wait()
    _wait_until(lambda: table.list_allocations() == [], 10, "the reaper to free a dead PID")


def _remove_while_in_use(path: Path) -> None:
    """``rm -rf`` of a directory that live processes still write to (the agent's heartbeat
    and log): a file they create during one pass fails it with "Directory not empty" (seen
    in CI), so pass again, as a user would."""
    deadline = time.monotonic() + 10
    while path.exists():
        assert time.monotonic() < deadline, f"could not remove {path}"
        shutil.rmtree(path, ignore_errors=True)


def _object_count(home: Path) -> int:
    return sum(1 for p in (home / "objects").glob("*/*") if not p.name.startswith("."))


def test_clean_and_age_collect_leftovers_but_keep_what_is_used(local_cloud: Path) -> None:
    assert mr.run_function(workloads.double, args=(1,)) == 2
    handle = mr.run_function(workloads.double, args=(7,), job_key="kept", wait_for_result=False)
    assert handle.result(timeout=60) == 14
    (instance,) = _table(local_cloud).list_instances()
    folder = local_cloud / "instances" / instance.instance_id
    # a live instance's folder is never collected, whatever its age
    assert collect(local_cloud, _table(local_cloud), set(), instance_max_age=0).instance_dirs == 0
    assert folder.is_dir()
    objects = _object_count(local_cloud)
    report = admin.clean()
    assert (report.instance_dirs_removed, report.objects_removed) == (1, 0)  # objects are new
    assert not folder.exists() and _object_count(local_cloud) == objects
    old = time.time() - 2 * 3600
    for blob in (local_cloud / "objects").glob("*/*"):
        os.utime(blob, (old, old))
    report = admin.clean()
    kept = _table(local_cloud).object_references()[0]
    assert kept and report.objects_removed == objects - len(kept)
    assert _object_count(local_cloud) == len(kept)
    assert mr.attach_job("kept").result(timeout=60) == 14  # a kept outcome still resolves
    assert mr.run_function(workloads.double, args=(3,)) == 6  # collected code is uploaded again
    # by age: at most once an hour per home
    (local_cloud / ".last_collect").unlink(missing_ok=True)
    assert collect_if_due(local_cloud, _table(local_cloud)) is not None
    assert collect_if_due(local_cloud, _table(local_cloud)) is None


def test_home_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEADOWRUN_HOME", str(tmp_path / "a" / "new-home"))
    assert meadowrun_home().stat().st_mode & 0o777 == 0o700


def test_a_state_file_deleted_under_an_open_table_comes_back_with_every_column(
    tmp_path: Path,
) -> None:
    """The table reopens a deleted state.db; the new file has the GPU and custom-resource
    columns too (once they were added only when a table was first opened, so the next
    placement failed with 'no such column: gpus_free')."""
    from meadowrun_core.local.allocation_table import SqliteAllocationTable
    from meadowrun_core.seams.instance_provider import InstanceType

    path = tmp_path / "state.db"
    table = SqliteAllocationTable(path)
    one = mr.Resources(logical_cpu=1, memory_gb=1)
    small = InstanceType("small", 2, 4, 0.01)
    assert table.allocate_on_new_instance("i-1", small, ["a"], one, "c1", "d", 4, 8)
    path.unlink()
    time.sleep(1.2)  # the table checks its file at most once a second
    assert table.place_on_existing(["b"], one, "c1", "d") == {}  # a fresh, empty table
    assert table.allocate_on_new_instance("i-2", small, ["c"], one, "c1", "d", 4, 8)
    table.register_instance("i-2", "127.0.0.1:1", 1)
    assert list(table.place_on_existing(["d"], one, "c1", "d")) == ["d"]
