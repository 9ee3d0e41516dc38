"""Turning a job's final event into a value or a clear exception."""

from __future__ import annotations

import pickle

from meadowrun_core import frames
from meadowrun_core.exceptions import (
    JobTimeoutError,
    MeadowrunError,
    TaskException,
    WorkerDiedError,
)


class JobCancelledError(MeadowrunError):
    """The job was cancelled before it finished."""


class OutOfMemoryError(WorkerDiedError):
    """The job used more memory than it asked for and was stopped."""


def failure_exception(payload: bytes, stage: str, where: str) -> TaskException:
    original, text = pickle.loads(payload)
    if stage == "load":
        message = f"could not load the function or its code on the worker ({where})"
    elif stage == "result":
        message = f"the result could not be sent back ({where})"
    elif stage == "memory":
        message = f"the function ran out of memory ({where})"
    else:
        message = f"the function raised on the worker ({where})"
    if original is not None:
        message += f": {type(original).__name__}: {original}"
    return TaskException(message, text, original)


def raise_for_final(header: frames.Final, payload: bytes) -> None:
    """Raise the exception that a non-successful final event stands for."""
    status = header["status"]
    job_id = header["job_id"]
    message = header.get("message", "")
    if status == "failed":
        raise failure_exception(payload, header.get("stage", "run"), f"job {job_id}")
    if status == "out_of_memory":
        raise OutOfMemoryError(f"job {job_id}: {message}")
    if status == "timed_out":
        raise JobTimeoutError(f"job {job_id} {message}")
    if status == "died":
        raise WorkerDiedError(f"job {job_id}: {message}")
    if status == "cancelled":
        raise JobCancelledError(f"job {job_id} was cancelled: {message}")
    if status == "interrupted":
        raise WorkerDiedError(f"job {job_id}: {message}")
    if status == "disconnected":
        raise WorkerDiedError(f"job {job_id}: lost the connection to its instance ({message})")
    raise MeadowrunError(f"job {job_id} ended with {status}: {message}")


# how a job ended that running it again may mend: its code raised or its worker was lost
_RETRIED_STATUSES = ("died", "out_of_memory", "timed_out", "interrupted", "disconnected")


def retry_reason(final: frames.Final, payload: bytes) -> str | None:
    """Why a single job's attempt failed, if running it again may help (its function raised,
    its command exited non-zero, its worker died or it timed out); None otherwise (it
    succeeded, was cancelled, or could not load)."""
    status = final["status"]
    if status == "failed" and final.get("stage") in ("run", "memory"):
        return failure_exception(payload, final["stage"], f"job {final['job_id']}").message
    if status == "exited" and final.get("return_code") != 0:
        return f"job {final['job_id']} exited with code {final.get('return_code')}"
    if status in _RETRIED_STATUSES:
        return f"job {final['job_id']} {status}: {final.get('message', '')}"
    return None
