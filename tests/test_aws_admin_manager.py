"""The scheduled manager on AWS (``manage_once``) against moto: terminating instances that never
registered or stopped beating, forgetting rows of instances EC2 no longer lists, and deleting
old queues that no job uses. Split from the admin tests as the part that runs on a schedule.
"""

from __future__ import annotations

import time
from typing import Any

from meadowrun_core.aws import names
from meadowrun_core.aws.manager import manage_once, queue_job_prefix
from tests.aws_admin_support import (
    ONE,
    SMALL,
    aws_client,
    instance_state,
    launch_instance,
    make_queue,
    make_table,
    queue_names,
)

# the fixtures aws and checkip: pytest finds them in this module
from tests.aws_admin_support import checkip_server as checkip_server
from tests.aws_admin_support import moto_account as moto_account


def _set(table_client: Any, meadowrun_id: str, field: str, value: float) -> None:
    table_client.update_item(
        TableName=names.TABLE_NAME,
        Key={"pk": {"S": f"instance#{meadowrun_id}"}},
        UpdateExpression="SET #f = :v",
        ExpressionAttributeNames={"#f": field},
        ExpressionAttributeValues={":v": {"N": repr(value)}},
    )


def test_queue_job_prefix() -> None:
    assert queue_job_prefix("meadowrun-mr-0123abcd-requests") == "map-0123abcd-"
    assert queue_job_prefix("meadowrun-mr-0123abcd-results") == "map-0123abcd-"
    assert queue_job_prefix("meadowrun-something") == "something"


def test_manage_once_terminates_lost_instances_and_forgets_gone_ones(aws: str) -> None:
    table = make_table(aws)
    db = aws_client(aws, "dynamodb")
    never = launch_instance(aws, "mr-never")  # launched, never registered
    stale = launch_instance(aws, "mr-stale")
    healthy = launch_instance(aws, "mr-healthy")
    gone = launch_instance(aws, "mr-gone")
    untagged = launch_instance(aws, None, tagged=False)
    for meadowrun_id, job in (("mr-stale", "job-s"), ("mr-healthy", "job-h"), ("mr-gone", "")):
        jobs = [job] if job else []
        assert table.allocate_on_new_instance(meadowrun_id, SMALL, jobs, ONE, "c", "d", 99, 99)
        table.register_instance(meadowrun_id, "10.0.0.2", 7)
    aws_client(aws, "ec2").terminate_instances(InstanceIds=[gone])
    # rows of reservations whose instance EC2 does not list: one old, one just made
    for meadowrun_id in ("mr-orphan", "mr-reserving"):
        assert table.allocate_on_new_instance(meadowrun_id, SMALL, [], ONE, "c", "d", 99, 99)
    now = time.time() + 100
    _set(db, "mr-stale", "last_heartbeat", now - 1000)
    _set(db, "mr-reserving", "created", now - 10)

    done = manage_once(now=now, launch_grace_seconds=60, heartbeat_timeout_seconds=300)
    assert len(done) == 4, done
    assert any(line.startswith(f"terminated {never} (meadowrun mr-never): never") for line in done)
    assert any(
        line.startswith(f"terminated {stale} (meadowrun mr-stale): no heart") for line in done
    )
    assert "removed table row of terminated instance mr-gone" in done
    assert "removed table row of unknown instance mr-orphan" in done
    states = {i: instance_state(aws, i) for i in (never, stale, healthy, gone, untagged)}
    assert states == {
        never: "terminated",
        stale: "terminated",
        healthy: "running",
        gone: "terminated",
        untagged: "running",
    }
    assert sorted(r.instance_id for r in table.list_instances()) == ["mr-healthy", "mr-reserving"]
    (history,) = table.job_history()
    assert history["job_id"] == "job-s"
    assert history["outcome"].startswith("terminated by the manager: no heartbeat")
    # a second pass finds nothing more to do
    assert manage_once(now=now, launch_grace_seconds=60, heartbeat_timeout_seconds=300) == []


def test_manage_once_deletes_old_queues_no_job_uses(aws: str) -> None:
    table = make_table(aws)
    old_free = make_queue(aws, names.QUEUE_PREFIX + "mr-0ld-requests")
    old_busy = make_queue(aws, names.QUEUE_PREFIX + "mr-busy-results")
    make_queue(aws, "someone-elses-old-queue")
    healthy = launch_instance(aws, "mr-1")
    assert table.allocate_on_new_instance("mr-1", SMALL, ["map-busy-w1"], ONE, "c", "d", 9, 9)
    table.register_instance("mr-1", "10.0.0.3", 7)
    time.sleep(1.1)  # CreatedTimestamp has whole seconds
    young = make_queue(aws, names.QUEUE_PREFIX + "mr-y0ung-requests")
    sqs = aws_client(aws, "sqs")

    def created(url: str) -> float:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
        return float(attrs["Attributes"]["CreatedTimestamp"])

    assert created(old_free) < created(young) and created(old_busy) < created(young)
    now = time.time() + 50
    done = manage_once(now=now, queue_max_age_seconds=now - created(young) + 0.5)
    assert len(done) == 1 and done[0].startswith(f"deleted queue {names.QUEUE_PREFIX}mr-0ld-req")
    assert queue_names(aws) == {
        names.QUEUE_PREFIX + "mr-busy-results",
        names.QUEUE_PREFIX + "mr-y0ung-requests",
        "someone-elses-old-queue",
    }
    assert instance_state(aws, healthy) == "running"
