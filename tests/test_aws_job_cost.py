"""Costs and custom resources on AllocEC2Instance, end to end on the EC2 twin (moto's server
plus twin hosts, tests/aws_twin.py): the price a job pays is the one recorded at launch, the
on-demand comparison uses the type's on-demand price, and an instance offers its host's
custom resources in DynamoDB."""

from __future__ import annotations

import pytest

import meadowrun_core as mr
from meadowrun_core.aws.pricing import FixturePriceSource
from meadowrun_core.client.runtime import ClientRuntime
from tests import twin_workloads as work
from tests.aws_twin import DEPLOYMENT, FIXTURES, REGION, AwsTwinCloud


def test_job_and_task_costs_and_custom_resources_on_the_twin(aws: AwsTwinCloud) -> None:
    host = aws.host(custom_resources={"licenses": 2})
    resources = mr.Resources(1, 1, custom={"licenses": 1})
    handle = mr.run_function(
        work.square,
        args=(3,),
        host=host,
        resources=resources,
        deployment=DEPLOYMENT,
        wait_for_result=False,
    )
    assert handle.result(timeout=600) == 9
    table = ClientRuntime.get().backend(host).table
    record = table.get_instance(handle.instance_id or "")
    assert record is not None
    assert dict(record.custom_total) == {"licenses": 2} == dict(record.custom_free)
    on_demand = FixturePriceSource(FIXTURES).prices(REGION).on_demand[record.instance_type]
    share = 1 / record.cpu_total

    cost = handle.cost()
    assert cost.instance_seconds > 0  # from its allocation (before the launch) to its end
    assert cost.cost == pytest.approx(cost.instance_seconds * record.price_per_hour / 3600)
    assert cost.on_demand_cost == pytest.approx(cost.instance_seconds * on_demand / 3600)
    if record.is_spot:
        assert cost.on_demand_cost > cost.cost

    results = list(
        mr.run_map_as_completed(
            work.square,
            range(4),
            host=host,
            resources_per_task=resources,
            num_concurrent_tasks=2,
            deployment=DEPLOYMENT,
        )
    )
    assert sorted(r.result for r in results) == [0, 1, 4, 9]
    same_type = {i.instance_type for i in table.list_instances()} == {record.instance_type}
    for r in results:
        assert r.cost is not None and r.cost.on_demand_cost >= r.cost.cost > 0, r
        if same_type:  # the slots ran on instances of the job's type, at its prices
            assert r.cost.instance_seconds < 5 * share
            assert r.cost.on_demand_cost / r.cost.cost == pytest.approx(
                on_demand / record.price_per_hour
            )
