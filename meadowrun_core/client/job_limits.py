"""How long a single job may run and how many times it is tried: checked before anything is
launched (the agent enforces the timeout, ``job_events.run_job`` the attempts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from meadowrun_core.client.memory_retry import check_retry_with_more_memory
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.raffle import check_priority


@dataclass(frozen=True)
class JobLimits:
    """``timeout``: seconds the job may run once started on its instance (None: no limit).
    ``attempts``: how many times it is run in all while it fails. ``priority``: its weight
    in the raffle for room (seams/raffle.py). ``more_memory``: an attempt that ran out of
    memory is followed by one with twice the memory (client/memory_retry.py)."""

    timeout: float | None = None
    attempts: int = 1
    priority: float = 1.0
    more_memory: bool = False

    @classmethod
    def check(
        cls,
        timeout: object,
        max_num_task_attempts: object,
        job_key: str | None = None,
        priority: object = 1.0,
        retry_with_more_memory: object = False,
    ) -> JobLimits:
        """The limits, or BadInputError naming the bad value and what would do."""
        return cls(
            check_timeout(timeout),
            check_attempts(max_num_task_attempts, job_key),
            check_priority(priority),
            check_retry_with_more_memory(retry_with_more_memory),
        )


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds: None or a positive, finite number."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise BadInputError(
            f"timeout must be a positive number of seconds or None (no limit), got {timeout!r}"
        )
    return float(timeout)


def check_attempts(max_num_task_attempts: object, job_key: str | None = None) -> int:
    """``max_num_task_attempts`` as an int >= 1; a keyed job runs once (its key records one
    outcome that other processes follow)."""
    if (
        isinstance(max_num_task_attempts, bool)
        or not isinstance(max_num_task_attempts, int)
        or max_num_task_attempts < 1
    ):
        raise BadInputError(
            f"max_num_task_attempts must be an int >= 1, got {max_num_task_attempts!r}"
        )
    if max_num_task_attempts > 1 and job_key is not None:
        raise BadInputError(
            "max_num_task_attempts > 1 does not work with job_key yet (a keyed job records "
            "one outcome); leave max_num_task_attempts at 1 or drop job_key"
        )
    return max_num_task_attempts


NO_LIMITS = JobLimits()
