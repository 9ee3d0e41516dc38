"""One conformance suite per seam, run against every implementation: the local cloud's
SQLite/file versions, the AWS versions on moto's server (real HTTP, real boto3) and the Azure
versions on Azurite (real HTTP, the real Azure SDKs)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import seam_racer

from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.s3_object_store import S3ObjectStore
from meadowrun_core.aws.sqs_task_queue import SqsTaskQueue
from meadowrun_core.azure.blob_object_store import BlobObjectStore
from meadowrun_core.azure.storage_account import StorageAccount
from meadowrun_core.azure.storage_queue import StorageQueueTaskQueue
from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType

ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("t.small", 2, 4, 0.05)


def _boto(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(params=["sqlite", "dynamodb", "azure-table"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SqliteAllocationTable(tmp_path / "state.db")
    if request.param == "azure-table":
        account: StorageAccount = request.getfixturevalue("azurite")
        azure = AzureTableAllocationTable(account.table_service(), f"alloc{uuid.uuid4().hex}")
        assert azure.create()
        return azure
    endpoint = request.getfixturevalue("moto_endpoint")
    dynamo = DynamoDbAllocationTable(_boto("dynamodb", endpoint), f"alloc-{uuid.uuid4().hex}")
    dynamo.create()
    return dynamo


@pytest.fixture(params=["sqlite", "sqs", "storage-queue"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SqliteTaskQueue(tmp_path / "queues.db")
    if request.param == "storage-queue":
        return StorageQueueTaskQueue(request.getfixturevalue("azurite").queue_service())
    return SqsTaskQueue(_boto("sqs", request.getfixturevalue("moto_endpoint")))


@pytest.fixture(params=["file", "s3", "blob"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "file":
        return FileObjectStore(tmp_path / "objects")
    if request.param == "blob":
        account: StorageAccount = request.getfixturevalue("azurite")
        blob = BlobObjectStore(account.blob_service(), f"meadowrun-{uuid.uuid4().hex[:12]}")
        assert blob.create()
        return blob
    s3 = _boto("s3", request.getfixturevalue("moto_endpoint"))
    bucket = f"meadowrun-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return S3ObjectStore(s3, bucket)


# --- allocation table -------------------------------------------------------------------------
def _launch(table: Any, instance_id: str, jobs: list[str]) -> None:
    assert table.allocate_on_new_instance(instance_id, SMALL, jobs, ONE, "c1", "d", 4, 8)
    table.register_instance(instance_id, "127.0.0.1:1", 1)


def test_allocation_respects_capacity(table: Any) -> None:
    table.renew_lease("c1", 1, 60)
    _launch(table, "i-1", ["j1"])
    (record,) = table.list_instances()
    assert (record.cpu_free, record.memory_free, record.running_jobs) == (1, 3, 1)
    assert table.allocate_on_existing(["j2", "j3"], ONE, "c1", "d") == {"j2": "i-1"}
    assert table.get_instance("i-1").cpu_free == 0
    assert table.deallocate("j1", "done") and not table.deallocate("j1", "done")
    assert table.allocate_on_existing(["j3"], ONE, "c1", "d") == {"j3": "i-1"}
    assert {a.job_id for a in table.list_allocations("i-1")} == {"j2", "j3"}


def test_launch_limit_is_never_exceeded(table: Any) -> None:
    _launch(table, "i-1", ["a"])
    _launch(table, "i-2", ["b"])
    assert not table.allocate_on_new_instance("i-3", SMALL, ["c"], ONE, "c1", "d", 4, 8)
    table.remove_instance("i-2", "terminated")
    assert table.allocate_on_new_instance("i-3", SMALL, ["c"], ONE, "c1", "d", 4, 8)
    assert [r["job_id"] for r in table.job_history()] == ["b"]


def test_a_finished_jobs_history_row_is_found_by_its_id(table: Any) -> None:
    """``finished_job``: what ``JobHandle.cost()`` reads, once the allocation is freed."""
    _launch(table, "i-1", ["a"])
    assert table.finished_job("a") is None  # still running
    assert table.deallocate("a", "done")
    row = table.finished_job("a")
    assert row is not None and row["job_id"] == "a" and row["outcome"] == "done"
    assert (row["cpu"], row["instance_cpu"], row["instance_type"]) == (1, 2, SMALL.name)
    assert row["price_per_hour"] == SMALL.price_per_hour and row["ended"] >= row["started"]
    assert table.finished_job("nope") is None


def test_idle_removal_is_conditional(table: Any) -> None:
    _launch(table, "i-1", ["a"])
    assert not table.remove_instance_if_idle("i-1")
    table.deallocate("a", "done")
    assert table.remove_instance_if_idle("i-1")
    assert table.list_instances() == []


def test_leases_and_interruptions(table: Any) -> None:
    table.renew_lease("alive", 1, 60)
    table.renew_lease("dying", 1, 0.01)
    _launch(table, "i-1", [])
    table.allocate_on_existing(["ok"], ONE, "alive", "d")
    table.allocate_on_existing(["orphan"], ONE, "dying", "d")
    time.sleep(0.05)
    assert [a.job_id for a in table.allocations_with_expired_lease("i-1")] == ["orphan"]
    table.request_interruption("i-1", 5)
    record = table.get_instance("i-1")
    assert record.interruption_at is not None and record.interruption_at > time.time()
    table.set_prevent_further_allocation("i-1")
    table.deallocate("ok", "done")
    assert table.allocate_on_existing(["late"], ONE, "alive", "d") == {}


def test_job_keys(table: Any) -> None:
    assert table.claim_job_key("k", "pending") is None
    assert table.claim_job_key("k", "other") == "pending"
    table.set_job_key_instance("k", "job-1", "i-1")
    assert table.get_job_key("k")["status"] == "placed"
    table.mark_job_key_started("k")
    assert table.get_job_key("k")["status"] == "running"
    table.record_job_final("k", '{"status": "succeeded"}', "abc")
    row = table.get_job_key("k")
    assert (row["status"], row["payload_key"], row["job_id"]) == ("ended", "abc", "job-1")
    table.mark_job_key_started("k")  # a late start notice never reopens an ended job
    assert table.get_job_key("k")["status"] == "ended"
    assert table.forget_job_key("k") and table.get_job_key("k") is None
    table.renew_lease("c9", 1, 30)
    expiry = table.lease_expiry("c9")
    assert expiry is not None and expiry > time.time() + 20
    assert table.lease_expiry("nobody") is None


def test_sixteen_racing_clients_never_over_allocate(table: Any, tmp_path: Path) -> None:
    table.renew_lease("c1", 1, 60)
    _launch(table, "i-1", [])
    if isinstance(table, SqliteAllocationTable):
        args = [("sqlite", str(tmp_path / "state.db"), w) for w in range(16)]
    elif isinstance(table, AzureTableAllocationTable):
        args = [("azure", f"{table._service.url}|{table._table}", w) for w in range(16)]
    else:
        args = [("dynamodb", f"{table._db.meta.endpoint_url}|{table._table}", w) for w in range(16)]
    stop = threading.Event()

    def heartbeat() -> None:  # what the instance's agent does meanwhile
        while not stop.wait(0.5):
            table.heartbeat("i-1")

    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        with multiprocessing.get_context("forkserver").Pool(16) as pool:
            won = sum(pool.map(seam_racer.race, args))
    finally:
        stop.set()
        beating.join()
    record = table.get_instance("i-1")
    assert won == 2, "exactly the 2 free CPUs were handed out"
    assert record.cpu_free == 0 and len(table.list_allocations("i-1")) == 2


# --- task queue -------------------------------------------------------------------------------
def test_queue_visibility_and_redelivery(queue: Any) -> None:
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue.create_queue(name)
    queue.send_batch(name, [f"m{i}".encode() for i in range(12)])
    first = queue.receive(name, 10, 1, 2)
    assert 1 <= len(first) <= 10 and all(m.receive_count == 1 for m in first)
    seen = {m.body for m in first}
    while len(seen) < 12:
        more = queue.receive(name, 10, 30, 2)
        assert more, "messages went missing"
        seen |= {m.body for m in more}
        queue.delete(name, [m.receipt for m in more])
    assert seen == {f"m{i}".encode() for i in range(12)}
    # the first batch was never deleted: it comes back after its visibility timeout
    time.sleep(1.2)
    again = queue.receive(name, 10, 30, 3)
    assert {m.body for m in again} <= {m.body for m in first}
    assert again and all(m.receive_count == 2 for m in again)
    queue.change_visibility(name, [m.receipt for m in again], 0)
    assert queue.receive(name, 10, 30, 3)
    queue.delete_queue(name)


def test_queue_long_poll_returns_when_empty(queue: Any) -> None:
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue.create_queue(name)
    started = time.monotonic()
    assert queue.receive(name, 1, 5, 1) == []
    assert 0.9 <= time.monotonic() - started < 5
    queue.delete_queue(name)


# --- object store -----------------------------------------------------------------------------
def test_object_store_content_addressed(store: Any) -> None:
    key = store.put(b"hello")
    assert store.put(b"hello") == key and store.exists(key)
    assert store.get(key) == b"hello"
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)


def test_object_store_named_objects(store: Any) -> None:
    """Objects under a chosen name: replaced by a later put, listed by folder with their size
    and time of writing, deleted in bulk, and apart from the content-addressed ones."""
    before = time.time() - 5
    with pytest.raises(KeyError):
        store.get_named("cache/ab/cd")
    store.put_named("cache/ab/cd", b"one")
    store.put_named("cache/ab/cd", b"two!")
    store.put_named("cache/ef/gh", b"x")
    store.put_named("other/ij", b"y")
    assert store.get_named("cache/ab/cd") == b"two!"
    listed = sorted(store.list_named("cache"), key=lambda o: o.name)
    assert [(o.name, o.size) for o in listed] == [("cache/ab/cd", 4), ("cache/ef/gh", 1)]
    assert all(before <= o.stored_at <= time.time() + 5 for o in listed)
    assert {o.name for o in store.list_named("")} == {"cache/ab/cd", "cache/ef/gh", "other/ij"}
    assert list(store.list_named("missing")) == []
    key = store.put(b"content")  # content-addressed objects are not named ones
    assert {o.name for o in store.list_named("")} == {"cache/ab/cd", "cache/ef/gh", "other/ij"}
    store.delete_named(["cache/ab/cd", "cache/ef/gh", "cache/never/was"])
    assert list(store.list_named("cache")) == []
    assert store.get_named("other/ij") == b"y" and store.get(key) == b"content"
    for bad in ("../up", "a//b", "/abs", "a/", "a b", ""):
        with pytest.raises(ValueError, match="invalid object name"):
            store.put_named(bad, b"z")


# --- reuse honours every resource (issue 12, item 3) -----------------------------------------
GPU_SPOT = InstanceType(
    "g.spot",
    8,
    32,
    0.3,
    interruption_probability=0.1,
    is_spot=True,
    gpus=1,
    gpu_memory_gb=16,
    flags=("nvidia", "avx512", "x86_64"),
    arch="x86_64",
    custom=(("licenses", 2.0),),
)
CPU_SPOT = InstanceType(
    "c.spot", 8, 32, 0.1, interruption_probability=0.1, is_spot=True, arch="x86_64"
)
CPU_ON_DEMAND = InstanceType("c.od", 8, 32, 0.2, arch="x86_64")
ARM = InstanceType("a.od", 8, 32, 0.1, flags=("arm64",), arch="arm64")


def _launch_type(table: Any, instance_id: str, instance_type: InstanceType) -> None:
    assert table.allocate_on_new_instance(instance_id, instance_type, [], ONE, "c1", "d", 64, 256)
    table.register_instance(instance_id, "127.0.0.1:1", 1)


def _where(table: Any, resources: Resources) -> str | None:
    job = f"j-{uuid.uuid4().hex[:8]}"
    return table.allocate_on_existing([job], resources, "c1", "d").get(job)


def test_reuse_honours_gpus_flags_market_arch_and_custom(table: Any) -> None:
    table.renew_lease("c1", 1, 60)
    _launch_type(table, "i-cpu-spot", CPU_SPOT)
    # nothing but a CPU spot instance: a GPU, flag, on-demand, arm or custom job never lands
    assert _where(table, Resources(1, 1, gpus=1)) is None
    assert _where(table, Resources(1, 1, gpu_memory=8)) is None
    assert _where(table, Resources(1, 1, flags=("avx512",))) is None
    assert _where(table, Resources(1, 1, max_eviction_rate=0)) is None
    assert _where(table, Resources(1, 1, max_eviction_rate=5)) is None  # bucket 10% > 5%
    assert _where(table, Resources(1, 1, flags=("arm64",))) is None
    assert _where(table, Resources(1, 1, custom={"licenses": 1})) is None
    assert _where(table, Resources(1, 1)) == "i-cpu-spot"
    _launch_type(table, "i-od", CPU_ON_DEMAND)
    _launch_type(table, "i-arm", ARM)
    _launch_type(table, "i-gpu", GPU_SPOT)
    assert _where(table, Resources(1, 1, max_eviction_rate=0)) == "i-od"
    assert _where(table, Resources(1, 1, flags=("graviton",))) == "i-arm"
    assert _where(table, Resources(1, 1, gpus=1, gpu_memory=16, flags=("cuda",))) == "i-gpu"
    assert _where(table, Resources(1, 1, gpus=1)) is None  # its one GPU is taken
    assert _where(table, Resources(1, 1, gpu_memory=32)) is None  # 16 GB per GPU
    assert _where(table, Resources(1, 1, custom={"licenses": 2})) == "i-gpu"
    assert _where(table, Resources(1, 1, custom={"licenses": 1})) is None  # both taken
    record = table.get_instance("i-gpu")
    assert (record.gpus_total, record.gpus_free, record.is_spot, record.arch) == (
        1,
        0,
        True,
        "x86_64",
    )
    assert record.custom_free == {"licenses": 0} and "avx512" in record.flags
    gpu_jobs = [a for a in table.list_allocations("i-gpu")]
    for allocation in gpu_jobs:  # ending the jobs gives every resource back
        assert table.deallocate(allocation.job_id, "done")
    record = table.get_instance("i-gpu")
    assert (record.gpus_free, dict(record.custom_free)) == (1, {"licenses": 2})
    assert _where(table, Resources(1, 1, gpus=1, custom={"licenses": 2})) == "i-gpu"


def test_place_on_existing_answers_with_records(table: Any) -> None:
    _launch_type(table, "i-od", CPU_ON_DEMAND)
    placed = table.place_on_existing(["a", "b"], Resources(2, 4), "c1", "d")
    assert set(placed) == {"a", "b"}
    assert all(r.instance_id == "i-od" and r.address == "127.0.0.1:1" for r in placed.values())
    fresh = table.get_instance("i-od")
    assert fresh.cpu_free == 4
    # the last job placed answers with the instance as the table now has it
    last = placed["b"]
    assert (last.cpu_free, last.memory_free, last.running_jobs) == (
        fresh.cpu_free,
        fresh.memory_free,
        fresh.running_jobs,
    )


def test_raffle_entries(table: Any) -> None:
    """The priority raffle's entries (seams/raffle.py): added, renewed in place, lapsed
    ones not listed, removed on leaving."""
    now = time.time()
    table.enter_raffle("t-low", 1.0, "client-a", now + 10)
    table.enter_raffle("t-high", 3.0, "client-b", now + 10)
    table.enter_raffle("t-gone", 5.0, "client-c", now - 1)  # already lapsed
    entries = sorted(table.raffle_entries(), key=lambda e: e.ticket)
    assert [(e.ticket, e.priority) for e in entries] == [("t-high", 3.0), ("t-low", 1.0)]
    table.enter_raffle("t-low", 1.0, "client-a", now + 20)  # renewed, not doubled
    assert sorted((e.ticket, e.expires) for e in table.raffle_entries()) == [
        ("t-high", now + 10),
        ("t-low", now + 20),
    ]
    table.leave_raffle("t-high")
    table.leave_raffle("t-low")
    assert table.raffle_entries() == []
