"""How a worker names itself in a job's PID file (``worker._write_pid_file``): a hard link to
a file it wrote once per folder, so the reconciler finds a live worker for every job and
never trusts a file a reused PID left behind."""

from __future__ import annotations

import os
from pathlib import Path

from meadowrun_core import worker


def test_each_batch_of_a_slot_and_each_attempt_names_this_process(tmp_path: Path) -> None:
    worker._pid_sources.clear()
    pid_file = tmp_path / "map-slot.pid"
    worker._write_pid_file(pid_file)  # the slot's first batch
    source = tmp_path / f".worker-{os.getpid()}"
    assert pid_file.read_text() == str(os.getpid())
    assert os.path.samefile(pid_file, source)
    worker._write_pid_file(pid_file)  # a later batch: already named, left as it is
    assert os.path.samefile(pid_file, source)
    # a file another process left at that path (an earlier attempt) is replaced
    pid_file.unlink()
    pid_file.write_text("1")
    worker._write_pid_file(pid_file)
    assert os.path.samefile(pid_file, source) and pid_file.read_text() == str(os.getpid())
    worker._remove_pid_sources()
    worker._pid_sources.clear()
