"""Errors and results that cross from the worker back to the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from meadowrun_core.job_cost import JobCost


class MeadowrunError(Exception):
    """Base class for errors raised by meadowrun itself (not by the user's code)."""


class BadInputError(MeadowrunError, ValueError):
    """The caller asked for something that cannot work; raised before anything is launched."""


class StateDamagedError(MeadowrunError):
    """A state database was damaged; it was moved aside and an empty one started."""


class StateGoneError(MeadowrunError):
    """The state directory was removed while a process used it (its agents stop)."""


class ResourcesNotAvailableError(MeadowrunError):
    """No instance type could ever satisfy the requested resources."""


class WorkerDiedError(MeadowrunError):
    """The process running the job exited without reporting a result."""


class JobTimeoutError(MeadowrunError, TimeoutError):
    """A job ran past its ``timeout`` (counted from when it started on its instance) and was
    stopped: its worker or process killed, its allocation freed."""


class TaskException(MeadowrunError):
    """The user's code raised on the worker.

    ``message``: what went wrong, one line. ``remote_traceback`` (default ""): the worker's
    formatted traceback. ``original`` (default None): the exception object itself when it could
    be pickled back.

    Example::

        try:
            mr.run_function(f)
        except mr.TaskException as exc:
            print(exc.remote_traceback)
    """

    def __init__(
        self, message: str, remote_traceback: str = "", original: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remote_traceback = remote_traceback
        self.original = original

    def __str__(self) -> str:
        if self.remote_traceback:
            return f"{self.message}\n\nRemote traceback:\n{self.remote_traceback}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskException, (self.message, self.remote_traceback, self.original))


class Attempt(NamedTuple):
    """One attempt of a job or map task that ran, recorded with ``retry_with_more_memory=True``
    (``TaskResult.attempts``, ``JobHandle.attempts``).

    ``number``: the attempt (1 first). ``memory_gb``: the memory it had. ``outcome``: how it
    ended (``succeeded``, ``out_of_memory``, ``failed``, ``died``, ...).

    Example::

        for attempt in handle.attempts:
            print(attempt.number, attempt.memory_gb, attempt.outcome)
    """

    number: int
    memory_gb: float
    outcome: str


@dataclass
class TaskResult:
    """The outcome of one map task (``run_map_as_completed`` yields them).

    ``task_id``: the task's position in ``args``. ``is_success``: whether it succeeded.
    ``result`` (default None): its value on success. ``exception`` (default None): a
    ``TaskException`` otherwise. ``attempt`` (default 1): the attempt that produced it.
    ``cached`` (default False): True when the result came from the result cache
    (``cache=True``) and nothing ran for it. ``cost`` (default None: not measured, e.g. a
    task lost with its instance): a ``JobCost`` for the task's own run time on its worker
    slot, summed over the attempts received before it was reported, times the slot's CPU
    share of its instance, at the instance's price; a slot's start-up and idle time is in
    ``meadowrun jobs --history``, not here. ``attempts`` (default ()): with
    ``retry_with_more_memory=True``, every attempt of the task in order as ``Attempt(number,
    memory_gb, outcome)``, the last one this result's; empty otherwise.

    Example::

        for r in mr.run_map_as_completed(f, items):
            value = r.result_or_raise()
    """

    task_id: int
    is_success: bool
    result: Any = None
    exception: TaskException | None = None
    attempt: int = 1
    cached: bool = False
    cost: JobCost | None = None
    attempts: tuple[Attempt, ...] = ()

    def result_or_raise(self) -> Any:
        if not self.is_success:
            assert self.exception is not None
            raise self.exception
        return self.result


class RunMapTasksFailedException(MeadowrunError):
    """Some map tasks failed after all their attempts; each failure keeps its traceback.

    ``failed_tasks``: the ``TaskResult`` of every failed task (``.exception.remote_traceback``).

    Example::

        try:
            mr.run_map(f, items)
        except mr.RunMapTasksFailedException as exc:
            ids = [t.task_id for t in exc.failed_tasks]
    """

    def __init__(self, failed_tasks: list[TaskResult]) -> None:
        self.failed_tasks = failed_tasks
        first = failed_tasks[0].exception if failed_tasks else None
        summary = (
            f"{len(failed_tasks)} task(s) failed: ids {[t.task_id for t in failed_tasks][:20]}"
        )
        if first is not None:
            summary += f"\nFirst failure (task {failed_tasks[0].task_id}): {first}"
        super().__init__(summary)


@dataclass(frozen=True)
class CommandResult:
    """How a ``run_command`` job ended.

    ``return_code``: the command's exit code. ``job_id``: the job's id (``meadowrun logs``).

    Example::

        assert mr.run_command("true").return_code == 0
    """

    return_code: int
    job_id: str
