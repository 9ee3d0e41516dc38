"""Real Airflow 3 for the tests, in a process of its own: DAGs in tests/airflow_dags/ run with
``dag.test()`` against a sqlite metadata DB under a temporary AIRFLOW_HOME, served by
tests/airflow_dags/_run_dag.py --serve to every test of a module (``airflow``), so Airflow never
touches the pytest process or the developer's setup. Each request carries the test's
MEADOWRUN_* settings."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from meadowrun_core.local.allocation_table import SqliteAllocationTable

if importlib.util.find_spec("airflow") is None:  # fail, never skip, when it is missing
    raise RuntimeError("apache-airflow is not installed: scripts/setup installs every extra")


TESTS = Path(__file__).parent
DAGS = TESTS / "airflow_dags"
RUNNER = DAGS / "_run_dag.py"
EXAMPLE = TESTS.parent / "examples" / "airflow_dag.py"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def _airflow_environment(home: Path, dags: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MEADOWRUN_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__COLORED_CONSOLE_LOG="False",
        AIRFLOW_CONN_MEADOWRUN_TEST=json.dumps(
            {"conn_type": "meadowrun", "host": "local", "extra": {"max_cpu": 4}}
        ),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class DagRunner:
    """A warm Airflow process that runs DAGs on request (see _run_dag.py --serve)."""

    def __init__(self, env: dict[str, str], dags: Path) -> None:
        self.dags = dags
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), "--serve"],
            env=env,
            text=True,
            bufsize=1,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._ids = iter(range(1_000_000))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(
        self,
        dag_file: str,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: str | None = None,
        providers: bool = False,
        on_line: Callable[[str], None] | None = None,
        timeout: float = 180,
        env: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Run one DAG against the calling test's local cloud; its summary and its log.
        ``env``: more environment variables for this run (or MEADOWRUN_* ones to replace)."""
        request_id = next(self._ids)
        request = {
            "id": request_id,
            "dag_file": str(self.dags / dag_file),
            "dag_id": dag_id,
            "conf": conf,
            "logical_date": logical_date,
            "providers": providers,
            "env": {
                **{k: v for k, v in os.environ.items() if k.startswith("MEADOWRUN_")},
                **(env or {}),
            },
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        log: list[str] = []
        end = f"=== END {request_id} RESULT_JSON "
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{dag_id} did not finish in {timeout} s:\n" + "".join(log[-80:])
                ) from None
            if line is None:
                raise AssertionError("the Airflow runner died:\n" + "".join(log[-80:]))
            if line.startswith(end):
                # a log line another thread wrote may follow on the same line: ignore it
                summary, _ = json.JSONDecoder().raw_decode(line[len(end) :])
                assert "error" not in summary, summary["error"] + "".join(log[-80:])
                return summary, "".join(log)
            log.append(line)
            if on_line is not None:
                on_line(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A temporary AIRFLOW_HOME with a migrated sqlite DB and these tests' DAGs."""
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    shutil.copytree(DAGS, dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(EXAMPLE, dags / "meadowrun_example.py")
    env = _airflow_environment(home, dags)
    subprocess.run(
        [sys.executable, "-c", "from airflow.utils.db import initdb; initdb()"],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    return env


@pytest.fixture(scope="module")
def airflow(airflow_env: dict[str, str]) -> Iterator[DagRunner]:
    runner = DagRunner(airflow_env, Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]))
    yield runner
    runner.close()


def allocations(home: Path) -> list[str]:
    return [a.job_id for a in SqliteAllocationTable(home / "state.db").list_allocations()]


def log_time(log: str, text: str) -> float:
    """When the first log line containing ``text`` was written."""
    for line in log.splitlines():
        if text in line and (match := LOG_TIME.match(line)):
            return datetime.fromisoformat(match.group(1)).timestamp()
    raise AssertionError(f"{text!r} is not in the log")


def link_file(link: str) -> Path:
    """The file a ``file://`` extra link points at."""
    parsed = urllib.parse.urlparse(link)
    assert parsed.scheme == "file", link
    return Path(urllib.request.url2pathname(parsed.path))
