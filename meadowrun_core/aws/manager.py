"""The scheduled manager: what the on-instance idle timer cannot clean up by itself.

An instance whose agent never started (bad AMI, failed boot) or that stopped heartbeating
(hung, lost its network) cannot terminate itself, and a client that died leaves its task
queues behind. ``meadowrun install --cloud aws`` runs ``lambda_handler`` every minute
(EventBridge), so this module ships in the Lambda's zip: it may import only the standard
library, boto3 and light ``meadowrun_core`` modules (see ``manager_deploy.manager_zip``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.aws.dynamodb_allocation_table import (
    EC2_LAUNCH_GRACE_SECONDS,
    DynamoDbAllocationTable,
)

log = logging.getLogger(__name__)

LIVE_STATES = ("pending", "running")
GONE_STATES = ("shutting-down", "terminated")
ALL_STATES = (*LIVE_STATES, *GONE_STATES, "stopping", "stopped")
_TERMINATE_BATCH = 1000  # TerminateInstances takes at most 1000 ids
# A map job's queues are named after its id, and so are its workers' job ids.
_MAP_QUEUE = re.compile(r"mr-(?P<map_id>[0-9A-Za-z]+)-(?:requests|results)")


# --- EC2 -----------------------------------------------------------------------------------
def tagged_instances(ec2: Any, states: Iterable[str] = LIVE_STATES) -> dict[str, dict[str, Any]]:
    """meadowrun's instances (by tag) in ``states``, by instance id."""
    filters = [*names.TAG_FILTER, {"Name": "instance-state-name", "Values": list(states)}]
    found: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance
    return found


def meadowrun_id(instance: dict[str, Any]) -> str:
    """meadowrun's id of an EC2 instance (the allocation table's key), from its tag; the EC2
    id where the tag is missing."""
    for tag in instance.get("Tags", []):
        if tag["Key"] == names.INSTANCE_ID_TAG:
            return str(tag["Value"])
    return str(instance["InstanceId"])


def states_by_meadowrun_id(ec2: Any) -> dict[str, str]:
    """The EC2 state of every tagged instance EC2 still lists, by meadowrun id (a live state
    wins if one id somehow has several instances)."""
    states: dict[str, str] = {}
    for instance in tagged_instances(ec2, ALL_STATES).values():
        key, state = meadowrun_id(instance), instance["State"]["Name"]
        if states.get(key) not in LIVE_STATES:
            states[key] = state
    return states


def terminate(ec2: Any, instance_ids: list[str]) -> None:
    for start in range(0, len(instance_ids), _TERMINATE_BATCH):
        ec2.terminate_instances(InstanceIds=instance_ids[start : start + _TERMINATE_BATCH])


def _timestamp(value: dt.datetime | str | float) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value)


# --- SQS -----------------------------------------------------------------------------------
def meadowrun_queue_urls(sqs: Any) -> list[str]:
    """URLs of every queue named with meadowrun's prefix."""
    urls: list[str] = []
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=names.QUEUE_PREFIX):
        urls.extend(page.get("QueueUrls", []))
    return urls


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def queue_job_prefix(name: str) -> str:
    """The job ids that use queue ``name`` start with this (map queues ``mr-<id>-...``
    serve workers ``map-<id>-...``); other queues are matched by their own name."""
    short = name.removeprefix(names.QUEUE_PREFIX)
    match = _MAP_QUEUE.fullmatch(short)
    return f"map-{match['map_id']}-" if match else short


def delete_queue(sqs: Any, url: str) -> bool:
    """Delete one queue; False when it was already gone."""
    try:
        sqs.delete_queue(QueueUrl=url)
    except ClientError as exc:
        if "NonExistentQueue" in error_code(exc):
            return False
        raise
    return True


# --- the passes ----------------------------------------------------------------------------
def _terminate_lost_instances(
    ec2: Any,
    table: DynamoDbAllocationTable,
    now: float,
    launch_grace_seconds: float,
    heartbeat_timeout_seconds: float,
) -> list[str]:
    records = {r.instance_id: r for r in table.list_instances()}
    done: list[str] = []
    for ec2_id, instance in sorted(tagged_instances(ec2).items()):
        instance_id = meadowrun_id(instance)
        record = records.get(instance_id)
        launched = _timestamp(instance["LaunchTime"])
        if record is None or record.address is None:
            if launched >= now - launch_grace_seconds:
                continue
            reason = f"never registered {now - launched:.0f} s after launch"
        elif record.last_heartbeat < now - heartbeat_timeout_seconds:
            reason = f"no heartbeat for {now - record.last_heartbeat:.0f} s"
        else:
            continue
        terminate(ec2, [ec2_id])
        table.remove_instance(instance_id, f"terminated by the manager: {reason}")
        done.append(f"terminated {ec2_id} (meadowrun {instance_id}): {reason}")
    return done


def _remove_rows_of_gone_instances(
    ec2: Any, table: DynamoDbAllocationTable, now: float, launch_grace_seconds: float
) -> list[str]:
    """Rows of instances EC2 has terminated, or does not list once the launch grace is over
    (a row is written before its instance is launched, and EC2 is eventually consistent)."""
    records = table.list_instances()
    states = states_by_meadowrun_id(ec2)
    done: list[str] = []
    for record in records:
        state = states.get(record.instance_id)
        if state in GONE_STATES or (state is None and record.created < now - launch_grace_seconds):
            table.remove_instance(record.instance_id, f"instance {state or 'unknown'} in EC2")
            done.append(f"removed table row of {state or 'unknown'} instance {record.instance_id}")
    return done


def _delete_stale_queues(
    sqs: Any, table: DynamoDbAllocationTable, now: float, queue_max_age_seconds: float
) -> list[str]:
    job_ids = [a.job_id for a in table.list_allocations()]
    done: list[str] = []
    for url in meadowrun_queue_urls(sqs):
        name = queue_name(url)
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["CreatedTimestamp"]
            )["Attributes"]
        except ClientError as exc:
            if "NonExistentQueue" in error_code(exc):
                continue
            raise
        age = now - float(attributes["CreatedTimestamp"])
        prefix = queue_job_prefix(name)
        if age <= queue_max_age_seconds or any(j.startswith(prefix) for j in job_ids):
            continue
        if delete_queue(sqs, url):
            done.append(f"deleted queue {name} ({age / 3600:.1f} h old, no job uses it)")
    return done


def manage_once(
    region: str | None = None,
    now: float | None = None,
    launch_grace_seconds: float = EC2_LAUNCH_GRACE_SECONDS,
    heartbeat_timeout_seconds: float = 120,
    queue_max_age_seconds: float = 86400,
) -> list[str]:
    """One pass: terminate lost instances, forget gone ones, delete abandoned queues."""
    now = time.time() if now is None else now
    ec2 = aws_client("ec2", region)
    sqs = aws_client("sqs", region)
    table = DynamoDbAllocationTable(aws_client("dynamodb", region), names.TABLE_NAME)
    done = _terminate_lost_instances(
        ec2, table, now, launch_grace_seconds, heartbeat_timeout_seconds
    )
    done += _remove_rows_of_gone_instances(ec2, table, now, launch_grace_seconds)
    done += _delete_stale_queues(sqs, table, now, queue_max_age_seconds)
    for line in done:
        log.info("%s", line)
    return done


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point (the schedule's event carries nothing we need)."""
    logging.getLogger().setLevel(logging.INFO)
    return {"actions": manage_once()}
