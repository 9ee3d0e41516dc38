"""AllocEC2Instance end to end on the EC2 twin (tests/ec2_twin.py, tests/aws_twin.py).

moto's server over HTTP is the control plane; every instance it launches is a twin host of
its own: a network namespace with its own address, a real sshd, the firewall its security
group says, the metadata service, and nothing of ours until its boot script installs the
agent from S3. A job goes: allocation in DynamoDB, EC2 launch, cloud-init bootstrap, SSH
(host key pinned) to start the agent, SSH port forwarding to reach it, code and arguments
through S3, map tasks through SQS, results back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import asyncssh
import pytest
from botocore.awsrequest import AWSResponse

import meadowrun_core as mr
from meadowrun_core.aws import names
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON, BOOT_LOG
from meadowrun_core.client.runtime import ClientRuntime
from tests import twin_workloads as work
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud


def test_run_function_on_a_stock_image(aws: AwsTwinCloud) -> None:
    hostname, instance_id, python, answer = mr.run_function(
        work.where, host=aws.host(), resources=mr.Resources(1, 1), deployment=DEPLOYMENT
    )
    assert answer == 42
    (instance,) = aws.instances("pending", "running")
    host = aws.twin_host(instance["InstanceId"])
    assert hostname == f"ip-{host.ip.replace('.', '-')}"  # it ran on that instance's host
    assert python == AGENT_PYTHON  # in the venv its boot script built from the S3 bundle
    boot_log = host.path(BOOT_LOG).read_text()
    assert "meadowrun agent ready" in boot_log
    assert "runcmd exited with 0" in host.cloud_init_log()
    # nothing of ours was there before: the image's python3 cannot import it
    bare = host.run_inside("/usr/bin/python3", "-c", "import meadowrun_core")
    assert bare.returncode != 0 and "No module named 'meadowrun_core'" in bare.stderr
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[names.TAG_KEY] == names.TAG_VALUE
    assert tags[names.INSTANCE_ID_TAG] == instance_id
    # a fresh account works: the group and the agent's instance role were created
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"/{names.INSTANCE_PROFILE}")
    assert [g["GroupName"] for g in instance["SecurityGroups"]] == [names.SECURITY_GROUP]
    assert instance_id in aws.table_instances()  # registered with its role's credentials
    bucket = names.bucket_name("123456789012", "us-east-1")
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("bootstrap/agent-") for k in keys)
    # a second call that fits reuses the instance: no new launch
    assert (
        mr.run_function(
            work.square, args=(7,), host=aws.host(), resources=mr.Resources(1, 1),
            deployment=DEPLOYMENT,
        )
        == 49
    )  # fmt: skip
    assert len(aws.instances()) == 1


def test_ssh_only_from_the_clients_address(aws: AwsTwinCloud) -> None:
    ec2 = aws.client("ec2")
    assert mr.run_function(work.square, args=(2,), host=aws.host(), deployment=DEPLOYMENT) == 4
    (instance,) = aws.instances("running")
    (group,) = ec2.describe_security_groups(GroupIds=[instance["SecurityGroups"][0]["GroupId"]])[
        "SecurityGroups"
    ]
    ssh_sources = [
        r["CidrIp"] for p in group["IpPermissions"] if p.get("FromPort") == 22
        for r in p["IpRanges"]
    ]  # fmt: skip
    assert ssh_sources == [f"{aws.twin.network.gateway}/32"]  # the client's own address
    host = aws.twin_host(instance["InstanceId"])
    stranger = aws.twin.network.bare_host("stranger", aws.scratch / "stranger")
    try:
        probe = "import socket,sys; socket.create_connection((sys.argv[1], 22), timeout=2)"
        refused = stranger.run_inside("/usr/bin/python3", "-c", probe, host.ip)
        assert refused.returncode != 0 and "timed out" in refused.stderr
        # the same stranger gets in once the group admits its address (the rule is the gate)
        ec2.authorize_security_group_ingress(
            GroupId=group["GroupId"],
            IpPermissions=[
                {
                    "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                    "IpRanges": [{"CidrIp": f"{stranger.ip}/32"}],
                }
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            admitted = stranger.run_inside("/usr/bin/python3", "-c", probe, host.ip)
            if admitted.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert admitted.returncode == 0, admitted.stderr
    finally:
        aws.twin.network.release(stranger)


def test_an_open_ssh_rule_from_an_earlier_version_is_removed(aws: AwsTwinCloud) -> None:
    from meadowrun_core.aws.security_group import ensure_security_group

    group_id, _ = ensure_security_group("us-east-1", "0.0.0.0/0")  # as versions <= 0.1 did
    ensure_security_group("us-east-1", "198.51.100.7/32")
    (group,) = aws.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    ssh = [r["CidrIp"] for p in group["IpPermissions"] if p.get("FromPort") == 22
           for r in p["IpRanges"]]  # fmt: skip
    assert ssh == ["198.51.100.7/32"]
    with pytest.raises(mr.exceptions.BadInputError, match="not a CIDR"):
        mr.AllocEC2Instance(ssh_cidr="somewhere")


def test_run_map_goes_through_sqs(aws: AwsTwinCloud) -> None:
    results = mr.run_map(
        work.square,
        range(30),
        host=aws.host(),
        resources_per_task=mr.Resources(1, 1),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x * x for x in range(30)]
    queues = aws.client("sqs").list_queues(QueueNamePrefix=names.QUEUE_PREFIX)
    assert not queues.get("QueueUrls")  # the job's queues are gone afterwards


def test_instances_of_a_wide_map_boot_at_once(aws: AwsTwinCloud) -> None:
    # each task needs an instance of its own (30 CPU): two are planned and launched together
    results = mr.run_map(
        work.square,
        range(4),
        host=aws.host(),
        resources_per_task=mr.Resources(30, 60, max_eviction_rate=0),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    assert results == [0, 1, 4, 9]
    hosts = [aws.twin_host(i["InstanceId"]) for i in aws.instances()]
    assert len(hosts) == 2
    # the second instance booted before the first one's agent registered: not one by one
    assert max(h.booted_at for h in hosts) < min(aws.registered_at(h) for h in hosts)


def test_killed_worker_task_is_redelivered(aws: AwsTwinCloud) -> None:
    results = mr.run_map(
        work.die_once,
        range(6),
        host=aws.host(),
        num_concurrent_tasks=1,  # one instance: the marker is on its disk
        max_num_task_attempts=2,
        deployment=DEPLOYMENT,
    )
    assert results == [x + 100 for x in range(6)]
    (instance,) = aws.instances()
    assert aws.twin_host(instance["InstanceId"]).path("/tmp/died-3").exists()


def test_a_task_out_of_memory_runs_again_with_twice_the_memory(aws: AwsTwinCloud) -> None:
    results = sorted(
        mr.run_map_as_completed(
            work.hungry_square,
            range(4),
            host=aws.host(),
            resources_per_task=mr.Resources(1, 0.25),
            num_concurrent_tasks=2,
            max_num_task_attempts=2,
            retry_with_more_memory=True,
            deployment=DEPLOYMENT,
        ),
        key=lambda r: r.task_id,
    )
    assert [r.result for r in results] == [0, 1, 4, 9]
    assert [(a.memory_gb, a.outcome) for a in results[2].attempts] == [
        (0.25, "out_of_memory"),
        (0.5, "succeeded"),
    ]
    assert all(len(r.attempts) == 1 for r in results if r.task_id != 2)


def test_run_command_on_the_twin(aws: AwsTwinCloud) -> None:
    result = mr.run_command(
        ["/bin/sh", "-c", "hostname > /tmp/command-ran; test -x " + AGENT_PYTHON],
        host=aws.host(),
        deployment=DEPLOYMENT,
    )
    assert result.return_code == 0
    (instance,) = aws.instances()
    host = aws.twin_host(instance["InstanceId"])
    assert host.path("/tmp/command-ran").read_text().strip() == f"ip-{host.ip.replace('.', '-')}"


def test_idle_instance_terminates_itself(aws: AwsTwinCloud) -> None:
    host = aws.host(idle_timeout=1.0)
    assert mr.run_function(work.square, args=(3,), host=host, deployment=DEPLOYMENT) == 9
    (instance,) = aws.instances()
    twin_host = aws.twin_host(instance["InstanceId"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not aws.instances("pending", "running") and not aws.table_instances():
            break
        time.sleep(0.2)
    assert not aws.instances("pending", "running"), "the idle instance is still running"
    assert not aws.table_instances()
    deadline = time.monotonic() + 10
    while twin_host.powered and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not twin_host.pids(), "the terminated instance's host still runs processes"
    # its root volume went with it (as EC2 deletes it), its logs stay readable
    assert not twin_host.path("/opt/meadowrun").exists()
    assert "runcmd exited with 0" in twin_host.cloud_init_log()


def test_spot_interruption_notice_loses_no_task(aws: AwsTwinCloud) -> None:
    def interrupt_first_instance() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = aws.instances("running")
            if running and aws.registered_instances():  # its agent is up and has tasks
                aws.twin.interrupt(running[0]["InstanceId"], 8.0)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=interrupt_first_instance)
    thread.start()
    # 80 x 0.3 s on 2 slots: 12 s of work, so the map is still running when the agent sees
    # the notice even on a loaded machine (with 6 s of work it sometimes finished first)
    results = mr.run_map(
        work.slow_square,
        range(80),
        host=aws.host(),
        resources_per_task=mr.Resources(1, 1, max_eviction_rate=100),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    thread.join()
    assert results == [x * x for x in range(80)]
    assert len(aws.instances()) >= 2  # the interrupted instance was replaced


def test_capacity_error_falls_back_to_next_type(aws: AwsTwinCloud) -> None:
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
    assert mr.run_function(work.square, args=(5,), host=aws.host(), deployment=DEPLOYMENT) == 25
    (instance,) = aws.instances()
    assert refused and instance["InstanceType"] != refused[0]


def test_a_host_with_another_host_key_is_refused(aws: AwsTwinCloud) -> None:
    host = aws.host()
    assert mr.run_function(work.square, args=(2,), host=host, deployment=DEPLOYMENT) == 4
    (instance,) = aws.instances()
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    aws.client("ec2").create_tags(
        Resources=[instance["InstanceId"]], Tags=[{"Key": names.HOST_KEY_TAG, "Value": impostor}]
    )
    ClientRuntime.get().forget_backends()  # a new client: it learns the key from the tag
    with pytest.raises(mr.WorkerDiedError, match=r"host key .* is not the one generated"):
        mr.run_function(work.square, args=(3,), host=host, deployment=DEPLOYMENT)
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

    assert not DynamoDbAllocationTable(aws.client("dynamodb")).list_allocations()
