"""Priority: meadowgrid's raffle among jobs waiting for room at the launch limit, across the
clients of a cloud, on the local cloud's SQLite table and on DynamoDB (moto's server)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import priority_clients
import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.client.allocation import allocate
from meadowrun_core.local.backend import LocalBackend
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.seams.raffle import RaffleEntry, my_turn, raffle_winner
from tests.waiting import local_table

ONE_CPU = mr.Resources(logical_cpu=1, memory_gb=0.5)
BAD = "priority must be a positive, finite number"


def _binomial(n: int, p: float) -> list[float]:
    return [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]


def _acceptance_band(n: int, p: float, tail: float = 5e-5) -> tuple[int, int]:
    """The widest ``lo..hi`` such that each tail of Binomial(n, p) outside it is < ``tail``."""
    pmf = _binomial(n, p)
    lo, below = 0, 0.0
    while below + pmf[lo] < tail:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] < tail:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def _chance_within(n: int, p: float, band: tuple[int, int]) -> float:
    return sum(_binomial(n, p)[band[0] : band[1] + 1])


def _soon(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """``wait_until`` polling every 5 ms: a trial lasts a tenth of a second."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@pytest.mark.parametrize("priority", [0, -1.0, float("nan"), float("inf"), "high", True, None])
def test_a_bad_priority_is_refused_before_anything_launches(
    local_cloud: Path, priority: Any
) -> None:
    with pytest.raises(mr.BadInputError, match=BAD):
        mr.run_function(workloads.double, args=(1,), priority=priority)
    with pytest.raises(mr.BadInputError, match=BAD):
        mr.run_command(["true"], priority=priority)
    with pytest.raises(mr.BadInputError, match=BAD):
        mr.run_map(workloads.double, [1, 2], priority=priority)
    with pytest.raises(mr.BadInputError, match=BAD):
        list(mr.run_map_as_completed(workloads.double, [1, 2], priority=priority))
    with pytest.raises(mr.BadInputError, match=BAD):
        asyncio.run(mr.run_function_async(workloads.double, args=(1,), priority=priority))
    with pytest.raises(mr.BadInputError, match=BAD):
        asyncio.run(mr.run_command_async(["true"], priority=priority))
    with pytest.raises(mr.BadInputError, match=BAD):
        asyncio.run(mr.run_map_async(workloads.double, [1, 2], priority=priority))
    assert local_table(local_cloud).list_instances() == []


def test_the_draw_is_proportional_to_priority() -> None:
    """Over many rounds, each live entry wins in proportion to its priority; expired entries
    never win; a lone waiter always may try."""
    entries = [RaffleEntry("a", 1.0, math.inf), RaffleEntry("b", 3.0, math.inf)]
    rounds = 4000
    wins = sum(raffle_winner(entries, float(r)) == "b" for r in range(rounds))
    # 3000 expected, standard deviation 27: 5 deviations either way
    assert 2863 <= wins <= 3137, wins
    gone = [RaffleEntry("a", 1.0, 5.0), RaffleEntry("b", 1e-6, math.inf)]
    assert all(raffle_winner(gone, float(r)) == "b" for r in range(6, 50))
    assert my_turn([], "t", 1.0, 0.0)
    assert my_turn([RaffleEntry("t", 1.0, math.inf)], "t", 1.0, 0.0)


def test_waiting_jobs_get_room_in_proportion_to_priority(local_cloud: Path) -> None:
    """One slot (a 1-CPU launch limit) and three clients: this process and two client
    processes of the same ``MEADOWRUN_HOME``. In each trial a job of this process holds the
    slot while a priority-1 job of one client and a priority-3 job of the other wait (both
    entered in the raffle); when it is let go, the raffle picks who starts next: priority 3
    should win 3 trials in 4. The clients swap priorities every trial, so a client that is
    merely faster cannot pass for priority. The band of wins accepted fails a correct
    raffle with probability < 1e-4 and passes one that ignores priority (wins ~
    Binomial(n, 1/2)) with probability < 0.01 (both computed below)."""
    trials, low, high = 160, 1.0, 3.0
    band = _acceptance_band(trials, high / (low + high))
    assert 1 - _chance_within(trials, high / (low + high), band) < 1e-4
    assert _chance_within(trials, 0.5, band) < 0.01
    host = mr.AllocLocalInstance(max_cpu=1)
    table = local_table(local_cloud)
    me = mr.api.current_client_id()
    go = local_cloud / "go"
    go.touch()  # the waiters' own jobs end at once
    spawn = multiprocessing.get_context("spawn")
    high_wins = 0
    with (
        ProcessPoolExecutor(1, mp_context=spawn) as client_a,
        ProcessPoolExecutor(1, mp_context=spawn) as client_b,
        ThreadPoolExecutor(1) as holder,
    ):
        for client in (client_a, client_b):  # started and warm before the first trial
            client.submit(priority_clients.start_of_one_job, 1.0, str(go), 1.0).result(60)
        for trial in range(trials):
            release = local_cloud / f"release-{trial}"
            held = holder.submit(
                mr.run_function,
                workloads.start_time_after_waiting_for,
                args=(str(release),),
                host=host,
                resources=ONE_CPU,
            )
            # (this process's own allocation: a client's last call may still hold its room a
            # moment, client/held_rooms.py)
            _soon(
                lambda: [a.client_id for a in table.list_allocations()] == [me],
                "the holder to get the slot",
            )
            priority_a, priority_b = (high, low) if trial % 2 == 0 else (low, high)
            started_a = client_a.submit(priority_clients.start_of_one_job, priority_a, str(go), 1.0)
            started_b = client_b.submit(priority_clients.start_of_one_job, priority_b, str(go), 1.0)
            _soon(
                lambda: sorted(e.priority for e in table.raffle_entries()) == [low, high],
                "both clients' jobs to wait in the raffle",
            )
            release.touch()
            held.result(60)
            a_first = started_a.result(60) < started_b.result(60)
            high_wins += a_first == (priority_a == high)
    assert band[0] <= high_wins <= band[1], (
        f"priority {high:g} started first in {high_wins} of {trials} trials against "
        f"priority {low:g} (expected ~{trials * 3 // 4}, accepted {band[0]}..{band[1]})"
    )
    assert table.raffle_entries() == []  # every entry left with its job


def test_a_killed_waiters_entry_lapses_and_blocks_no_one(local_cloud: Path) -> None:
    """A client process waiting in the raffle with an overwhelming priority is SIGKILLed:
    its entry, no longer renewed, wins every round until it lapses, then the next job gets
    the room; it holds no one back beyond its expiry."""
    host = mr.AllocLocalInstance(max_cpu=1)
    table = local_table(local_cloud)
    go, release = local_cloud / "go", local_cloud / "release"
    go.touch()
    with ThreadPoolExecutor(1) as holder:
        held = holder.submit(
            mr.run_function,
            workloads.start_time_after_waiting_for,
            args=(str(release),),
            host=host,
            resources=ONE_CPU,
        )
        _soon(lambda: len(table.list_allocations()) == 1, "the holder to get the slot")
        doomed = multiprocessing.get_context("spawn").Process(
            target=priority_clients.start_of_one_job, args=(1e9, str(go), 1.0)
        )
        doomed.start()
        _soon(lambda: [e.priority for e in table.raffle_entries()] == [1e9], "the doomed entry")
        doomed.kill()
        doomed.join(10)
        (entry,) = table.raffle_entries()
        release.touch()
        held.result(60)
    handle = mr.run_function(
        workloads.start_time_after_waiting_for,
        args=(str(go),),
        host=host,
        resources=ONE_CPU,
        priority=1.0,
        wait_for_result=False,
    )
    try:
        started = handle.result(timeout=30)  # bounded: an entry that never lapsed would hang
    finally:
        handle.cancel()
    assert entry.expires - 1.0 <= started <= entry.expires + 5.0, (started, entry.expires)
    assert table.raffle_entries() == []


def test_the_raffle_decides_the_same_on_dynamodb(local_cloud: Path, moto_endpoint: str) -> None:
    """The client's own ``allocate`` on a DynamoDB table (moto's server over HTTP): two
    clients, each with its own connection to the table, wait with priorities 1 and 9 for the
    one slot of an instance while a third holds it; when it is freed, the priority-9 job
    should get it 9 times in 10. The instance provider is the local cloud's, never asked to
    launch: the instance fills the 1-CPU launch limit. The band fails a correct raffle with
    probability < 1e-4 and passes one that ignores priority with probability < 0.01."""
    trials, low, high = 50, 1.0, 9.0
    band = _acceptance_band(trials, high / (low + high))
    assert 1 - _chance_within(trials, high / (low + high), band) < 1e-4
    assert _chance_within(trials, 0.5, band) < 0.01
    name = f"alloc-{uuid.uuid4().hex}"

    def connect() -> DynamoDbAllocationTable:
        return DynamoDbAllocationTable(
            boto3.client(
                "dynamodb",
                region_name="us-east-1",
                endpoint_url=moto_endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
            name,
        )

    table = connect()
    table.create()
    local = LocalBackend.open(mr.AllocLocalInstance(max_cpu=1))
    client_a, client_b = (replace(local, table=connect()) for _ in range(2))
    one_cpu = InstanceType("one-cpu", 1, 2, 0.01)
    assert table.allocate_on_new_instance("i-one", one_cpu, ["boot"], ONE_CPU, "c", "d", 1, 2)
    table.register_instance("i-one", "127.0.0.1:9", 1)  # never reached: nothing runs here
    table.deallocate("boot", "done")

    async def run_trials() -> int:
        high_wins = 0
        for trial in range(trials):
            await asyncio.to_thread(table.heartbeat, "i-one")
            hold = f"hold-{trial}"
            placed = await asyncio.to_thread(
                table.place_on_existing, [hold], ONE_CPU, "holder", "holds the slot"
            )
            assert list(placed) == [hold]
            priority_a, priority_b = (high, low) if trial % 2 == 0 else (low, high)
            waiting_a = asyncio.create_task(
                allocate(client_a, ONE_CPU, 1, "client-a", "waits", priority=priority_a)
            )
            waiting_b = asyncio.create_task(
                allocate(client_b, ONE_CPU, 1, "client-b", "waits", priority=priority_b)
            )
            while len(await asyncio.to_thread(table.raffle_entries)) < 2:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(table.deallocate, hold, "done")
            done, _ = await asyncio.wait(
                {waiting_a, waiting_b}, timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            assert len(done) == 1, "one slot, one job placed"
            first = done.pop()
            high_wins += (first is waiting_a) == (priority_a == high)
            for waiting in (first, waiting_b if first is waiting_a else waiting_a):
                (placement,) = await asyncio.wait_for(waiting, 30)  # then the other's turn
                await asyncio.to_thread(table.deallocate, placement.job_id, "done")
        return high_wins

    high_wins = asyncio.run(run_trials())
    assert band[0] <= high_wins <= band[1], (
        f"priority {high:g} got the slot first in {high_wins} of {trials} trials against "
        f"priority {low:g} (accepted {band[0]}..{band[1]})"
    )
    assert table.raffle_entries() == []
