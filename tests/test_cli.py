"""The ``meadowrun`` command against a real local cloud: tables and ``--json`` for instances,
jobs and costs, a job's output (``logs``, ``--follow``), ``--version`` and its help text."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import typer
import workloads
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.cli import app

TESTS_DIR = Path(__file__).parent


def _run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def _json(*args: str) -> Any:
    return json.loads(_run(*args, "--json").stdout)


def _wait_running(job_key: str) -> str:
    deadline = time.monotonic() + 30
    while mr.job_status(job_key) != "running":
        assert time.monotonic() < deadline, mr.job_info(job_key)
        time.sleep(0.02)
    job_id = mr.job_info(job_key)["job_id"]
    assert isinstance(job_id, str)
    return job_id


def test_version() -> None:
    result = _run("--version")
    assert result.stdout.strip() == f"meadowrun-core {metadata.version('meadowrun-core')}"
    proc = subprocess.run(
        [sys.executable, "-m", "meadowrun_core.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == result.stdout, proc.stderr


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    found = [
        ([*prefix, c.name or c.callback.__name__.replace("_", "-")], c.callback)
        for c in group.registered_commands
        if c.callback is not None
    ]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name
        found += _commands(sub.typer_instance, (*prefix, sub.name))
    return found


def test_help_paragraphs_are_not_broken_mid_sentence() -> None:
    """On a terminal wide enough, each paragraph of a command's docstring is one line."""
    commands = _commands(app)
    assert len(commands) >= 12
    for names, callback in commands:
        result = CliRunner().invoke(app, [*names, "--help"], env={"COLUMNS": "2000"})
        assert result.exit_code == 0, result.output
        lines = [" ".join(line.strip(" │").split()) for line in result.stdout.splitlines()]
        doc = inspect.getdoc(callback)
        assert doc, names
        for paragraph in re.split(r"\n\s*\n", doc):
            text = " ".join(paragraph.split())
            assert any(text in line for line in lines), (names, text, result.stdout)


def test_instances_jobs_logs_and_costs(local_cloud: Path) -> None:
    assert _json("instances") == []
    assert _run("instances").stdout.strip() == "no instances"
    assert _json("jobs") == []

    handle = mr.run_function(
        workloads.print_and_sleep, args=(4, 0.6), wait_for_result=False, job_key="k-cli"
    )
    job_id = _wait_running("k-cli")
    time.sleep(0.8)  # the first line is written

    (instance,) = _json("instances")
    assert instance["state"] == "alive" and instance["running_jobs"] == 1
    assert set(instance) >= {"instance_id", "instance_type", "cpu_free", "memory_gb_free"}
    table = _run("instances").stdout
    assert instance["instance_id"] in table and "alive" in table and "STATE" in table

    (running,) = _json("jobs")
    assert running["job_id"] == job_id and running["status"] == "running"
    assert running["instance_id"] == instance["instance_id"] and running["ended"] is None
    assert job_id in _run("jobs").stdout

    # while it runs: what it wrote so far, at once
    started = time.monotonic()
    snapshot = _run("logs", job_id)
    assert time.monotonic() - started < 2.0
    assert snapshot.stdout.startswith("line 0\n") and "line 3" not in snapshot.stdout
    assert f"[{job_id} is running]" in snapshot.stderr
    # --follow streams until the job ends, by key as by id
    followed = _run("logs", "k-cli", "--follow")
    assert followed.stdout.splitlines() == ["line 0", "line 1", "line 2", "line 3"]
    assert "[k-cli succeeded]" in followed.stderr
    assert handle.result(timeout=30) == "finished"

    # a finished keyed job: its kept output, by id and by key
    for name in (job_id, "k-cli"):
        ended = _run("logs", name)
        assert ended.stdout.splitlines() == ["line 0", "line 1", "line 2", "line 3"]
        assert "succeeded" in ended.stderr

    # a finished job without a key kept no output: said so
    assert mr.run_function(workloads.double, args=(2,)) == 4
    (last, *_) = _json("jobs", "--history", "5")
    assert last["status"] == "succeeded" and last["ended"] >= last["started"]
    result = CliRunner().invoke(app, ["logs", last["job_id"]])
    assert result.exit_code == 1 and "only jobs started with a job_key" in result.stderr
    result = CliRunner().invoke(app, ["logs", "no-such-job"])
    assert result.exit_code == 1 and "no job 'no-such-job'" in result.stderr
    history = _run("jobs", "--history", "5").stdout
    assert "finished" in history and job_id in history and "succeeded" in history

    costs = _json("costs")
    assert costs["cloud"] == "local" and costs["jobs"] == 2
    assert costs["job_seconds"] > 2.0 and costs["cost"] > 0
    assert set(costs) == {
        "cloud",
        "region",
        "jobs",
        "job_seconds",
        "instance_seconds",
        "cost",
        "on_demand_cost",
        "savings",
        "unpriced_types",
    }
    assert "job-seconds" in _run("costs").stdout


def test_logs_of_an_instance_is_its_agent_log(local_cloud: Path) -> None:
    assert mr.run_function(workloads.double, args=(1,)) == 2
    (instance,) = _json("instances")
    result = _run("logs", instance["instance_id"], "--lines", "5")
    assert 0 < len(result.stdout.splitlines()) <= 5


def test_follow_a_job_without_a_key_by_its_id(local_cloud: Path) -> None:
    handle = mr.run_function(workloads.print_and_sleep, args=(3, 0.4), wait_for_result=False)
    assert handle.wait_started(timeout=30)
    job_id = handle.job_id
    assert job_id is not None
    followed = _run("logs", job_id, "-f")
    assert followed.stdout.splitlines() == ["line 0", "line 1", "line 2"]
    assert f"[{job_id} succeeded]" in followed.stderr
    assert handle.result(timeout=30) == "finished"
