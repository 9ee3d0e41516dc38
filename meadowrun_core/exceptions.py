"""Errors and results that cross from the worker back to the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MeadowrunError(Exception):
    """Base class for errors raised by meadowrun itself (not by the user's code)."""


class BadInputError(MeadowrunError, ValueError):
    """The caller asked for something that cannot work; raised before anything is launched."""


class ResourcesNotAvailableError(MeadowrunError):
    """No instance type could ever satisfy the requested resources."""


class WorkerDiedError(MeadowrunError):
    """The process running the job exited without reporting a result."""


class TaskException(MeadowrunError):
    """The user's code raised on the worker.

    ``remote_traceback`` holds the worker's formatted traceback; ``original`` is the
    exception object itself when it could be pickled back.
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


@dataclass
class TaskResult:
    """The outcome of one map task; ``result`` on success, ``exception`` otherwise."""

    task_id: int
    is_success: bool
    result: Any = None
    exception: TaskException | None = None
    attempt: int = 1

    def result_or_raise(self) -> Any:
        if not self.is_success:
            assert self.exception is not None
            raise self.exception
        return self.result


class RunMapTasksFailedException(MeadowrunError):
    """Some map tasks failed after all their attempts; each failure keeps its traceback."""

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
    """How a ``run_command`` job ended."""

    return_code: int
    job_id: str
