"""Placing jobs: existing instances with room first, then the cheapest new instance that fits,
never beyond the cloud's launch limit. Cloud-neutral: it only uses the seams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from meadowrun_core.backend import Backend, CapacityError
from meadowrun_core.client import held_rooms
from meadowrun_core.exceptions import MeadowrunError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    LAUNCH_GRACE_SECONDS,
    InstanceRecord,
    instance_suits,
    room_fits,
)
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.seams.raffle import RAFFLE_ENTRY_SECONDS, my_turn

log = logging.getLogger(__name__)
T = TypeVar("T")

LAUNCH_TIMEOUT_SECONDS = LAUNCH_GRACE_SECONDS


@dataclass(frozen=True)
class Placement:
    job_id: str
    instance: InstanceRecord


def check_satisfiable(backend: Backend, resources: Resources) -> None:
    """Fail at once, naming the largest instance type, if nothing could ever fit."""
    backend.provider.check_satisfiable(resources)


class CapacitySignal:
    """Wakes clients waiting for room as soon as one of this process's jobs ends (the agent
    has freed its allocation by then); room freed by other clients is found by polling."""

    def __init__(self) -> None:
        self._condition: asyncio.Condition | None = None
        self._waiting = 0  # (every job's end notifies: nothing to do while nobody waits)

    def _get(self) -> asyncio.Condition:
        if self._condition is None:
            self._condition = asyncio.Condition()
        return self._condition

    async def wait(self, timeout: float) -> None:
        condition = self._get()
        async with condition:
            self._waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(condition.wait(), timeout)
            finally:
                self._waiting -= 1

    @property
    def waiting(self) -> bool:
        return self._waiting > 0

    async def notify(self) -> None:
        if not self._waiting:
            return
        condition = self._get()
        async with condition:
            condition.notify_all()


_signals: dict[str, CapacitySignal] = {}


def capacity_signal(backend: Backend) -> CapacitySignal:
    signal = _signals.get(backend.key)
    if signal is None:
        signal = _signals[backend.key] = CapacitySignal()
    return signal


async def allocate(
    backend: Backend,
    resources: Resources,
    count: int,
    client_id: str,
    description: str,
    minimum: int | None = None,
    job_prefix: str = "job",
    priority: float = 1.0,
) -> list[Placement]:
    """Allocate ``count`` jobs; returns once at least ``minimum`` (default all) are placed.
    While jobs wait for room, ``priority`` is this request's weight in the raffle that picks
    the next to get it (seams/raffle.py).

    If cancelled or failing midway, everything it allocated is freed again."""
    check_satisfiable(backend, resources)
    held_rooms.give_back_all(backend)  # this client's held rooms are room for this request
    minimum = count if minimum is None else minimum
    placements: list[Placement] = []
    delay = 0.01
    waited_since: float | None = None
    ticket = f"{job_prefix}-{uuid.uuid4().hex[:12]}"
    entered_until = 0.0  # when this request's raffle entry lapses (0: not entered)
    try:
        while True:
            turn = (ticket, priority)
            had_turn = await _place(
                backend, resources, count, client_id, description, job_prefix, placements, turn
            )
            if had_turn and len(placements) >= minimum:
                return placements
            if waited_since is None:
                waited_since = time.monotonic()
                log.info("waiting for capacity: %s is at its limit", backend.description)
            if entered_until - time.time() < RAFFLE_ENTRY_SECONDS / 2:
                entered_until = time.time() + RAFFLE_ENTRY_SECONDS
                await asyncio.to_thread(
                    backend.table.enter_raffle, ticket, priority, client_id, entered_until
                )
            await capacity_signal(backend).wait(delay)
            delay = min(delay * 1.5, 0.25)
    except BaseException:
        for placement in placements:
            await asyncio.to_thread(
                backend.table.deallocate, placement.job_id, "allocation abandoned"
            )
        raise
    finally:
        if entered_until:
            await asyncio.shield(asyncio.to_thread(backend.table.leave_raffle, ticket))


async def _place(
    backend: Backend,
    resources: Resources,
    count: int,
    client_id: str,
    description: str,
    job_prefix: str,
    placements: list[Placement],
    turn: tuple[str, float],
) -> bool:
    """If the raffle gives this request (``turn``: its ticket and priority) its turn, place
    what is still missing of ``count`` jobs on instances with room, then on new instances
    within the launch limit, adding to ``placements``; whether it had its turn."""
    wanted = [f"{job_prefix}-{uuid.uuid4().hex[:12]}" for _ in range(count - len(placements))]

    def place_if_my_turn() -> dict[str, InstanceRecord] | None:
        # both reads in one trip off the event loop's thread (DynamoDB: network calls)
        if not my_turn(backend.table.raffle_entries(), *turn, time.time()):
            return None
        return backend.table.place_on_existing(wanted, resources, client_id, description)

    if backend.instances_are_this_machine:
        # the local cloud's table is a SQLite file here: its two reads and one write take
        # about 0.15 ms, less than handing them to a thread and back (two wake-ups of about
        # 0.05 ms each on the warm round trip); nothing can cancel a call that never yields
        placed = place_if_my_turn()
    else:
        placed = await _undone_if_cancelled(
            place_if_my_turn, lambda done: _free(backend, list(done or ()))
        )
    if placed is None:
        return False
    placements.extend(Placement(job_id, record) for job_id, record in placed.items())
    remaining = [j for j in wanted if j not in placed]
    while remaining:
        launched = await _launch_for(backend, resources, remaining, client_id, description)
        if not launched:
            break
        placements.extend(launched)
        done = {p.job_id for p in launched}
        remaining = [j for j in remaining if j not in done]
    return True


async def _launch_for(
    backend: Backend,
    resources: Resources,
    job_ids: list[str],
    client_id: str,
    description: str,
) -> list[Placement]:
    """New instances for ``job_ids``: the provider's plan (its best choice for the jobs left,
    the room counted down, again) split into one group of jobs per instance, all launched at
    once, so that N instances boot in the time of one (tens of seconds each on a cloud).
    Each group walks its own ranked choices on capacity errors."""
    dead, instances = await asyncio.to_thread(backend.table.remove_dead_instances)
    for instance_id in dead:
        log.warning("instance %s stopped heartbeating; removed it and its allocations", instance_id)
    room_cpu = backend.max_cpu - sum(i.cpu_total for i in instances)
    room_mem = backend.max_memory_gb - sum(i.memory_total for i in instances)
    plans: list[tuple[list[tuple[InstanceType, int]], list[str]]] = []
    pending = list(job_ids)
    while pending:
        choices = backend.provider.choices(resources, len(pending), room_cpu, room_mem)
        if not choices:
            break
        best, placed = choices[0]
        plans.append((choices, pending[:placed]))
        pending = pending[placed:]
        room_cpu -= best.logical_cpu
        room_mem -= best.memory_gb
    if not plans:
        made_room = await asyncio.to_thread(_make_room, backend, resources, len(job_ids), instances)
        choices = [made_room] if made_room is not None else []
        return await _launch_ladder(backend, choices, resources, job_ids, client_id, description)
    if len(plans) == 1:
        choices, group = plans[0]
        return await _launch_ladder(backend, choices, resources, group, client_id, description)
    log.info(
        "launching %d instances at once for %d job(s)", len(plans), len(job_ids) - len(pending)
    )
    outcomes = await asyncio.gather(
        *(
            _launch_ladder(backend, choices, resources, group, client_id, description)
            for choices, group in plans
        ),
        return_exceptions=True,
    )
    placements = [p for outcome in outcomes if isinstance(outcome, list) for p in outcome]
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        for placement in placements:  # the caller frees only what it was given
            await asyncio.to_thread(
                backend.table.deallocate, placement.job_id, "allocation abandoned"
            )
        raise failures[0]
    return placements


async def _launch_ladder(
    backend: Backend,
    choices: list[tuple[InstanceType, int]],
    resources: Resources,
    job_ids: list[str],
    client_id: str,
    description: str,
) -> list[Placement]:
    """Walk every ranked choice: a capacity or quota error moves on to the next, one that
    holds for a whole market (a spot quota) skips that market's remaining choices. When all
    are refused, the error lists every attempt."""
    attempts: list[str] = []
    skipped_markets: set[str] = set()
    skipped_types: set[tuple[str, str]] = set()  # (market, type) a quota error also refused
    for instance_type, placed in choices:
        market = "spot" if instance_type.is_spot else "on-demand"
        if market in skipped_markets or (market, instance_type.name) in skipped_types:
            attempts.append(f"{instance_type.name} {market}: skipped ({market} quota exhausted)")
            continue
        launched = await _launch_one(
            backend, instance_type, job_ids[:placed], resources, client_id, description
        )
        if isinstance(launched, CapacityError):
            attempts.append(f"{instance_type.name} {market}: {launched}")
            if launched.market_wide:
                skipped_markets.add(market)
            skipped_types.update((market, name) for name in launched.also_refuses)
            continue
        return launched
    if attempts and len(attempts) == len(choices):
        raise ResourcesNotAvailableError(
            f"{backend.description} refused all {len(attempts)} instance type choice(s) "
            "that fit:\n  " + "\n  ".join(attempts)
        )
    return []


async def _launch_one(
    backend: Backend,
    instance_type: InstanceType,
    jobs: list[str],
    resources: Resources,
    client_id: str,
    description: str,
) -> list[Placement] | CapacityError:
    """Launch one instance for ``jobs``: its placements; [] if another client took the room
    first; or, when the cloud has no capacity for the type, why (the caller tries the next)."""
    instance_id = f"i-{uuid.uuid4().hex[:10]}"
    if not await _undone_if_cancelled(
        lambda: backend.table.allocate_on_new_instance(
            instance_id,
            instance_type,
            jobs,
            resources,
            client_id,
            description,
            backend.max_cpu,
            backend.max_memory_gb,
        ),
        lambda reserved: _free(backend, jobs) if reserved else None,
    ):
        return []  # another client took the room first; retry from the top
    log.info("launching %s (%s) for %d job(s)", instance_id, instance_type.name, len(jobs))
    try:
        await backend.provider.launch(instance_id, instance_type)
        record = await _wait_registered(backend, instance_id)
    except CapacityError as exc:
        await asyncio.to_thread(backend.table.remove_instance, instance_id, f"no capacity: {exc}")
        log.warning("no capacity for %s (%s); trying the next choice", instance_type.name, exc)
        return exc
    except BaseException:
        for job_id in jobs:  # cancelled while the instance boots: give its room back
            await asyncio.to_thread(backend.table.deallocate, job_id, "allocation abandoned")
        raise
    return [Placement(j, record) for j in jobs]


async def _undone_if_cancelled(do: Callable[[], T], undo: Callable[[T], None]) -> T:
    """``do()`` in a thread (table calls are network calls); if the caller is cancelled
    meanwhile, the thread still finishes, so what it reserved is given back (``undo``)
    before the cancellation goes on: a cancel never leaks an allocation."""
    work = asyncio.ensure_future(asyncio.to_thread(do))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        done = await work
        await asyncio.to_thread(undo, done)
        raise


def _free(backend: Backend, job_ids: list[str]) -> None:
    for job_id in job_ids:
        backend.table.deallocate(job_id, "allocation abandoned")


def _make_room(
    backend: Backend, resources: Resources, workers: int, instances: list[InstanceRecord]
) -> tuple[InstanceType, int] | None:
    """At the launch limit, terminate idle instances (oldest first) until a fitting type can
    launch, rather than waiting for them to idle out. Each removal is conditional on the
    instance still being idle, so a job placed there meanwhile keeps its instance."""
    used_cpu = sum(i.cpu_total for i in instances)
    used_mem = sum(i.memory_total for i in instances)
    idle = [i for i in instances if i.running_jobs == 0 and i.address is not None]
    if any(
        instance_suits(i, resources)
        and room_fits(resources, i.cpu_free, i.memory_free, i.gpus_free, i.custom_free)
        for i in instances
        if i.address is not None and not i.prevent_further_allocation
    ):
        return None  # room freed up meanwhile: place the job there instead of replacing
    freed_cpu = freed_mem = 0.0
    to_remove: list[InstanceRecord] = []
    for instance in sorted(idle, key=lambda i: i.created):
        to_remove.append(instance)
        freed_cpu += instance.cpu_total
        freed_mem += instance.memory_total
        choices = backend.provider.choices(
            resources,
            workers,
            backend.max_cpu - used_cpu + freed_cpu,
            backend.max_memory_gb - used_mem + freed_mem,
        )
        if choices:
            choice = choices[0]
            removed = [i for i in to_remove if backend.table.remove_instance_if_idle(i.instance_id)]
            if len(removed) < len(to_remove):
                return None  # one got a job meanwhile; the caller retries from the top
            for instance in removed:
                log.info("terminated idle %s to make room", instance.instance_id)
                backend.provider.terminate(instance.instance_id, instance.agent_pid)
            return choice
    return None


async def _wait_registered(backend: Backend, instance_id: str) -> InstanceRecord:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_SECONDS
    delay = 0.005
    # clouds that launch a process here (the local cloud) can tell at once that it died
    exited = getattr(backend.provider, "exited_before_registering", None)
    why = f"did not start within {LAUNCH_TIMEOUT_SECONDS:.0f} s"
    # a remote instance takes seconds to boot: poll its table item less often (each read
    # is a request), off the event loop's thread
    cap = 0.1 if backend.instances_are_this_machine else 0.5
    while time.monotonic() < deadline:
        record = await asyncio.to_thread(backend.table.get_instance, instance_id)
        if record is not None and record.address is not None:
            getattr(backend.provider, "registered", lambda _: None)(instance_id)
            return record
        code = exited(instance_id) if exited is not None else None
        if code is not None:
            why = f"exited (code {code}) before it registered"
            break
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, cap)
    backend.table.remove_instance(instance_id, "failed to start")
    hint = backend.provider.failure_hint(instance_id)
    backend.provider.terminate(instance_id)
    raise MeadowrunError(f"instance {instance_id} {why}; {hint}")
