"""The ``instance-types`` command end to end (a subprocess against moto and the price
fixture): the candidates table, on-demand-only and flag filters, and the error for a request
nothing fits. Split from the instance-selection tests as the CLI's part."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.instance_selection_support import FIXTURE, REGION

# the fixtures moto_endpoint, ec2: pytest finds them in this module
from tests.instance_selection_support import moto_ec2 as moto_ec2
from tests.instance_selection_support import moto_server_endpoint as moto_server_endpoint

REPO = Path(__file__).resolve().parent.parent


def _cli(moto_endpoint: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MEADOWRUN_HOME": str(home),
        "MEADOWRUN_AWS_PRICE_FIXTURE": str(FIXTURE),
        "MEADOWRUN_AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    return subprocess.run(
        [sys.executable, "-m", "meadowrun_core.cli", "instance-types", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_the_candidates(moto_endpoint: str, ec2: Any, tmp_path: Path) -> None:
    done = _cli(moto_endpoint, tmp_path / "home", "--cpu", "4", "--memory", "16")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "TYPE",
        "VCPU",
        "GB",
        "GPUS",
        "ON-DEMAND",
        "SPOT",
        "INTERRUPT",
        "MARKET",
        "WORKERS",
        "$/H/WORKER",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert lines[1].split() == [
        "t3.xlarge",
        "4",
        "16",
        "0",
        "0.1664",
        "0.0499",
        "10-15%",
        "spot",
        "1",
        "0.0499",
    ]
    assert rows["m5.xlarge"][6:8] == [">20%", "on-demand"]
    assert rows["r5.xlarge"][7] == "spot"
    assert not any(name.startswith("m6g") for name in rows)  # arm64 only when asked for
    assert "t3.large" not in rows  # too small

    done = _cli(
        moto_endpoint,
        tmp_path / "home",
        "--cpu",
        "2",
        "--memory",
        "8",
        "--workers",
        "4",
        "--max-eviction-rate",
        "0",
        "--flags",
        "avx512",
    )
    assert done.returncode == 0, done.stderr
    rows_od = [line.split() for line in done.stdout.splitlines()[1:]]
    assert rows_od[0][0] == "t3.2xlarge" and rows_od[0][8] == "4"
    assert {r[7] for r in rows_od} == {"on-demand"}
    assert not any(r[0].startswith("c6a") for r in rows_od)

    done = _cli(moto_endpoint, tmp_path / "home", "--cpu", "500", "--memory", "8")
    assert done.returncode == 1
    assert "the largest is p3dn.24xlarge" in done.stderr
