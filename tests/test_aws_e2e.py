"""AllocEC2Instance end to end against moto's server over HTTP.

EC2 launches go to moto; each launched instance is played by a test host (tests/ec2_hosts.py:
an asyncssh server on its own loopback address, with the host key and authorized key from the
instance's user data, and an instance metadata service). A job goes: allocation in DynamoDB,
EC2 launch, SSH (host key pinned) to start the agent, SSH port forwarding to reach it, code and
arguments through S3, map tasks through SQS, results back.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

import meadowrun_core as mr
from meadowrun_core.aws import names
from meadowrun_core.client.runtime import ClientRuntime
from tests.ec2_hosts import Ec2TestHosts
from tests.moto_server import reset_moto

REGION = "us-east-1"
FIXTURES = Path(__file__).parent / "fixtures" / "aws"


class AwsCloud:
    def __init__(self, endpoint: str, hosts: Ec2TestHosts, scratch: Path) -> None:
        self.endpoint = endpoint
        self.hosts = hosts
        self.scratch = scratch

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)

    def host(self, **overrides: Any) -> mr.AllocEC2Instance:
        return mr.AllocEC2Instance(region_name=REGION, agent_python=sys.executable, **overrides)

    def instances(self, *states: str) -> list[dict[str, Any]]:
        filters = [*names.TAG_FILTER]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        reservations = self.client("ec2").describe_instances(Filters=filters)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def table_instances(self) -> list[str]:
        from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

        table = DynamoDbAllocationTable(self.client("dynamodb"))
        return [r.instance_id for r in table.list_instances()]


# The interpreter test hosts have "preinstalled" (this one); the code is mirrored through S3.
DEPLOYMENT = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(sys.executable))


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsCloud]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    reset_moto(endpoint)  # an empty account
    environment = {
        "MEADOWRUN_AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "MEADOWRUN_AWS_PRICE_FIXTURE": str(FIXTURES),
        "MEADOWRUN_LEASE_SECONDS": "3",
        "MEADOWRUN_VISIBILITY_TIMEOUT": "6",
        "MEADOWRUN_RECONCILE_INTERVAL": "0.5",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEADOWRUN_HOME", str(tmp_path / "client-home"))
    hosts = Ec2TestHosts(endpoint, REGION, tmp_path / "hosts", env=environment)
    hosts.start()
    monkeypatch.setenv("MEADOWRUN_EC2_ADDRESS_MAP", str(hosts.address_map_path))
    try:
        yield AwsCloud(endpoint, hosts, tmp_path)
    finally:
        ClientRuntime.get().forget_backends()
        hosts.close()
        reset_moto(endpoint)  # nothing left for a later module's moto server
        server.stop()


def _where() -> tuple[str | None, str | None, int]:
    return os.environ.get("MEADOWRUN_TEST_HOST"), os.environ.get("MEADOWRUN_INSTANCE_ID"), 42


def _square(x: int) -> int:
    return x * x


def test_run_function_goes_ec2_ssh_s3(aws: AwsCloud) -> None:
    test_host, instance_id, answer = mr.run_function(
        _where, host=aws.host(), resources=mr.Resources(1, 1), deployment=DEPLOYMENT
    )
    assert answer == 42
    (instance,) = aws.instances("pending", "running")
    assert test_host == instance["InstanceId"]  # it ran on the test host of that EC2 instance
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[names.TAG_KEY] == names.TAG_VALUE
    assert tags[names.INSTANCE_ID_TAG] == instance_id
    assert instance["InstanceType"]  # chosen from the price fixture
    # a fresh account works: the group (SSH in) and the agent's instance role were created
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"/{names.INSTANCE_PROFILE}")
    assert [g["GroupName"] for g in instance["SecurityGroups"]] == [names.SECURITY_GROUP]
    # the agent registered in DynamoDB; code and arguments went through S3
    assert instance_id in aws.table_instances()
    bucket = names.bucket_name("123456789012", REGION)
    assert aws.client("s3").list_objects_v2(Bucket=bucket)["KeyCount"] > 0
    # a second call that fits reuses the instance: no new launch
    assert (
        mr.run_function(
            _square, args=(7,), host=aws.host(), resources=mr.Resources(1, 1),
            deployment=DEPLOYMENT,
        )
        == 49
    )
    assert len(aws.instances()) == 1


def test_run_map_goes_through_sqs(aws: AwsCloud) -> None:
    results = mr.run_map(
        _square,
        range(30),
        host=aws.host(),
        resources_per_task=mr.Resources(1, 1),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x * x for x in range(30)]
    # the job's queues are gone afterwards
    queues = aws.client("sqs").list_queues(QueueNamePrefix=names.QUEUE_PREFIX)
    assert not queues.get("QueueUrls")


def _die_once(marker_dir: str, x: int) -> int:
    marker = Path(marker_dir) / f"died-{x}"
    if x == 3 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def test_killed_worker_task_is_redelivered(aws: AwsCloud) -> None:
    results = mr.run_map(
        functools.partial(_die_once, str(aws.scratch)),
        range(6),
        host=aws.host(),
        num_concurrent_tasks=2,
        max_num_task_attempts=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x + 100 for x in range(6)]
    assert (aws.scratch / "died-3").exists()


def test_idle_instance_terminates_itself(aws: AwsCloud) -> None:
    host = aws.host(idle_timeout=1.0)
    assert mr.run_function(_square, args=(3,), host=host, deployment=DEPLOYMENT) == 9
    (instance,) = aws.instances()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not aws.instances("pending", "running") and not aws.table_instances():
            break
        time.sleep(0.2)
    assert not aws.instances("pending", "running"), "the idle instance is still running"
    assert not aws.table_instances()
    assert not aws.hosts.processes(instance["InstanceId"])


def _slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


def test_spot_interruption_notice_loses_no_task(aws: AwsCloud) -> None:
    handle_results: list[int] = []

    def interrupt_first_instance() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = aws.instances("running")
            if running and aws.table_instances():
                aws.hosts.interrupt(running[0]["InstanceId"], 2.0)
                return
            time.sleep(0.1)

    import threading

    thread = threading.Thread(target=interrupt_first_instance)
    thread.start()
    handle_results = mr.run_map(
        _slow_square,
        range(20),
        host=aws.host(),
        resources_per_task=mr.Resources(1, 1, max_eviction_rate=100),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    thread.join()
    assert handle_results == [x * x for x in range(20)]
    assert len(aws.instances()) >= 2  # the interrupted instance was replaced


def test_capacity_error_falls_back_to_next_type(aws: AwsCloud) -> None:
    runtime = ClientRuntime.get()
    backend: Any = runtime.backend(aws.host())
    refused: list[str] = []

    def no_capacity_for_first(params: dict[str, Any], **_: Any) -> tuple[Any, Any] | None:
        """Answer the first RunInstances as EC2 does when it has no capacity."""
        if refused:
            return None
        refused.append(params["body"]["InstanceType"])  # the serialized EC2 query
        error = {"Code": "InsufficientInstanceCapacity", "Message": "injected"}
        return AWSResponse("", 500, {}, None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }

    ec2 = backend.provider._ec2
    ec2.meta.events.register("before-call.ec2.RunInstances", no_capacity_for_first)
    assert mr.run_function(_square, args=(5,), host=aws.host(), deployment=DEPLOYMENT) == 25
    (instance,) = aws.instances()
    assert refused and instance["InstanceType"] != refused[0]


def test_a_host_with_another_host_key_is_refused(aws: AwsCloud) -> None:
    host = aws.host()
    assert mr.run_function(_square, args=(2,), host=host, deployment=DEPLOYMENT) == 4
    (instance,) = aws.instances()
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    aws.client("ec2").create_tags(
        Resources=[instance["InstanceId"]], Tags=[{"Key": names.HOST_KEY_TAG, "Value": impostor}]
    )
    ClientRuntime.get().forget_backends()  # a new client: it learns the key from the tag
    with pytest.raises(mr.WorkerDiedError, match=r"host key .* is not the one generated"):
        mr.run_function(_square, args=(3,), host=host, deployment=DEPLOYMENT)
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

    assert not DynamoDbAllocationTable(aws.client("dynamodb")).list_allocations()
