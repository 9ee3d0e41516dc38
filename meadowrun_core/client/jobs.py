"""Running one job (a function or a command) on an allocated instance."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import pickle
import queue
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from meadowrun_core.backend import Backend
from meadowrun_core.client.allocation import (
    Placement,
    allocate,
    capacity_signal,
    check_satisfiable,
)
from meadowrun_core.client.payload import (
    check_deployment,
    check_resources,
    pickle_arguments,
    prepare_deployment,
    put_blob,
    repair,
    upload_function,
)
from meadowrun_core.client.results import raise_for_final
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment, PreparedDeployment
from meadowrun_core.exceptions import BadInputError, CommandResult, MeadowrunError
from meadowrun_core.hosts import Host
from meadowrun_core.job_context import ForwardedLog
from meadowrun_core.resources import Resources
from meadowrun_core.seams.object_store import DamagedObjectError, get_verified
from meadowrun_core.seams.spill import FRAME_INLINE_BYTES

job_log = logging.getLogger("meadowrun_core.job")
T = TypeVar("T")


class OutputLogger:
    """Logs a job's remote stdout and stderr line by line, prefixed with the job id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        buffered = self._partial.get(stream, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, rest)
        self._partial.clear()

    def _emit(self, stream: str, line: bytes) -> None:
        text = line.decode(errors="replace")
        if not job_log.hasHandlers():
            # logging is not configured here: show the job's output anyway, as a local
            # print would be (and as Ray does), rather than losing it below WARNING
            print(f"[{self.job_id}] {text}", file=sys.stderr if stream == "stderr" else sys.stdout)
            return
        level = logging.INFO if stream == "stdout" else logging.WARNING
        job_log.log(level, "[%s] %s", self.job_id, text)

    def log_record(self, forwarded: ForwardedLog) -> None:
        """A record the job logged, at its own level, on ``meadowrun_core.job.<its logger>``
        (its original time kept): level filters and alerts work as for local records, and
        the client's own handlers for that library (Prefect's API, Dask's) are not fed
        records they already had from the instance."""
        logger = logging.getLogger(f"{job_log.name}.{forwarded.name}")
        if not logger.isEnabledFor(forwarded.levelno):
            return
        message = f"[{self.job_id}] {forwarded.message}"
        if forwarded.exc_text:
            message += "\n" + forwarded.exc_text
        record = logger.makeRecord(
            logger.name,
            forwarded.levelno,
            "(remote)",
            0,
            message,
            (),
            None,
            extra={"job_id": self.job_id, "remote_logger": forwarded.name},
        )
        record.created = forwarded.created
        record.msecs = (forwarded.created % 1) * 1000
        logger.handle(record)


async def run_on_instance(
    runtime: ClientRuntime,
    backend: Backend,
    placement: Placement,
    header: dict[str, Any],
    blob: bytes = b"",
    on_output: Callable[[str, bytes], None] | None = None,
    attach: bool = False,
    control: JobChannel | None = None,
) -> tuple[dict[str, Any], bytes]:
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
        return {
            "type": "final",
            "job_id": placement.job_id,
            "status": "disconnected",
            "message": f"cannot reach instance {placement.instance.instance_id}: {exc}",
        }, b""
    follower = uuid.uuid4().hex if attach else ""
    events = conn.register(placement.job_id, follower)
    logger = OutputLogger(placement.job_id)
    if attach:
        header = {"type": "attach", "job_id": placement.job_id, "follower": follower}
    else:
        header = {**header, "type": "run", "job_id": placement.job_id}
    try:
        conn.send(header, blob)
        if control is not None:
            control.placement, control.backend = placement, backend
            control.started.set()
        while True:
            event, payload = await events.get()
            if event["type"] == "output":
                (on_output or logger.write)(event["stream"], payload)
            elif event["type"] == "report":
                value = pickle.loads(payload)
                if isinstance(value, ForwardedLog):
                    logger.log_record(value)
                elif control is not None:
                    control.reports.put(value)
            elif event["type"] == "final":
                if not attach:
                    await capacity_signal(backend).notify()
                return event, payload
            elif event["type"] == "disconnected":
                return {
                    "type": "final",
                    "job_id": placement.job_id,
                    "status": "disconnected",
                    "message": f"instance {placement.instance.instance_id} went away",
                }, b""
    except asyncio.CancelledError:
        if not attach and (control is None or control.cancel_job_with_follower):
            conn.send(
                {"type": "cancel", "job_id": placement.job_id, "reason": "cancelled by caller"}
            )
        raise
    finally:
        logger.flush()
        conn.unregister(placement.job_id, events)


@dataclass
class JobChannel:
    """Shared between a handle (any thread) and the coroutine running its job: where the job
    was placed, values it reported, and whether cancelling the follower cancels the job."""

    cancel_job_with_follower: bool = True
    placement: Placement | None = None
    backend: Backend | None = None
    started: threading.Event = field(default_factory=threading.Event)
    reports: queue.Queue[Any] = field(default_factory=queue.Queue)


class JobHandle(Generic[T]):
    """A job started with ``wait_for_result=False``: wait on it, poll it, or cancel it."""

    def __init__(
        self,
        future: concurrent.futures.Future[T],
        description: str,
        job_key: str | None = None,
        control: JobChannel | None = None,
    ) -> None:
        self._future = future
        self.description = description
        self.job_key = job_key
        self._control = control or JobChannel()

    @property
    def job_id(self) -> str | None:
        """The job's id (its output lines are prefixed with it) once it has been placed."""
        placement = self._control.placement
        return placement.job_id if placement else None

    @property
    def instance_id(self) -> str | None:
        placement = self._control.placement
        return placement.instance.instance_id if placement else None

    @property
    def instance_address(self) -> str | None:
        """The address of the job's instance (reachable from the client) once placed."""
        placement = self._control.placement
        return placement.instance.address if placement else None

    def reach(self, host: str, port: int) -> tuple[str, int]:
        """An address on this machine for a server the job listens on at ``host:port`` (as
        its instance sees it): the same address on the local cloud, a port forwarded through
        the client's SSH connection on a cloud, so only SSH need be open to the client. The
        job must have started (``wait_started``)."""
        placement, backend = self._control.placement, self._control.backend
        if placement is None or backend is None:
            raise RuntimeError(f"{self.description} has not been placed on an instance yet")
        future = ClientRuntime.get().submit(backend.reach(placement.instance, host, port))
        return future.result()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the job was sent to its instance (True), or the timeout passed."""
        return self._control.started.wait(timeout)

    def next_report(self, timeout: float | None = None) -> Any:
        """The next value the job sent with ``meadowrun_core.report(value)``.

        Raises TimeoutError if none arrives in time."""
        try:
            return self._control.reports.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no report from {self.description} within {timeout} s") from None

    def stop_following(self) -> None:
        """Stop following the job here but leave it running (keyed jobs: another process can
        ``attach_job`` it). The handle then reports cancelled."""
        if self.job_key is None:
            raise ValueError("only a keyed job (job_key=...) can be left running unfollowed")
        self._control.cancel_job_with_follower = False
        self._future.cancel()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        return self._future.result(timeout)

    def cancel(self, wait: bool = False, timeout: float = 10.0) -> bool:
        """Stop the job on its instance (its allocation is freed) and mark the handle
        cancelled. With ``wait=True``, return only once the allocation is gone."""
        cancelled = self._future.cancel()
        placement, backend = self._control.placement, self._control.backend
        if wait and placement is not None and backend is not None:
            table = backend.table
            deadline = time.monotonic() + timeout
            while any(a.job_id == placement.job_id for a in table.list_allocations()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{placement.job_id} still allocated after {timeout} s")
                time.sleep(0.01)
        return cancelled

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<JobHandle {self.description} {state}>"


def decode_final(final: dict[str, Any], payload: bytes) -> Any:
    """The value a job's final event stands for, or the exception it raises."""
    status = final["status"]
    if status == "succeeded":
        return pickle.loads(payload)
    if status == "exited":
        return CommandResult(final["return_code"], final["job_id"])
    if status == "failed_to_start":
        raise BadInputError(final["message"])
    raise_for_final(final, payload)


@dataclass(frozen=True)
class Submission:
    """Who owns a job: the calling client (default) or, when detached, a lease of its own."""

    client_id: str
    job_key: str | None = None
    control: JobChannel = field(default_factory=JobChannel)


async def _run_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    resources: Resources,
    description: str,
    header: dict[str, Any],
    blob: bytes = b"",
    redeploy: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """Allocate, run and decode one job. A job that could not load because a blob in the
    store was damaged is run once more after this client replaced the blob."""
    if len(blob) > FRAME_INLINE_BYTES:  # too large for a frame: by reference
        key = await asyncio.to_thread(put_blob, backend, backend.signer.sign(blob))
        header, blob = {**header, "arguments_key": key}, b""
    repaired: set[str] = set()
    while True:
        try:
            (placement,) = await allocate(backend, resources, 1, submission.client_id, description)
        except BaseException as exc:
            if submission.job_key is not None:
                await asyncio.to_thread(
                    backend.table.record_job_final,
                    submission.job_key,
                    json.dumps(
                        {"status": "error", "job_id": "-", "message": f"not started: {exc!r}"}
                    ),
                    None,
                )
            raise
        if submission.job_key is not None:
            header = {**header, "job_key": submission.job_key}
            await asyncio.to_thread(
                backend.table.set_job_key_instance,
                submission.job_key,
                placement.job_id,
                placement.instance.instance_id,
            )
        final, payload = await run_on_instance(
            runtime, backend, placement, header, blob, control=submission.control
        )
        damaged = damaged_object(final, payload)
        if damaged is None or submission.job_key is not None or damaged in repaired:
            break
        # a blob this client uploaded was damaged in the store: replace it and run again
        repaired.add(damaged)
        if not await asyncio.to_thread(repair, backend, damaged):
            break
        if redeploy is not None:  # the code was uploaded again: its manifest may differ
            header = {**header, "deployment": await asyncio.to_thread(redeploy)}
    return decode_final(final, await final_payload(backend, final, payload))


def damaged_object(final: dict[str, Any], payload: bytes) -> str | None:
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


async def final_payload(backend: Backend, final: dict[str, Any], payload: bytes) -> bytes:
    """A job's result, fetched from the store when it was too large for a frame."""
    if final.get("result_key"):
        return await asyncio.to_thread(
            get_verified, backend.store, backend.signer, str(final["result_key"])
        )
    return payload


async def function_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    function_ref: dict[str, str],
    arguments: bytes,
    resources: Resources,
    deployment: PreparedDeployment,
    description: str,
    redeploy: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    header = {"kind": "function", "deployment": deployment.to_json(), **function_ref}
    return await _run_job(
        runtime, backend, submission, resources, description, header, arguments, redeploy
    )


async def command_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    args: list[str],
    resources: Resources,
    deployment: PreparedDeployment,
    environment: dict[str, str],
    description: str,
) -> CommandResult:
    header = {
        "kind": "command",
        "deployment": deployment.to_json(),
        "args": args,
        "environment": environment,
        "caller_cwd": os.path.realpath(os.getcwd()),
    }
    result: CommandResult = await _run_job(
        runtime, backend, submission, resources, description, header
    )
    return result


DEFAULT_DETACHED_TIMEOUT_SECONDS = 24 * 3600.0


def _submission(
    runtime: ClientRuntime,
    backend: Backend,
    job_key: str | None,
    detach: bool,
    detached_timeout: float | None,
) -> tuple[Submission, bool]:
    """Who owns the job, and whether a job with this key already exists (then attach to it)."""
    if job_key is not None and (not isinstance(job_key, str) or not job_key):
        raise BadInputError(f"job_key must be a non-empty string, got {job_key!r}")
    if detach and job_key is None:
        job_key = f"detached-{uuid.uuid4().hex}"
    if (
        job_key is not None
        and backend.table.claim_job_key(job_key, "pending", runtime.client_id) is not None
    ):
        return Submission(runtime.client_id, job_key), True
    if not detach:
        return Submission(runtime.client_id, job_key), False
    # a detached job has a lease of its own, so it outlives this process (bounded by timeout)
    owner = f"detached-{job_key}"
    timeout = DEFAULT_DETACHED_TIMEOUT_SECONDS if detached_timeout is None else detached_timeout
    backend.table.renew_lease(owner, os.getpid(), timeout)
    return Submission(owner, job_key), False


@dataclass
class PreparedJob:
    runtime: ClientRuntime
    job: Coroutine[Any, Any, Any]
    description: str
    job_key: str | None

    control: JobChannel = field(default_factory=JobChannel)

    def handle(self) -> JobHandle[Any]:
        return JobHandle(
            self.runtime.submit(self.job), self.description, self.job_key, self.control
        )


def prepare_function_job(
    function: Callable[..., Any] | str,
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any] | None,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> PreparedJob:
    """Validate and upload everything, then return the coroutine that runs the job."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    checked_resources = check_resources(resources)
    checked_deployment = check_deployment(deployment)
    check_satisfiable(backend, checked_resources)
    if not isinstance(args, tuple | list):
        raise BadInputError(f"args must be a tuple or list, got {type(args).__name__}")
    arguments = pickle_arguments(tuple(args), dict(kwargs or {}))
    function_ref = upload_function(backend, function)
    prepared = prepare_deployment(backend, checked_deployment)
    description = f"run_function {getattr(function, '__qualname__', function)}"
    return _start_or_follow(
        runtime,
        backend,
        description,
        (job_key, detach, detached_timeout),
        lambda submission: function_job(
            runtime,
            backend,
            submission,
            function_ref,
            arguments,
            checked_resources,
            prepared,
            description,
            lambda: prepare_deployment(backend, checked_deployment).to_json(),
        ),
    )


def prepare_command_job(
    args: str | list[str],
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    environment: dict[str, str] | None,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> PreparedJob:
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    checked_resources = check_resources(resources)
    checked_deployment = check_deployment(deployment)
    check_satisfiable(backend, checked_resources)
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if not argv:
        raise BadInputError("run_command needs a command, got an empty one")
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    prepared = prepare_deployment(backend, checked_deployment)
    description = f"run_command {argv[0]}"
    return _start_or_follow(
        runtime,
        backend,
        description,
        (job_key, detach, detached_timeout),
        lambda submission: command_job(
            runtime, backend, submission, argv, checked_resources, prepared, env, description
        ),
    )


def _start_or_follow(
    runtime: ClientRuntime,
    backend: Backend,
    description: str,
    keying: tuple[str | None, bool, float | None],
    make_job: Callable[[Submission], Coroutine[Any, Any, Any]],
) -> PreparedJob:
    """The job to run, or, when its key already names a job, a follower of that job."""
    submission, exists = _submission(runtime, backend, *keying)
    if exists:
        assert submission.job_key is not None
        follower = follow_keyed_job(runtime, backend, submission.job_key)
        return PreparedJob(runtime, follower, description, submission.job_key)
    job = make_job(submission)
    return PreparedJob(runtime, job, description, submission.job_key, submission.control)


async def follow_keyed_job(
    runtime: ClientRuntime,
    backend: Backend,
    job_key: str,
    on_output: Callable[[str, bytes], None] | None = None,
) -> Any:
    """Follow a keyed job from any process until it ends; return its value or raise.

    Output is replayed from the start (the agent keeps the last MiB). Cancelling this follower
    does not cancel the job (use ``cancel_job``)."""
    delay = 0.01
    while True:
        row = keyed_job_state(backend, job_key)
        if row["status"] == "ended":
            final = json.loads(str(row["final"]))
            if final.get("output_key"):
                logger = OutputLogger(str(final["job_id"]))
                for stream, data in pickle.loads(
                    get_verified(backend.store, backend.signer, str(final["output_key"]))
                ):
                    (on_output or logger.write)(stream, data)
                logger.flush()
            payload_key = row["payload_key"]
            store, signer = backend.store, backend.signer
            payload = get_verified(store, signer, str(payload_key)) if payload_key else b""
            return decode_final(final, await final_payload(backend, final, payload))
        instance = (
            backend.table.get_instance(str(row["instance_id"])) if row["instance_id"] else None
        )
        if instance is None or instance.address is None:
            await asyncio.sleep(delay)  # not placed yet, or its instance is still launching
            delay = min(delay * 1.5, 0.25)
            continue
        placement = Placement(str(row["job_id"]), instance)
        final, payload = await run_on_instance(
            runtime, backend, placement, {}, on_output=on_output, attach=True
        )
        if final["status"] not in ("unknown", "disconnected"):
            return decode_final(final, payload)
        await asyncio.sleep(0.02)  # it ended between our read and attach; read the record


def keyed_job_state(backend: Backend, job_key: str) -> dict[str, object]:
    """The job-key record, first settling jobs that can no longer end on their own: never
    sent (their submitter died first) or on an instance that vanished."""
    row = backend.table.get_job_key(job_key)
    if row is None:
        raise JobNotFoundError(f"no job with key {job_key!r} in this cloud")
    status = row["status"]
    message = None
    if status in ("submitted", "placed"):
        expiry = backend.table.lease_expiry(str(row.get("submitter") or ""))
        if row.get("submitter") and (expiry is None or expiry < time.time()):
            message = "its submitter went away before the job started"
    if (
        status == "running"
        and row["instance_id"]
        and backend.table.get_instance(str(row["instance_id"])) is None
    ):
        message = f"its instance {row['instance_id']} went away"
    if message is not None:
        final = {"status": "died", "job_id": row["job_id"], "message": message}
        backend.table.record_job_final(job_key, json.dumps(final), None)
        row = backend.table.get_job_key(job_key) or row
    return row


class JobNotFoundError(MeadowrunError, KeyError):
    """No job with this key exists in the cloud."""
