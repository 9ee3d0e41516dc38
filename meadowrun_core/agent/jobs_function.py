"""A function job: one call in a worker of its deployment, its result sent back inline or, when
too large for a frame, by reference to the object store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meadowrun_core import frames
from meadowrun_core.agent.job_setup import (
    CodeLoadError,
    prepare_worker,
    record_pid_soon,
    worker_gone,
)
from meadowrun_core.agent.running_job import RunningJob
from meadowrun_core.agent.state import AgentState
from meadowrun_core.agent.worker_pool import WorkerDiedError
from meadowrun_core.deployment.instance import failure_payload
from meadowrun_core.seams.object_store import DamagedObjectError, get_verified
from meadowrun_core.seams.spill import FRAME_INLINE_BYTES


async def run_function(
    state: AgentState, job: RunningJob, header: frames.RunFunction, blob: bytes
) -> tuple[frames.JobOutcome, bytes]:
    """Run the call; the outcome and the final frame's payload."""
    try:
        worker = await prepare_worker(state, job, header["deployment"], record_pid=False)
    except CodeLoadError as exc:
        return {"status": "failed", "stage": "load"}, exc.failure
    except WorkerDiedError as exc:
        return {"status": "died", "message": f"worker could not start: {exc}"}, b""
    call: frames.Call = {
        **_function_ref(header),
        "type": "call",
        "call_id": job.job_id,
        # the worker runs the call in the mirror of the caller's working directory if it
        # has one, else in these (as a command runs)
        "caller_cwd": header.get("caller_cwd"),
        "workdir": job.workdir or str(_function_scratch(state)),
    }
    try:
        if header.get("arguments_key"):  # too large for a frame: in the object store
            blob = await asyncio.to_thread(
                get_verified, state.store, state.signer, header["arguments_key"]
            )
    except (KeyError, DamagedObjectError) as exc:
        state.pool.release(worker)
        return {"status": "failed", "stage": "load"}, failure_payload(exc)
    job.start_clock()
    job.has_pid_file = False
    record_pid_soon(state, job, worker.pid)
    try:
        reply, payload = await worker.request(state.signer, call, blob)
    except WorkerDiedError as exc:
        return worker_gone(state, job, worker, exc), b""
    state.pool.release(worker)
    if reply["ok"]:
        if len(payload) > FRAME_INLINE_BYTES:  # too large for a frame: by reference
            key = await asyncio.to_thread(state.store.put, state.signer.sign(payload))
            return {"status": "succeeded", "result_key": key}, b""
        return {"status": "succeeded"}, payload
    return {"status": "failed", "stage": reply.get("stage", "run")}, payload


def _function_ref(header: frames.RunFunction) -> frames.FunctionRef:
    ref: frames.FunctionRef = {}
    if "function_key" in header:
        ref["function_key"] = header["function_key"]
    if "function_name" in header:
        ref["function_name"] = header["function_name"]
    return ref


def _function_scratch(state: AgentState) -> Path:
    """The working directory of function jobs with no better one: one per instance (made
    once, not checked on every call)."""
    return state.folders.function_scratch
