"""The AWS data plane on the EC2 twin (issue 12): payloads of any size through SQS and S3,
long polling, the full launch fallback ladder in production code, and few requests."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

import meadowrun_core as mr
from meadowrun_core.client.allocation import allocate
from meadowrun_core.client.runtime import LEASE_THREAD_NAME, ClientRuntime
from meadowrun_core.exceptions import ResourcesNotAvailableError
from tests import twin_workloads as work
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud

MB = 1 << 20


def _count_requests(backend: Any) -> Counter[str]:
    """Every request the client's AWS clients send for its calls, by operation (not the
    lease thread's renewals: a PutItem every lease/3 seconds, whatever the calls do)."""
    counts: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        if threading.current_thread().name != LEASE_THREAD_NAME:
            counts[event_name.removeprefix("before-call.")] += 1

    for client in (backend.table._db, backend.queues._sqs, backend.store._s3):
        client.meta.events.register("before-call", count)
    return counts


def test_map_of_large_payloads_and_few_requests(aws: AwsTwinCloud) -> None:
    host = aws.host()
    args = [bytes([i]) * MB for i in range(50)]
    results = mr.run_map(
        work.grow,
        args,
        host=host,
        resources_per_task=mr.Resources(1, 1),
        num_concurrent_tasks=2,
        deployment=DEPLOYMENT,
    )
    assert [r[:1] for r in results] == [bytes([i]) for i in range(50)]
    assert all(len(r) == 2 * MB for r in results)
    # warm: a run_function sends at most 3 requests, all of them DynamoDB
    backend = ClientRuntime.get().backend(host)
    counts = _count_requests(backend)
    kwargs: dict[str, Any] = {"host": host, "resources": mr.Resources(1, 1)}
    assert mr.run_function(work.square, args=(3,), deployment=DEPLOYMENT, **kwargs) == 9
    counts.clear()
    assert mr.run_function(work.square, args=(4,), deployment=DEPLOYMENT, **kwargs) == 16
    assert sum(counts.values()) <= 3, counts
    # a map's receives long-poll (WaitTimeSeconds=20): no busy loop
    waits: list[int] = []
    backend.queues._sqs.meta.events.register(
        "provide-client-params.sqs.ReceiveMessage",
        lambda params, **_: waits.append(params["WaitTimeSeconds"]),
    )
    assert mr.run_map(
        work.square,
        range(200),
        host=host,
        deployment=DEPLOYMENT,
        num_concurrent_tasks=2,
        resources_per_task=mr.Resources(1, 1),
    ) == [x * x for x in range(200)]
    assert waits and set(waits) == {20}


def test_fallback_walks_every_choice_and_skips_spot_after_a_spot_quota(aws: AwsTwinCloud) -> None:
    backend: Any = ClientRuntime.get().backend(aws.host())
    resources = mr.Resources(2, 8)
    choices = backend.provider.choices(resources, 1, 1e9, 1e9)
    spot = [t for t, _ in choices if t.is_spot]
    on_demand = [t for t, _ in choices if not t.is_spot]
    assert len(choices) > 5 and spot and on_demand  # more than the old cap of 5
    tried: list[str] = []

    def refuse(params: dict[str, Any], **_: Any) -> tuple[Any, Any]:
        body = params["body"]
        is_spot = "InstanceMarketOptions.MarketType" in body
        tried.append(f"{body['InstanceType']} {'spot' if is_spot else 'on-demand'}")
        code = "MaxSpotInstanceCountExceeded" if is_spot else "InsufficientInstanceCapacity"
        return AWSResponse("", 500, {}, None), {
            "Error": {"Code": code, "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }

    backend.provider._ec2.meta.events.register("before-call.ec2.RunInstances", refuse)

    async def place() -> None:
        await allocate(backend, resources, 1, "test-client", "ladder")

    with pytest.raises(ResourcesNotAvailableError) as info:
        asyncio.run(place())
    # one spot attempt, then every on-demand choice; the other spot choices skipped
    assert tried[0].endswith(" spot") and len(tried) == 1 + len(on_demand)
    assert all(t.endswith("on-demand") for t in tried[1:])
    message = str(info.value)
    assert f"refused all {len(choices)} instance type choice(s)" in message
    assert message.count("skipped (spot quota exhausted)") == len(spot) - 1
    assert "MaxSpotInstanceCountExceeded" in message and "InsufficientInstanceCapacity" in message
    assert not backend.table.list_instances()  # every reserved room given back
