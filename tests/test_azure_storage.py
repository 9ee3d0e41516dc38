"""What the shared conformance suite (tests/test_seams.py) does not cover on the Azure storage
seams, against Azurite (real HTTP, the real Azure SDKs): Storage Queue's 64 KiB limit,
messages we did not write, ETag conflicts, ids Azure forbids in keys, long values."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import UpdateMode

from meadowrun_core.azure.blob_object_store import BlobObjectStore
from meadowrun_core.azure.storage_account import StorageAccount
from meadowrun_core.azure.storage_queue import StorageQueueTaskQueue
from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable
from meadowrun_core.azure.table_entities import INSTANCE, LIMITS_ROW, get_json, put_json, row_key
from meadowrun_core.azure.table_writes import etag_of, modify
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.map_messages import decode_message, encode_messages
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.serialization import Signer

ONE = Resources(logical_cpu=1, memory_gb=1)
MEDIUM = InstanceType("t.medium", 4, 8, 0.1)


@pytest.fixture
def table(azurite: StorageAccount) -> AzureTableAllocationTable:
    created = AzureTableAllocationTable(azurite.table_service(), f"alloc{uuid.uuid4().hex}")
    assert created.create() and not created.create()
    return created


@pytest.fixture
def other_client(azurite: StorageAccount, table: AzureTableAllocationTable) -> Any:
    """A second client of the same table, with its own connection."""
    return AzureTableAllocationTable(azurite.table_service(), table._table)


@pytest.fixture
def queue(azurite: StorageAccount) -> tuple[StorageQueueTaskQueue, str]:
    queues = StorageQueueTaskQueue(azurite.queue_service())
    name = f"q-{uuid.uuid4().hex[:8]}"
    queues.create_queue(name)
    return queues, name


@pytest.fixture
def store(azurite: StorageAccount) -> BlobObjectStore:
    blobs = BlobObjectStore(azurite.blob_service(), f"meadowrun-{uuid.uuid4().hex[:12]}")
    assert blobs.create()
    return blobs


def _launch(table: AzureTableAllocationTable, instance_id: str, jobs: list[str]) -> None:
    assert table.allocate_on_new_instance(instance_id, MEDIUM, jobs, ONE, "c1", "d", 64, 128)
    table.register_instance(instance_id, "127.0.0.1:1", 1)


# --- Storage Queue: 64 KiB messages, messages we did not write -------------------------------
def test_a_message_above_64_kib_goes_through_the_blob_store(
    queue: tuple[StorageQueueTaskQueue, str], store: BlobObjectStore
) -> None:
    queues, name = queue
    signer = Signer(os.urandom(32))
    big = (7, 1, os.urandom(100 * 1024))
    (body,) = encode_messages(signer, store, [big], 100, queues.max_message_bytes)
    assert len(body) < 200, "only a reference travels in the queue"
    assert len(list(store._container.list_blobs(name_starts_with="objects/"))) == 1
    with pytest.raises(ValueError, match=r"seams\.spill"):  # we refuse, before Azure would
        queues.send_batch(name, [signer.sign(pickle.dumps([big]))])
    largest = os.urandom(queues.max_message_bytes)  # the largest body Azure must still take
    queues.send_batch(name, [body, largest])
    received = queues.receive(name, 10, 30, 5)
    while len(received) < 2:
        received += queues.receive(name, 10, 30, 5)
    bodies = {m.body for m in received}
    assert largest in bodies
    (reference,) = bodies - {largest}
    assert decode_message(signer, store, reference) == [big]


def test_unsigned_or_malformed_queue_messages_are_dropped_never_unpickled(
    azurite: StorageAccount,
    queue: tuple[StorageQueueTaskQueue, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queues, name = queue
    signer = Signer(os.urandom(32))
    trap = tmp_path / "unpickled"
    hostile = pickle.dumps(_Trap(str(trap)))  # a pickle that acts when unpickled
    raw = azurite.queue_service().get_queue_client(queues._client(name).queue_name)
    raw.send_message("this is not base64 <&>")  # written by something else entirely
    raw.send_message(base64.b64encode(hostile).decode())  # unsigned pickle
    raw.send_message(base64.b64encode(Signer(os.urandom(32)).sign(hostile)).decode())  # key?
    raw.send_message(base64.b64encode(signer.sign(hostile)[:-1] + b"x").decode())  # tampered
    received = queues.receive(name, 10, 30, 5)
    while len(received) < 4:
        received += queues.receive(name, 10, 30, 5)
    with caplog.at_level(logging.WARNING):
        assert [decode_message(signer, None, m.body) for m in received] == [[]] * 4
    assert not trap.exists(), "a message we did not sign was unpickled"
    assert caplog.text.count("dropped a queue message") == 4
    queues.delete(name, [m.receipt for m in received])  # as the map feeder does with them
    assert queues.receive(name, 10, 1, 0) == []


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def test_a_visibility_update_keeps_the_callers_receipt_working(
    queue: tuple[StorageQueueTaskQueue, str],
) -> None:
    """Storage Queue gives a message a new pop receipt on each update; the caller keeps the
    receipt it received, extends it twice (as the map feeder does), then deletes it."""
    queues, name = queue
    queues.send_batch(name, [b"task"])
    (message,) = queues.receive(name, 1, 2, 5)
    queues.change_visibility(name, [message.receipt], 30)
    queues.change_visibility(name, [message.receipt], 1)  # back in a second unless deleted
    queues.delete(name, [message.receipt])
    assert queues.receive(name, 1, 1, 3) == [], "deleted with the receipt it was received with"


def test_a_stale_receipt_is_harmless(azurite: StorageAccount) -> None:
    """A consumer whose message was received again by another (its visibility ran out) may
    still delete or extend it: nothing happens, no error, and the other keeps the message."""
    first, second = (StorageQueueTaskQueue(azurite.queue_service()) for _ in range(2))
    name = f"q-{uuid.uuid4().hex[:8]}"
    first.create_queue(name)
    first.send_batch(name, [b"task"])
    (old,) = first.receive(name, 1, 1, 5)
    (new,) = second.receive(name, 1, 30, 5)  # after the first's second ran out
    assert (old.receive_count, new.receive_count) == (1, 2)
    first.change_visibility(name, [old.receipt], 0)
    first.delete(name, [old.receipt])
    second.change_visibility(name, [new.receipt], 1)  # still the second's: back in a second
    (again,) = second.receive(name, 1, 30, 5)
    assert again.body == b"task" and again.receive_count == 3
    second.delete(name, [again.receipt])
    assert second.receive(name, 1, 1, 2) == []


# --- Azure Table: ETag conflicts -------------------------------------------------------------
def test_an_etag_conflict_is_retried_not_lost(
    table: AzureTableAllocationTable, other_client: AzureTableAllocationTable
) -> None:
    _launch(table, "i-1", [])
    stale = table._get(INSTANCE, row_key("i-1"))
    assert other_client.allocate_on_existing(["b1"], ONE, "c2", "d") == {"b1": "i-1"}
    with pytest.raises(ResourceModifiedError):  # the write below really meets a conflict
        table._client.update_entity(
            {"PartitionKey": INSTANCE, "RowKey": row_key("i-1"), "cpu_free": 4.0},
            mode=UpdateMode.MERGE,
            etag=etag_of(stale),
            match_condition=MatchConditions.IfNotModified,
        )
    written = table._try_allocate(stale, "a1", ONE, "c1", "d", 0.0)
    assert written is not None, "the conflict made the placement fail"
    record = table.get_instance("i-1")
    assert record is not None and (record.cpu_free, record.running_jobs) == (2, 2)
    assert {a.job_id for a in table.list_allocations("i-1")} == {"a1", "b1"}
    # freeing with an entity read before another client's write: retried too
    stale = table._get(INSTANCE, row_key("i-1"))
    assert other_client.allocate_on_existing(["b2"], ONE, "c2", "d") == {"b2": "i-1"}
    assert table._deallocate(stale, "a1", "done") is not None
    assert {a.job_id for a in table.list_allocations("i-1")} == {"b1", "b2"}
    assert table.get_instance("i-1").cpu_free == 2  # type: ignore[union-attr]
    assert table.finished_job("a1")["outcome"] == "done"  # type: ignore[index]


def test_modify_calls_its_change_again_after_each_conflict(
    table: AzureTableAllocationTable, other_client: AzureTableAllocationTable
) -> None:
    """Each retry re-reads the entity and decides again on what the other client wrote."""
    _launch(table, "i-1", [])
    stale = table._get(INSTANCE, row_key("i-1"))
    other_client.set_prevent_further_allocation("i-1")
    seen: list[bool] = []

    def change(entity: Any) -> dict[str, Any] | None:
        seen.append(bool(entity["prevent_further_allocation"]))
        return None if entity["prevent_further_allocation"] else {"cpu_free": 0.0}

    assert modify(table._client, stale, change) == (None, None)
    assert seen == [False, True], "decided once on the stale entity, once on the fresh one"
    assert table.get_instance("i-1").cpu_free == 4  # type: ignore[union-attr]


def test_racing_launches_never_pass_the_launch_limit(
    table: AzureTableAllocationTable, azurite: StorageAccount
) -> None:
    """Eight clients launch 4-CPU instances at once under a 16-CPU limit: the limit's row
    and the instances are written in one transaction, checked by ETag."""
    clients = [AzureTableAllocationTable(azurite.table_service(), table._table) for _ in range(8)]
    results: list[bool] = [False] * 8
    start = threading.Barrier(8)

    def launch(i: int) -> None:
        start.wait()
        results[i] = clients[i].allocate_on_new_instance(
            f"i-{i}", MEDIUM, [f"j{i}"], ONE, f"c{i}", "d", 16, 1000
        )

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 4 and len(table.list_instances()) == 4
    assert table._get(INSTANCE, LIMITS_ROW)["cpu_used"] == 16
    removing = [
        threading.Thread(target=clients[i].remove_instance, args=(f"i-{i}", "terminated"))
        for i in range(8)
        if results[i]
    ]
    for thread in removing:
        thread.start()
    for thread in removing:
        thread.join()
    assert table.list_instances() == [] and len(table.job_history()) == 4
    assert table._get(INSTANCE, LIMITS_ROW)["cpu_used"] == 0


# --- keys and values Azure Table restricts ---------------------------------------------------
def test_ids_azure_forbids_in_keys_work(table: AzureTableAllocationTable) -> None:
    """Azure forbids ``/ \\ # ?`` and control characters in keys; job keys are the user's."""
    key = "nightly/1#a?b\\c é\t~21"
    assert table.claim_job_key(key, "job/1") is None
    assert table.claim_job_key(key, "job/2") == "job/1"
    assert table.claim_job_key("nightly/1#a?b\\c é\t!21", "job/3") is None  # no collision
    assert table.find_job_key("job/1")["job_key"] == key  # type: ignore[index]
    assert table.forget_job_key(key) and not table.forget_job_key(key)
    _launch(table, "vm/1#?", ["job #1"])
    assert [a.job_id for a in table.list_allocations("vm/1#?")] == ["job #1"]
    assert row_key("!limits") != LIMITS_ROW


def test_long_values_are_split_and_read_back(table: AzureTableAllocationTable) -> None:
    """Hundreds of jobs on one instance pass Azure's 64 KiB per string property."""
    jobs = [f"job-{i:04d}" for i in range(300)]
    big = InstanceType("t.big", 400, 800, 1.0)
    assert table.allocate_on_new_instance("i-big", big, jobs, ONE, "c1", "x" * 200, 400, 800)
    entity = table._get(INSTANCE, row_key("i-big"))
    assert entity["running_jobs_parts"] > 2
    assert len(table.list_allocations("i-big")) == 300
    table.register_instance("i-big", "127.0.0.1:1", 1)
    assert table.deallocate("job-0000", "done")
    assert len(table.list_allocations("i-big")) == 299
    # a shorter value merged over a longer one: stale parts are ignored
    written, _ = modify(table._client, entity, lambda e: put_json({}, "running_jobs", {}))
    assert written is not None
    assert get_json(table._get(INSTANCE, row_key("i-big")), "running_jobs", None) == {}


def test_bad_names_are_refused_with_the_rule(azurite: StorageAccount) -> None:
    with pytest.raises(BadInputError, match="letters and digits"):
        AzureTableAllocationTable(azurite.table_service(), "meadowrun-table")
    with pytest.raises(BadInputError, match="3 to 24 lower-case letters and digits"):
        StorageAccount.named("My_Account")
