"""``meadowrun instances|jobs|costs --cloud aws`` (tables and ``--json``) and finding a
keyed job by its id, against moto's server over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from meadowrun_core.aws import names
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.cli import app
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from tests.moto_server import point_at_fresh_moto_account

REGION = "us-east-1"
FIXTURE = Path(__file__).parent / "fixtures" / "aws"
ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("m5.large", 2, 8, 0.0359)


@pytest.fixture
def table(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> DynamoDbAllocationTable:
    """A fresh moto account with meadowrun's table; every meadowrun client points at it."""
    point_at_fresh_moto_account(moto_endpoint, monkeypatch, tmp_path / "home", REGION)
    monkeypatch.setenv("MEADOWRUN_AWS_PRICE_FIXTURE", str(FIXTURE))
    client = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    created = DynamoDbAllocationTable(client, names.TABLE_NAME)
    created.create()
    return created


def _json(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--cloud", "aws", "--json"])
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


def test_jobs_instances_and_costs_on_aws(table: DynamoDbAllocationTable) -> None:
    assert _json("jobs") == [] and _json("instances") == []
    assert table.allocate_on_new_instance("mr-a", SMALL, ["j-1", "j-2"], ONE, "c", "train", 9, 9)
    table.register_instance("mr-a", "10.0.0.4", 7)
    assert table.deallocate("j-1", "succeeded")

    (running,) = _json("jobs")
    assert running["job_id"] == "j-2" and running["status"] == "running"
    assert running["instance_id"] == "mr-a" and running["description"] == "train"
    (running_again, finished) = _json("jobs", "--history", "3")
    assert running_again == running
    assert finished["job_id"] == "j-1" and finished["status"] == "succeeded"
    assert finished["duration_seconds"] >= 0 and finished["cpu"] == 1

    result = CliRunner().invoke(app, ["jobs", "--cloud", "aws", "--history", "3"])
    assert result.exit_code == 0, result.output
    assert "j-2" in result.stdout and "j-1" in result.stdout and "succeeded" in result.stdout

    (instance,) = _json("instances")
    assert instance["instance_id"] == "mr-a" and instance["state"] == "alive"
    assert instance["cpu_total"] == 2 and instance["cpu_free"] == 1
    assert instance["running_jobs"] == 1 and instance["address"] == "10.0.0.4"

    costs = _json("costs")
    assert costs["cloud"] == "aws" and costs["region"] == REGION and costs["jobs"] == 1
    assert costs["cost"] > 0 and costs["on_demand_cost"] is not None
    # the one finished job's own cost, at the launch price and the type's on-demand price
    assert finished["cost"] == pytest.approx(costs["cost"], rel=1e-6)
    assert finished["on_demand_cost"] == pytest.approx(costs["on_demand_cost"], rel=1e-6)
    assert running["cost"] is None

    result = CliRunner().invoke(app, ["logs", "j-1", "--cloud", "aws"])
    assert result.exit_code == 1 and "only jobs started with a job_key" in result.stderr


def test_a_keyed_job_is_found_by_its_id(table: DynamoDbAllocationTable) -> None:
    assert table.claim_job_key("nightly", "j-7", "c") is None
    assert table.claim_job_key("other", "j-8", "c") is None
    found = table.find_job_key("j-7")
    assert found is not None and found["job_key"] == "nightly" and found["job_id"] == "j-7"
    assert table.find_job_key("j-9") is None


def test_logs_of_a_finished_keyed_job_come_from_s3(table: DynamoDbAllocationTable) -> None:
    """The agent keeps an ended keyed job's output in the object store (S3 on AWS) and its
    key in the job's record; ``meadowrun logs`` finds the job by key or id and prints it."""
    import pickle

    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.hosts import AllocEC2Instance

    runtime = ClientRuntime.get()
    backend = runtime.backend(AllocEC2Instance(REGION))
    try:
        output = [("stdout", b"first line\n"), ("stderr", b"a warning\n"), ("stdout", b"done\n")]
        output_key = backend.store.put(backend.signer.sign(pickle.dumps(output)))
        assert table.claim_job_key("nightly", "j-7", "c") is None
        table.set_job_key_instance("nightly", "j-7", "mr-gone")
        final = {"status": "succeeded", "job_id": "j-7", "output_key": output_key}
        table.record_job_final("nightly", json.dumps(final), None)
        for name in ("nightly", "j-7"):
            result = CliRunner().invoke(app, ["logs", name, "--cloud", "aws"])
            assert result.exit_code == 0, result.output
            assert result.stdout == "first line\ndone\n"
            assert result.stderr == f"a warning\n[{name} succeeded]\n"
    finally:
        runtime.forget_backends()
