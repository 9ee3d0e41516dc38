"""run_map shows a progress bar on a terminal and none when output is not a TTY, unless
``progress=`` says otherwise; log lines printed meanwhile do not break the bar."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
SCRIPT = (
    "import meadowrun_core as mr, workloads\n"
    "assert mr.run_map(workloads.double, range(40), num_concurrent_tasks=1) == "
    "[2 * i for i in range(40)]\n"
    "print('DONE')\n"
)


def _run_on_pty(script: str = SCRIPT) -> str:
    leader, follower = pty.openpty()
    # a terminal of 100 columns (a bare pty reports 0, which leaves no room for the bar)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=TESTS_DIR, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


def test_progress_bar_on_a_terminal(local_cloud: Path) -> None:
    output = _run_on_pty()
    assert "DONE" in output
    assert "run_map double" in output and "/40" in output


def test_no_progress_bar_without_a_terminal(local_cloud: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=TESTS_DIR, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "/40" not in proc.stderr and "/40" not in proc.stdout


def test_progress_false_hides_the_bar_on_a_terminal(local_cloud: Path) -> None:
    script = SCRIPT.replace("num_concurrent_tasks=1)", "num_concurrent_tasks=1, progress=False)")
    output = _run_on_pty(script)
    assert "DONE" in output and "/40" not in output


def test_progress_true_shows_the_bar_without_a_terminal(local_cloud: Path) -> None:
    script = SCRIPT.replace("num_concurrent_tasks=1)", "num_concurrent_tasks=1, progress=True)")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=TESTS_DIR, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "run_map double" in proc.stderr and "/40 [" in proc.stderr


LOGGING_SCRIPT = (
    "import logging, time, meadowrun_core as mr\n"
    "logging.basicConfig(level=logging.INFO, format='LOG %(message)s')\n"
    "def chatty(i):\n"
    "    print(f'task-out-{i}', flush=True)\n"
    "    time.sleep(0.05)\n"
    "    return i\n"
    "assert mr.run_map(chatty, range(30), num_concurrent_tasks=1) == list(range(30))\n"
    "print('DONE')\n"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.mark.parametrize("configured", [True, False], ids=["logging", "no-logging"])
def test_log_lines_do_not_break_the_bar(local_cloud: Path, configured: bool) -> None:
    """Each output line starts a line of its own: the bar is cleared before it is written and
    drawn again below it (without tqdm's logging redirection a record is appended to the
    bar's line, ``run_map chatty: 40%|... LOG [job-..] task-out-12``). Without logging
    configured, the job's lines are printed as they are, also around the bar."""
    script = LOGGING_SCRIPT if configured else LOGGING_SCRIPT.replace("logging.basicConfig", "#")
    prefix = "LOG [" if configured else "["
    output = _run_on_pty(script)
    assert "DONE" in output and "/30" in output
    logged = 0
    for line in output.split("\n"):
        if "task-out-" not in line:
            continue
        logged += 1
        visible = _ANSI.sub("", line).rstrip("\r").split("\r")[-1]
        assert visible.startswith(prefix), repr(line)
        assert "|" not in visible and "/30" not in visible, repr(line)
    assert logged == 30
