"""A scale model of a ``run_map`` on AWS: requests per service, their cost, and the
throughput ceilings that published service limits set (issue 18, item 4).

The request counts follow the data plane's design (docs/aws.md, "Data plane"): tasks go in
messages of ``tasks_per_message`` tasks (at most 100, about 16 messages per worker), sent 10
to a SendMessageBatch; each agent receives ``min(10, slots)`` messages per long poll; every
agent flushes results at most every ``batch_seconds`` (0.25 s), up to 500 results a
message, and then deletes the request messages those results complete; the client receives
10 result messages per long poll. Counts that depend on time (flushes, idle polls,
heartbeats) take the map's duration as an input. Prices and limits are the published
us-east-1 figures listed in ``PRICES`` and ``LIMITS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Published us-east-1 prices, USD (SQS standard; DynamoDB on-demand since Nov 2024; S3
# Standard). SQS bills each 64 KiB chunk of a request as one request.
PRICES = {
    "sqs_per_million": 0.40,
    "dynamodb_write_per_million": 0.625,
    "dynamodb_read_per_million": 0.125,
    "s3_put_per_thousand": 0.005,
    "s3_get_per_thousand": 0.0004,
}
# Published limits that a map can meet.
LIMITS = {
    "sqs_in_flight_per_queue": 120_000,  # standard queue, received and not deleted
    "sqs_batch": 10,  # messages per batch call and per receive
    "sqs_message_kib": 256,
    "sqs_long_poll_s": 20,
    "ec2_run_instances_burst": 1000,  # resource tokens (instances), refilled 2 per second
    "ec2_run_instances_refill_per_s": 2,
    "s3_put_per_s_per_prefix": 3500,
    "dynamodb_item_writes_per_s": 1000,  # one partition's write units
}
MAX_TASKS_PER_MESSAGE = 100  # meadowrun_core/map_messages.py
RESULTS_PER_MESSAGE = 500  # meadowrun_core/map_messages.RESULT_FLUSH_COUNT
BATCH_SECONDS = 0.25  # SqsTaskQueue.batch_seconds
MAX_UNDELETED_RESULTS = 50_000  # client/map_driver.py


@dataclass(frozen=True)
class MapShape:
    tasks: int
    instances: int
    slots_per_instance: int
    seconds: float  # how long the map runs (the instances are busy that long)
    visibility_timeout: float = 15.0
    reconcile_interval: float = 5.0  # agent heartbeats
    lease_seconds: float = 10.0  # the client renews its lease every third of it

    @property
    def workers(self) -> int:
        return self.instances * self.slots_per_instance


def tasks_per_message(tasks: int, workers: int) -> int:
    return max(1, min(MAX_TASKS_PER_MESSAGE, tasks // (workers * 16)))


def sqs_requests(shape: MapShape) -> dict[str, float]:
    """SQS requests of one map by operation (client and agents together)."""
    messages = math.ceil(shape.tasks / tasks_per_message(shape.tasks, shape.workers))
    per_instance_tasks = shape.tasks / shape.instances
    # one flush per batch window while results come, never more than one per task
    flushes_each = min(per_instance_tasks, math.ceil(shape.seconds / BATCH_SECONDS))
    results_per_flush = per_instance_tasks / flushes_each
    result_messages = shape.instances * flushes_each * math.ceil(results_per_flush / 500)
    receive_batch = min(LIMITS["sqs_batch"], shape.slots_per_instance)
    messages_per_flush = messages / shape.instances / flushes_each
    return {
        "CreateQueue": 2,
        "GetQueueUrl": 2 * shape.instances,  # each agent looks both queues up once
        "SendMessageBatch": math.ceil(messages / 10)  # the tasks
        + shape.instances * flushes_each * math.ceil(results_per_flush / 500 / 10)  # results
        + 1,  # the client wakes its own poll at the end
        # agents: one long poll per receive_batch messages, plus one left waiting at the end;
        # client: one per 10 result messages (it keeps up) plus its last poll
        "ReceiveMessage": math.ceil(messages / receive_batch)
        + shape.instances
        + math.ceil(result_messages / 10)
        + 1,
        # agents delete the request messages each flush completed (a flush completing none
        # deletes nothing)
        "DeleteMessageBatch": shape.instances
        * (
            flushes_each * math.ceil(messages_per_flush / 10)
            if messages_per_flush >= 1
            else messages / shape.instances
        ),
        # held request messages are extended every third of the visibility timeout
        "ChangeMessageVisibilityBatch": shape.instances
        * math.floor(shape.seconds / (shape.visibility_timeout / 3)),
        "DeleteQueue": 2,
    }


def dynamodb_requests(shape: MapShape) -> dict[str, float]:
    """Table requests while the map runs: agents' heartbeats, the client's lease, and the
    slots' allocation: per slot a Query and an UpdateItem to place it, the agent's
    UpdateItem and the history PutItem when it ends, and a GetItem of the job's outcome."""
    return {
        "heartbeats": shape.instances * shape.seconds / shape.reconcile_interval,
        "lease renewals": shape.seconds / (shape.lease_seconds / 3),
        "slot allocation": 5 * shape.workers,
    }


def cost(shape: MapShape) -> dict[str, float]:
    """USD per map by service (S3: the function and a few code objects, under a cent)."""
    sqs = sum(sqs_requests(shape).values())
    dynamo = sum(dynamodb_requests(shape).values())
    return {
        "sqs": sqs * PRICES["sqs_per_million"] / 1e6,
        "dynamodb": dynamo * PRICES["dynamodb_write_per_million"] / 1e6,
    }


def ceilings(
    shape: MapShape,
    per_slot_tasks_per_s: float,
    client_tasks_per_s: float,
    sqs_round_trip_s: float,
    launch_seconds: float,
) -> dict[str, float]:
    """Tasks per second each part allows (the smallest binds), and the fleet's ramp.

    ``per_slot_tasks_per_s`` and ``client_tasks_per_s`` are measured (bench_scale_model);
    ``sqs_round_trip_s`` and ``launch_seconds`` (boot to registered) are assumptions."""
    per_message = tasks_per_message(shape.tasks, shape.workers)
    receive_batch = min(LIMITS["sqs_batch"], shape.slots_per_instance)
    results_per_message = max(1.0, min(RESULTS_PER_MESSAGE, shape.tasks / shape.instances))
    return {
        "slots (no-op tasks)": shape.workers * per_slot_tasks_per_s,
        "client decoding results": client_tasks_per_s,
        # one receive in flight per agent, receive_batch messages of per_message tasks
        "agents' request receives": shape.instances
        * receive_batch
        * per_message
        / sqs_round_trip_s,
        # one receive in flight on the client: 10 messages of up to 500 results
        "client's result receives": 10 * results_per_message / sqs_round_trip_s,
        "fleet ramp (s, launches one after another)": shape.instances * launch_seconds,
    }
