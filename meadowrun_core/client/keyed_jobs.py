"""Keyed and detached jobs: claiming a key (and a detached job's own lease), following a keyed
job from any process, and settling records of jobs that can no longer end on their own."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from meadowrun_core import frames
from meadowrun_core.backend import Backend
from meadowrun_core.client.allocation import Placement
from meadowrun_core.client.job_events import (
    Submission,
    decode_final,
    final_payload,
    run_on_instance,
)
from meadowrun_core.client.job_output import OutputLogger
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.exceptions import BadInputError, MeadowrunError
from meadowrun_core.seams.object_store import get_verified

DEFAULT_DETACHED_TIMEOUT_SECONDS = 24 * 3600.0


def claim_submission(
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
            final = kept_final(row)
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
        final = frames.Final(
            type="final", job_id=str(row["job_id"]), status="died", message=message
        )
        backend.table.record_job_final(job_key, json.dumps(final), None)
        row = backend.table.get_job_key(job_key) or row
    return row


def kept_final(row: dict[str, object]) -> frames.Final:
    """The final event an ended job's record keeps (JSON): its agent's, or the one a client
    wrote for a job that never reached an agent."""
    return cast(frames.Final, json.loads(str(row["final"])))


class JobNotFoundError(MeadowrunError, KeyError):
    """No job with this key exists in the cloud."""
