"""run_map shows a progress bar on a terminal and none when output is not a TTY."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

TESTS_DIR = Path(__file__).parent
SCRIPT = (
    "import meadowrun_core as mr, workloads\n"
    "assert mr.run_map(workloads.double, range(40), num_concurrent_tasks=1) == "
    "[2 * i for i in range(40)]\n"
    "print('DONE')\n"
)


def _run_on_pty() -> str:
    leader, follower = pty.openpty()
    # a terminal of 100 columns (a bare pty reports 0, which leaves no room for the bar)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=TESTS_DIR, stdout=follower, stderr=follower
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
