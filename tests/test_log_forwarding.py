"""A job's log records reach the client as records, at their own level under their own
logger's name (``meadowrun_core.job.<logger>``), not as stderr text re-logged at WARNING;
plain output stays output, and is shown even where the client never configured logging."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import meadowrun_core as mr


def _logs_and_prints() -> int:
    log = logging.getLogger("my_pipeline.step")
    log.info("loaded %d rows", 3)
    log.warning("column %s is empty", "b")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("lookup failed")
    print("plain output")
    return 1


def test_records_keep_their_level_and_logger(
    local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert mr.run_function(_logs_and_prints) == 1
    remote = [r for r in caplog.records if r.name == "meadowrun_core.job.my_pipeline.step"]
    assert [(r.levelno, r.getMessage().split("] ", 1)[1].splitlines()[0]) for r in remote] == [
        (logging.INFO, "loaded 3 rows"),
        (logging.WARNING, "column b is empty"),
        (logging.ERROR, "lookup failed"),
    ]
    assert "KeyError: 'k'" in remote[2].getMessage()  # the traceback travels with it
    assert all(getattr(r, "remote_logger", None) == "my_pipeline.step" for r in remote)
    # no second copy as stderr text, and print() stays plain output at INFO
    job_lines = [r for r in caplog.records if r.name == "meadowrun_core.job"]
    assert not any("empty" in r.getMessage() for r in job_lines)
    printed = [r for r in job_lines if r.getMessage().endswith("plain output")]
    assert [r.levelno for r in printed] == [logging.INFO]


_SCRIPT = """
import meadowrun_core as mr
mr.run_function(print, args=("hello from the instance",))
"""


def test_remote_print_is_shown_without_logging_configured(local_cloud: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "hello from the instance" in out.stdout
