"""``meadowrun logs``: a job's output (stdout and stderr as it wrote them), from its instance
while it runs and, for keyed jobs, from the object store after it ended; ``--follow`` streams
it until the job ends.

Where output lives: the agent running a job keeps the last MiB of its output in memory and
replays it to every follower that attaches (``RunningJob.attach``); when a keyed job ends the
agent stores that tail in the cloud's object store (local: ``MEADOWRUN_HOME/objects``; AWS:
the S3 bucket) and records its key in the job's record (``final["output_key"]``). A job
without a key keeps no output once it ended. An instance's own log (local cloud only) is
``MEADOWRUN_HOME/instances/<id>/agent.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pickle
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import typer

from meadowrun_core import frames
from meadowrun_core.cli._common import (
    _CLOUD_HELP,
    _REGION_HELP,
    _check_cloud,
    _guarded,
    _host,
    app,
)
from meadowrun_core.config import meadowrun_home

if TYPE_CHECKING:
    from meadowrun_core.backend import Backend
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.seams.allocation_table import InstanceRecord

Chunks = list[tuple[str, bytes]]
# how often a job that is not running yet is looked at again
_POLL_SECONDS = 0.25
# how long an allocated job its agent does not know yet is asked for again
_UNKNOWN_GRACE_SECONDS = 10.0


def _write(stream: str, data: bytes) -> None:
    typer.echo(data.decode(errors="replace"), nl=False, err=stream == "stderr")


@app.command()
def logs(
    job: str = typer.Argument(
        ...,
        metavar="JOB_ID",
        help="a job id as `meadowrun jobs` lists it, a job key, or (local) an instance id",
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="keep streaming the output until the job ends"
    ),
    lines: int = typer.Option(50, help="for an instance id: how many lines of its agent log"),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """The output of a job: what it wrote to stdout and stderr (the last MiB), printed as it
    was written. With --follow, keep printing until the job ends.

    Running jobs show their output; finished jobs only if they were started with a job_key
    (their output is kept with their result). Given an instance id instead, print the log of
    that instance's agent (local cloud)."""
    _check_cloud(cloud)
    from meadowrun_core.client.runtime import ClientRuntime

    wrap = functools.partial(_guarded, cloud)
    runtime = ClientRuntime.get()
    backend = wrap(lambda: runtime.backend(_host(cloud, region)))
    table = backend.table
    record = wrap(lambda: table.get_job_key(job) or table.find_job_key(job))
    if record is not None:
        status = wrap(lambda: runtime.run(_keyed_job(runtime, backend, record, follow)))
        _footer(job, status)
        return
    allocation = next((a for a in wrap(table.list_allocations) if a.job_id == job), None)
    if allocation is not None:
        instance = wrap(lambda: table.get_instance(allocation.instance_id))
        status = None
        if instance is not None and instance.address is not None:
            following = _unkeyed_job(runtime, backend, job, instance, follow)
            status = wrap(lambda: runtime.run(following))
        _footer(job, status)
        return
    agent_log = meadowrun_home() / "instances" / job / "agent.log"
    if cloud == "local" and agent_log.exists():
        for line in agent_log.read_text(errors="replace").splitlines()[-lines:]:
            typer.echo(line)
        return
    ended = next((r for r in wrap(lambda: table.job_history(10000)) if r["job_id"] == job), None)
    if ended is not None:
        typer.echo(
            f"job {job} ended ({ended['outcome']}); its output was not kept: only jobs started "
            "with a job_key keep their output after they end",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"error: no job {job!r} in the {cloud} cloud (see `meadowrun jobs`)", err=True)
    raise typer.Exit(1)


def _footer(job: str, status: str | None) -> None:
    """How the job ended (or that it still runs), on stderr so stdout is the job's output."""
    if status is None:
        typer.echo(f"[{job} is running]", err=True)
    else:
        typer.echo(f"[{job} {status}]", err=True)


async def _keyed_job(
    runtime: ClientRuntime, backend: Backend, record: dict[str, object], follow: bool
) -> str | None:
    """Print a keyed job's output; return how it ended, or None if it still runs."""
    from meadowrun_core.client.keyed_jobs import kept_final, keyed_job_state

    job_key = str(record["job_key"])
    printed = False
    while True:
        row = await asyncio.to_thread(keyed_job_state, backend, job_key)
        if row["status"] == "ended":
            final = kept_final(row)
            if not printed:
                for stream, data in await asyncio.to_thread(_stored_output, backend, final):
                    _write(stream, data)
            return str(final.get("status"))
        instance = (
            await asyncio.to_thread(backend.table.get_instance, str(row["instance_id"]))
            if row["instance_id"]
            else None
        )
        if instance is not None and instance.address is not None:
            status = await _running_job(runtime, backend, str(row["job_id"]), instance, follow)
            if status is None or status not in ("unknown", "disconnected"):
                return status
            # it ended between our read and the attach (unknown: nothing printed yet) or its
            # instance went away: the next read finds its record
            printed = printed or status == "disconnected"
        elif not follow:
            return "pending: not started yet"
        await asyncio.sleep(_POLL_SECONDS)


async def _unkeyed_job(
    runtime: ClientRuntime, backend: Backend, job_id: str, instance: InstanceRecord, follow: bool
) -> str | None:
    """Print the output of a job without a key that holds an allocation. Its agent may not
    know it yet (allocated, its run frame still on the way): ask again while it is allocated."""
    deadline = time.monotonic() + _UNKNOWN_GRACE_SECONDS
    while True:
        status = await _running_job(runtime, backend, job_id, instance, follow)
        if status != "unknown" or time.monotonic() > deadline:
            return status
        allocations = await asyncio.to_thread(backend.table.list_allocations, instance.instance_id)
        if not any(a.job_id == job_id for a in allocations):
            return "ended"
        await asyncio.sleep(_POLL_SECONDS)


def _stored_output(backend: Backend, final: frames.Final) -> Chunks:
    from meadowrun_core.seams.object_store import get_verified

    key = final.get("output_key")
    if not key:
        return []
    chunks: Chunks = pickle.loads(get_verified(backend.store, backend.signer, str(key)))
    return chunks


async def _running_job(
    runtime: ClientRuntime,
    backend: Backend,
    job_id: str,
    instance: InstanceRecord,
    follow: bool,
) -> str | None:
    """Print a running job's output (the tail the agent kept, then, with ``follow``, live
    until it ends); return how it ended, or None if it still runs."""
    if follow:
        from meadowrun_core.client.allocation import Placement
        from meadowrun_core.client.job_events import run_on_instance

        with _job_log_records_shown():
            ended, _ = await run_on_instance(
                runtime, backend, Placement(job_id, instance), {}, on_output=_write, attach=True
            )
        return ended["status"]
    chunks, status = await _snapshot(runtime, backend, job_id, instance)
    for stream, data in chunks:
        _write(stream, data)
    return status


async def _snapshot(
    runtime: ClientRuntime, backend: Backend, job_id: str, instance: InstanceRecord
) -> tuple[Chunks, frames.JobStatus | None]:
    """The output the agent kept so far, and how the job ended if it did, without waiting
    for more: attach, then send a second attach for a job that does not exist; the agent
    answers frames of a connection in order, so when that one's reply arrives, the whole
    replay has arrived before it."""
    conn = await runtime.connection(instance, backend)
    follower = uuid.uuid4().hex
    barrier_id = f"logs-barrier-{uuid.uuid4().hex}"
    events = conn.register(job_id, follower)
    barrier = conn.register(barrier_id)
    try:
        conn.send(frames.Attach(type="attach", job_id=job_id, follower=follower))
        conn.send(frames.Attach(type="attach", job_id=barrier_id, follower=""))
        await asyncio.wait_for(barrier.get(), timeout=60)
        chunks: Chunks = []
        status: frames.JobStatus | None = None
        while not events.empty():
            event, payload = events.get_nowait()
            if event["type"] == "output":
                chunks.append((event["stream"], payload))
            elif event["type"] == "final":
                status = event["status"]
            elif event["type"] == "disconnected":
                status = "disconnected"
        return chunks, status
    finally:
        conn.unregister(job_id, events)
        conn.unregister(barrier_id, barrier)


@contextlib.contextmanager
def _job_log_records_shown() -> Iterator[None]:
    """Records the job logs arrive on ``meadowrun_core.job.<logger>``: print them too, on
    stderr, while following (unless logging there is configured already)."""
    job_log = logging.getLogger("meadowrun_core.job")
    if job_log.hasHandlers():
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = job_log.level
    job_log.addHandler(handler)
    job_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        job_log.removeHandler(handler)
        job_log.setLevel(level)
