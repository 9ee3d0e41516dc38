"""Custom resources (meadowgrid's): a host's instances offer them
(``AllocLocalInstance(custom_resources=...)``), jobs ask for them (``Resources(custom=...)``)
and are placed only where enough is free, counted like CPU and memory; on the real local
cloud."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import workloads
from waiting import wait_until

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable

SENSOR = {"SENSOR": 1}


def _table(home: Path) -> SqliteAllocationTable:
    return SqliteAllocationTable(home / "state.db")


def test_a_job_needing_a_sensor_runs_on_a_host_offering_it(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance(custom_resources={"SENSOR": 2})
    resources = mr.Resources(logical_cpu=1, memory_gb=0.5, custom=SENSOR)
    assert mr.run_function(workloads.double, args=(2,), host=host, resources=resources) == 4
    (instance,) = _table(local_cloud).list_instances()
    assert dict(instance.custom_total) == {"SENSOR": 2}
    assert dict(instance.custom_free) == {"SENSOR": 2}  # given back when the job ended
    # map tasks too, each slot holding one
    assert mr.run_map(workloads.double, [1, 2, 3], host=host, resources_per_task=resources) == [
        2,
        4,
        6,
    ]
    # the map's workers give theirs back as they exit, just after the last result arrived
    wait_until(
        lambda: all(
            dict(i.custom_free) == dict(i.custom_total)
            for i in _table(local_cloud).list_instances()
        ),
        timeout=30,
        what="the map's workers to give their sensors back",
    )


def test_three_jobs_on_one_instance_offering_two_never_run_three_at_once(
    local_cloud: Path, tmp_path: Path
) -> None:
    """The one instance (max_cpu=3 holds no second) has CPU and memory for all three jobs but
    two sensors: two run at once, the third after one of them ended."""
    host = mr.AllocLocalInstance(max_cpu=3, custom_resources={"SENSOR": 2})
    # a 3-CPU instance, idle afterwards: the launch limit leaves room for no other
    mr.run_function(workloads.double, args=(1,), host=host, resources=mr.Resources(3, 3))
    (instance,) = _table(local_cloud).list_instances()
    assert instance.cpu_total == 3 and instance.memory_total >= 3
    records = tmp_path / "records"
    records.mkdir()
    lowest_free: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        table = _table(local_cloud)
        while not stop.is_set():
            lowest_free.extend(i.custom_free.get("SENSOR", 0) for i in table.list_instances())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        handles = [
            mr.run_function(
                workloads.sleep_and_record,
                args=(1.0, str(records)),
                host=host,
                resources=mr.Resources(logical_cpu=1, memory_gb=0.5, custom=SENSOR),
                wait_for_result=False,
            )
            for _ in range(3)
        ]
        for handle in handles:
            handle.result(timeout=60)
    finally:
        stop.set()
        sampler.join()
    runs = [json.loads(p.read_text()) for p in records.iterdir()]
    assert len(runs) == 3
    assert {r["instance"] for r in runs} == {instance.instance_id}
    # the most running at one instant (at some job's start)
    most = max(
        sum(1 for r in runs if r["start"] <= t < r["end"]) for t in (r["start"] for r in runs)
    )
    assert most == 2, runs  # two at once (CPU was not the limit), never three
    first_end = min(r["end"] for r in runs)
    assert max(r["start"] for r in runs) >= first_end - 0.05
    assert min(lowest_free) >= 0 and 0 in lowest_free
    assert [i.instance_id for i in _table(local_cloud).list_instances()] == [instance.instance_id]


def test_a_resource_the_host_does_not_offer_fails_fast_naming_it(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance(custom_resources={"SENSOR": 2})
    started = time.monotonic()
    with pytest.raises(mr.ResourcesNotAvailableError, match="'GPS', which instances of"):
        mr.run_function(
            workloads.double, args=(1,), host=host, resources=mr.Resources(custom={"GPS": 1})
        )
    with pytest.raises(mr.ResourcesNotAvailableError, match=r"one instance of .* offers 2"):
        mr.run_map(
            workloads.double,
            [1],
            host=host,
            resources_per_task=mr.Resources(custom={"SENSOR": 3}),
        )
    # the default host offers none
    with pytest.raises(mr.ResourcesNotAvailableError, match="each offers no custom resources"):
        mr.run_function(workloads.double, args=(1,), resources=mr.Resources(custom=SENSOR))
    assert time.monotonic() - started < 5
    assert _table(local_cloud).list_instances() == []  # nothing was launched


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"": 1}, "names must be non-empty strings"),
        ({3: 1}, "names must be non-empty strings"),
        ({"SENSOR": 0}, "amounts must be positive numbers"),
        ({"SENSOR": -1}, "amounts must be positive numbers"),
        ({"SENSOR": "2"}, "amounts must be positive numbers"),
        ({"SENSOR": True}, "amounts must be positive numbers"),
        ({"SENSOR": float("inf")}, "amounts must be positive numbers"),
        ([("SENSOR", 1)], "must be a dict of name -> amount"),
    ],
)
def test_custom_resources_are_validated(custom: object, message: str) -> None:
    for host in (mr.AllocLocalInstance, mr.AllocEC2Instance):
        with pytest.raises(mr.BadInputError, match=message):
            host(custom_resources=custom)  # type: ignore[arg-type]


def test_hosts_with_custom_resources_are_values() -> None:
    """Hosts key per-process caches: equal hosts hash equal, and the caller's dict is copied."""
    offered = {"SENSOR": 2}
    host = mr.AllocLocalInstance(custom_resources=offered)
    offered["SENSOR"] = 5
    assert host.custom_resources == {"SENSOR": 2}
    assert host == mr.AllocLocalInstance(custom_resources={"SENSOR": 2})
    assert hash(host) == hash(mr.AllocLocalInstance(custom_resources={"SENSOR": 2}))
    assert host != mr.AllocLocalInstance(custom_resources={"SENSOR": 3})
    assert len({host, mr.AllocLocalInstance(custom_resources={"SENSOR": 2})}) == 1
