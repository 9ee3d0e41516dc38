"""Following one job on its instance: starting it (or attaching), its events until the final
one, and decoding what that final event stands for."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import queue
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from meadowrun_core import frames
from meadowrun_core.backend import Backend
from meadowrun_core.client import held_rooms
from meadowrun_core.client.allocation import Placement, allocate, capacity_signal
from meadowrun_core.client.job_output import OutputLogger
from meadowrun_core.client.memory_retry import more_memory, outcome_of, ran_out_of_memory
from meadowrun_core.client.payload import put_blob, repair
from meadowrun_core.client.results import OutOfMemoryError, raise_for_final, retry_reason
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.exceptions import Attempt, BadInputError, CommandResult, JobTimeoutError
from meadowrun_core.job_context import ForwardedLog
from meadowrun_core.resources import Resources
from meadowrun_core.seams.object_store import DamagedObjectError, get_verified
from meadowrun_core.seams.spill import FRAME_INLINE_BYTES

log = logging.getLogger(__name__)

# A run frame's fields less its ``type`` and ``job_id`` (``frames.Run``), as ``jobs.py`` and
# ``map_driver`` build it: ``run_on_instance`` completes it for the placement.
RunFields = dict[str, Any]


async def run_on_instance(
    runtime: ClientRuntime,
    backend: Backend,
    placement: Placement,
    header: Mapping[str, Any],
    blob: bytes = b"",
    on_output: Callable[[str, bytes], None] | None = None,
    attach: bool = False,
    control: JobChannel | None = None,
) -> tuple[frames.Final, bytes]:
    """Start a job on its instance (or ``attach`` to a running one) and follow it to its final
    event. Cancelling a started job's follower cancels the job (unless its handle only stopped
    following); an attached follower just stops following."""
    assert placement.instance.address is not None
    try:
        conn = await runtime.connection(placement.instance, backend)
    except asyncio.CancelledError:
        if not attach:  # cancelled before the job was sent: free its room
            backend.table.deallocate(placement.job_id, "cancelled before start")
        raise
    except OSError as exc:
        backend.table.deallocate(placement.job_id, "instance unreachable")
        reason = f"cannot reach instance {placement.instance.instance_id}: {exc}"
        return _disconnected(placement, reason), b""
    follower = uuid.uuid4().hex if attach else ""
    events = conn.register(placement.job_id, follower)
    logger = OutputLogger(placement.job_id)
    frame: frames.ClientFrame
    if attach:
        frame = frames.Attach(type="attach", job_id=placement.job_id, follower=follower)
    else:  # the job's run frame, as job_prepare / map_driver built it (``frames.Run``)
        frame = cast(frames.Run, {**header, "type": "run", "job_id": placement.job_id})
    try:
        conn.send(frame, blob)
        if control is not None:
            control.placement, control.backend = placement, backend
            if control.started is not None:
                control.started.set()
        while True:
            event, payload = await events.get()
            if event["type"] == "output":
                (on_output or logger.write)(event["stream"], payload)
            elif event["type"] == "report":
                value = pickle.loads(payload)
                if isinstance(value, ForwardedLog):
                    logger.log_record(value)
                elif control is not None and control.reports is not None:
                    control.reports.put(value)
            elif event["type"] == "final":
                if not attach:
                    await capacity_signal(backend).notify()
                return event.copy(), payload
            elif event["type"] == "disconnected":
                reason = f"instance {placement.instance.instance_id} went away"
                return _disconnected(placement, reason), b""
    except asyncio.CancelledError:
        if not attach and (control is None or control.cancel_job_with_follower):
            conn.send(
                frames.Cancel(type="cancel", job_id=placement.job_id, reason="cancelled by caller")
            )
        raise
    finally:
        logger.flush()
        conn.unregister(placement.job_id, events)


def _disconnected(placement: Placement, message: str) -> frames.Final:
    """The final event of a job this client lost touch with (its agent sent none)."""
    return frames.Final(
        type="final", job_id=placement.job_id, status="disconnected", message=message
    )


@dataclass
class JobChannel:
    """Shared between a handle (any thread) and the coroutine running its job: where the job
    was placed, values it reported, and whether cancelling the follower cancels the job."""

    cancel_job_with_follower: bool = True
    placement: Placement | None = None
    backend: Backend | None = None
    attempts: tuple[Attempt, ...] = ()  # with retry_with_more_memory: each attempt so far
    # set by ``follow`` (a JobHandle follows the job): a blocking call needs neither, and
    # making them was a fiftieth of a warm call
    started: threading.Event | None = None
    reports: queue.Queue[Any] | None = None

    @property
    def has_handle(self) -> bool:
        """Whether a JobHandle follows the job (then its room is never held)."""
        return self.started is not None

    def follow(self) -> tuple[threading.Event, queue.Queue[Any]]:
        """For a JobHandle, before the job is submitted: when it starts, and its reports."""
        if self.started is None or self.reports is None:
            self.started, self.reports = threading.Event(), queue.Queue()
        return self.started, self.reports


@dataclass(frozen=True)
class Submission:
    """Who owns a job (the calling client, or when detached a lease of its own), and how it
    is placed."""

    client_id: str
    job_key: str | None = None
    control: JobChannel = field(default_factory=JobChannel)
    priority: float = 1.0  # its weight in the raffle for room (seams/raffle.py)
    retry_with_more_memory: bool = False  # an attempt out of memory: the next gets twice


async def run_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    resources: Resources,
    description: str,
    header: RunFields,
    blob: bytes = b"",
    redeploy: Callable[[], frames.DeploymentJson] | None = None,
    attempts: int = 1,
) -> Any:
    """Allocate, run and decode one job, up to ``attempts`` times while an attempt fails in a
    way running it again may mend (``retry_reason``); the last attempt's outcome counts."""
    if len(blob) > FRAME_INLINE_BYTES:  # too large for a frame: by reference
        key = await asyncio.to_thread(put_blob, backend, backend.signer.sign(blob))
        header, blob = {**header, "arguments_key": key}, b""
    grow = submission.retry_with_more_memory
    for attempt in range(1, attempts + 1):
        final, payload, header = await _run_attempt(
            runtime, backend, submission, resources, description, header, blob, redeploy
        )
        if grow:
            done = Attempt(attempt, resources.memory_gb, outcome_of(final))
            submission.control.attempts = (*submission.control.attempts, done)
        why = retry_reason(final, payload) if attempt < attempts else None
        if why is None:
            break
        if grow and ran_out_of_memory(final):
            bigger = await asyncio.to_thread(more_memory, backend, resources)
            if bigger is None:
                log.warning(
                    "%s: out of memory with %g GB, the most an instance type here offers; "
                    "not running it again",
                    description,
                    resources.memory_gb,
                )
                break
            resources = bigger
            why += f"; the next attempt gets {resources.memory_gb:g} GB"
        log.info(
            "%s: attempt %d of %d failed (%s); running it again",
            description,
            attempt,
            attempts,
            why,
        )
    try:
        return decode_final(final, await final_payload(backend, final, payload))
    except JobTimeoutError as exc:
        raise JobTimeoutError(f"{description}: {exc}") from None
    except OutOfMemoryError as exc:
        if len(submission.control.attempts) < 2:
            raise
        tried = ", ".join(f"{a.memory_gb:g} GB" for a in submission.control.attempts)
        raise OutOfMemoryError(f"{exc} (attempts with {tried})") from None


async def _run_attempt(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    resources: Resources,
    description: str,
    header: RunFields,
    blob: bytes,
    redeploy: Callable[[], frames.DeploymentJson] | None,
) -> tuple[frames.Final, bytes, RunFields]:
    """One attempt: its final event, payload and header (with the code uploaded again if
    it had to be). A job that could not load because a blob in the store was damaged is run
    once more after this client replaced the blob."""
    repaired: set[str] = set()
    # a blocking call's room may be held for this client's next call of its shape
    holding = (
        header["kind"] == "function"
        and submission.job_key is None
        and not submission.control.has_handle
        and held_rooms.may_hold(backend)
    )
    shape = held_rooms.shape_of(resources, description)
    while True:
        placement = held_rooms.take(backend, shape) if holding else None
        if placement is None:
            placement = await _allocate(backend, submission, resources, description)
            hold = holding and held_rooms.back_to_back(backend, shape)
            run_header = {**header, "hold": held_rooms.HOLD_SECONDS} if hold else header
        else:  # the room this client's previous call left held
            run_header = {**header, "hold": held_rooms.HOLD_SECONDS, "reuse": True}
        if submission.job_key is not None:
            header = run_header = {**header, "job_key": submission.job_key}
            await asyncio.to_thread(
                backend.table.set_job_key_instance,
                submission.job_key,
                placement.job_id,
                placement.instance.instance_id,
            )
        final, payload = await run_on_instance(
            runtime, backend, placement, run_header, blob, control=submission.control
        )
        if final.get("hold_lapsed"):
            continue  # the agent gave the held room back meanwhile: place the call anew
        if holding:
            held_rooms.ended(backend, shape)
        if final.get("held"):
            conn = await runtime.connection(placement.instance, backend)
            held_rooms.keep(
                backend,
                shape,
                placement,
                conn,
                final["status"],
                capacity_signal(backend).waiting,
            )
        damaged = damaged_object(final, payload)
        if damaged is None or submission.job_key is not None or damaged in repaired:
            return final, payload, header
        # a blob this client uploaded was damaged in the store: replace it and run again
        repaired.add(damaged)
        if not await asyncio.to_thread(repair, backend, damaged):
            return final, payload, header
        if redeploy is not None:  # the code was uploaded again: its manifest may differ
            header = {**header, "deployment": await asyncio.to_thread(redeploy)}


async def _allocate(
    backend: Backend, submission: Submission, resources: Resources, description: str
) -> Placement:
    """Room for one job; a keyed job that gets none records why under its key."""
    try:
        (placement,) = await allocate(
            backend,
            resources,
            1,
            submission.client_id,
            description,
            priority=submission.priority,
        )
    except BaseException as exc:
        if submission.job_key is not None:
            not_started = frames.Final(
                type="final", job_id="-", status="error", message=f"not started: {exc!r}"
            )
            await asyncio.to_thread(
                backend.table.record_job_final, submission.job_key, json.dumps(not_started), None
            )
        raise
    return placement


def damaged_object(final: frames.JobOutcome, payload: bytes) -> str | None:
    """The key of the stored blob whose damage made a job fail to load, if that is why
    (from the pickled exception, or the text of a map slot's failure)."""
    if final.get("status") != "failed" or final.get("stage") != "load":
        return None
    try:
        original = pickle.loads(payload)[0] if payload else None
    except Exception:
        original = None
    if isinstance(original, DamagedObjectError):
        return original.key
    found = _DAMAGED.search(str(final.get("message", "")))
    return found.group(1) if found else None


_DAMAGED = re.compile(r"DamagedObjectError: object ([0-9a-f]{64})")


async def final_payload(backend: Backend, final: frames.JobOutcome, payload: bytes) -> bytes:
    """A job's result, fetched from the store when it was too large for a frame."""
    if final.get("result_key"):
        return await asyncio.to_thread(
            get_verified, backend.store, backend.signer, str(final["result_key"])
        )
    return payload


def decode_final(final: frames.Final, payload: bytes) -> Any:
    """The value a job's final event stands for, or the exception it raises."""
    status = final["status"]
    if status == "succeeded":
        return pickle.loads(payload)
    if status == "exited":
        return CommandResult(final["return_code"], final["job_id"])
    if status == "failed_to_start":
        raise BadInputError(final["message"])
    raise_for_final(final, payload)
