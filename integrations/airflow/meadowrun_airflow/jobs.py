"""Running one meadowrun job for an Airflow task, attached or detached.

Attached (``start_job``): the job belongs to this process's meadowrun client, the way a
non-deferrable operator uses it; cancelling waits until the allocation is really freed.

Detached (``submit_detached``): a deferrable operator hands the job over to the triggerer and
must find it again after a worker restart, so the job gets a deterministic key (``job_key``)
and a lease of its own (meadowrun_core's ``job_key=``/``detach=``); any process can then
follow it (``mr.wait_job_async``), cancel it (``mr.cancel_job``) or read its outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

import meadowrun_core as mr

log = logging.getLogger(__name__)

JOB_LOGGER = "meadowrun_core.job"

# How long cancelling waits for the agent to stop the process and free its allocation.
CANCEL_WAIT_SECONDS = 15.0


def job_key(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """The same key for every try of one task instance, so a retry finds the running job."""
    digest = hashlib.sha256(f"{dag_id}\0{task_id}\0{run_id}\0{map_index}".encode()).hexdigest()
    return f"airflow-{digest[:32]}"


def pickle_by_value_if_unimportable(function: Any) -> None:
    """Ship the callable's module by value when workers could not import it by name.

    Airflow loads DAG files under made-up module names (``unusual_prefix_<hash>_<file>``), so
    cloudpickle's default (by reference) would make the worker fail with ImportError.
    """
    module_name = getattr(function, "__module__", None)
    if not module_name or module_name == "__main__":
        return  # cloudpickle already pickles __main__ by value
    module = sys.modules.get(module_name)
    if module is None:
        return
    top = module_name.partition(".")[0]
    importable = importlib.machinery.PathFinder.find_spec(top) is not None
    if not importable and top not in sys.builtin_module_names:
        with contextlib.suppress(ValueError):  # already registered
            cloudpickle.register_pickle_by_value(module)


@dataclass
class JobSpec:
    """What to run: a callable (or dotted name) with arguments, or a command."""

    function: Callable[..., Any] | str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    host: mr.Host | None = None
    resources: mr.Resources | None = None
    deployment: mr.Deployment | None = None

    @property
    def description(self) -> str:
        if self.command is not None:
            return f"command {self.command!r}"
        return f"function {getattr(self.function, '__qualname__', self.function)!r}"


class OutputTap(logging.Handler):
    """Remembers the last stdout line of the job (the XCom of a command, as BashOperator)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last_stdout_line: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.INFO and isinstance(record.args, tuple) and record.args:
            self.last_stdout_line = str(record.args[-1])


def _as_handle(value: Any) -> mr.JobHandle[Any]:
    assert isinstance(value, mr.JobHandle), value  # wait_for_result=False
    return value


def _our_allocations(host: mr.Host | None) -> set[str]:
    """Job ids this process's meadowrun client holds now (the local cloud's table)."""
    from meadowrun_core.api import current_client_id
    from meadowrun_core.client.runtime import ClientRuntime

    client_id = current_client_id()
    table = ClientRuntime.get().backend(host).table
    return {a.job_id for a in table.list_allocations() if a.client_id == client_id}


class StartedJob:
    """A job of this process's client: wait for it, or cancel it and wait until it is gone."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._before = _our_allocations(spec.host)
        self._tap = OutputTap()
        logging.getLogger(JOB_LOGGER).addHandler(self._tap)
        try:
            self.handle: mr.JobHandle[Any]
            if spec.command is not None:
                self.handle = _as_handle(mr.run_command(
                    spec.command, host=spec.host, resources=spec.resources,
                    deployment=spec.deployment, environment=spec.environment,
                    wait_for_result=False,
                ))
            else:
                assert spec.function is not None
                pickle_by_value_if_unimportable(spec.function)
                self.handle = mr.run_function(
                    spec.function, host=spec.host, resources=spec.resources,
                    deployment=spec.deployment, args=spec.args, kwargs=spec.kwargs,
                    wait_for_result=False,
                )
        except BaseException:
            self._untap()
            raise

    @property
    def last_stdout_line(self) -> str | None:
        return self._tap.last_stdout_line

    def job_ids(self) -> set[str]:
        return _our_allocations(self.spec.host) - self._before

    def wait(self, poll_seconds: float = 0.5) -> Any:
        """The job's result; polls so that signals (SIGTERM, SIGALRM timeouts) get through."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    return self.handle.result(timeout=poll_seconds)
        finally:
            self._untap()

    def cancel(self, wait_seconds: float = CANCEL_WAIT_SECONDS) -> bool:
        """Cancel the job and wait until its allocation is freed; False if it had finished."""
        cancelled = self.handle.cancel()
        deadline = time.monotonic() + wait_seconds
        while (left := self.job_ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            log.warning("job(s) %s still hold an allocation after cancel", sorted(left))
        self._untap()
        return cancelled

    def _untap(self) -> None:
        logging.getLogger(JOB_LOGGER).removeHandler(self._tap)


def start_job(spec: JobSpec) -> StartedJob:
    return StartedJob(spec)


# --- detached jobs, found by key ---------------------------------------------------------------

RUNNING, UNKNOWN = "running", "unknown"
# How long a worker waits for its detached job to be started on an instance before deferring
# (the job is sent by this process, so it must not exit before that).
START_WAIT_SECONDS = 600.0


def _table(host: mr.Host | None) -> Any:
    from meadowrun_core.client.runtime import ClientRuntime

    return ClientRuntime.get().backend(host).table


def keyed_job_id(key: str, host: mr.Host | None = None) -> str | None:
    """The meadowrun job id behind a key: output lines are logged under the job id."""
    row = _table(host).get_job_key(key)
    return None if row is None else str(row["job_id"])


def submit_detached(key: str, spec: JobSpec, timeout_seconds: float | None) -> mr.JobHandle[Any]:
    """Start the job under ``key`` with a lease of its own, bounded by ``timeout_seconds``."""
    common: dict[str, Any] = {
        "host": spec.host, "resources": spec.resources, "deployment": spec.deployment,
        "wait_for_result": False, "job_key": key, "detach": True,
        "detached_timeout": timeout_seconds,
    }
    if spec.command is not None:
        return _as_handle(mr.run_command(spec.command, environment=spec.environment, **common))
    assert spec.function is not None
    pickle_by_value_if_unimportable(spec.function)
    return _as_handle(
        mr.run_function(spec.function, args=spec.args, kwargs=spec.kwargs, **common))


def wait_until_started(key: str, handle: mr.JobHandle[Any], host: mr.Host | None,
                       timeout: float = START_WAIT_SECONDS) -> None:
    """Return once an instance runs the job (or it already ended).

    This process sends the job to its instance, so it must not exit (defer) before that.
    """
    table = _table(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.done():
            return
        row = table.get_job_key(key)
        if row is not None and row["status"] == "ended":
            return
        if row is not None and row["status"] == RUNNING:
            alloc = next((a for a in table.list_allocations() if a.job_id == row["job_id"]),
                         None)
            if alloc is None or alloc.worker_pid:
                return
        time.sleep(0.05)
    raise TimeoutError(f"meadowrun job {key} did not start within {timeout:g} s")


def outcome_event(key: str, get_value: Callable[[], Any], last_line: str | None = None,
                  host: mr.Host | None = None) -> dict[str, Any]:
    """The JSON event that tells a deferred task how its job ended (the value itself stays in
    meadowrun's store until ``execute_complete`` reads it)."""
    base: dict[str, Any] = {"job_key": key, "job_id": keyed_job_id(key, host)}
    try:
        value = get_value()
    except mr.TaskException as exc:
        return {**base, "status": "failed", "message": exc.message,
                "traceback": exc.remote_traceback}
    except mr.JobCancelledError as exc:
        return {**base, "status": "cancelled", "message": str(exc)}
    except mr.MeadowrunError as exc:
        # a detached job past its detached_timeout (the task's execution_timeout)
        timed_out = mr.job_status(key, host=host) == "lease_expired"
        return {**base, "status": "timed_out" if timed_out else "error",
                "message": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, mr.CommandResult):
        return {**base, "status": "exited", "return_code": value.return_code,
                "last_line": last_line}
    return {**base, "status": "succeeded"}
