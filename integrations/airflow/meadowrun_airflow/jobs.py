"""Running one meadowrun job for an Airflow task, attached or detached, with meadowrun's public
API only (``import meadowrun_core as mr``).

Attached (``start_job``): the job belongs to this process's meadowrun client, the way a
non-deferrable operator uses it. It still gets a key of its own (``attempt_key``), so that
cancelling can wait until the job has really ended (``mr.cancel_job``) and a command's last
stdout line can be read from the output kept with its outcome.

Detached (``submit_detached``): a deferrable operator hands the job over to the triggerer and
must find it again after a worker restart, so the job gets a deterministic key (``job_key``)
and a lease of its own (``job_key=``/``detach=``); any process can then follow it
(``mr.wait_job_async``, which replays its output from the start), cancel it
(``mr.cancel_job``) or read its outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.machinery
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

import meadowrun_core as mr

log = logging.getLogger(__name__)

# Where meadowrun_core logs the output of the jobs it follows ("[job id] line").
JOB_LOGGER = "meadowrun_core.job"

# How long cancelling waits for the agent to stop the process and free its allocation.
CANCEL_WAIT_SECONDS = 15.0

PENDING, RUNNING, UNKNOWN = "pending", "running", "unknown"
NOT_ENDED = frozenset({PENDING, RUNNING})


def job_key(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """The same key for every try of one task instance, so a retry finds the running job."""
    digest = hashlib.sha256(f"{dag_id}\0{task_id}\0{run_id}\0{map_index}".encode()).hexdigest()
    return f"airflow-{digest[:32]}"


def attempt_key() -> str:
    """A key for one attached (non-deferrable) job: unique, since the job dies with this
    process and no later try may follow it."""
    return f"airflow-attached-{uuid.uuid4().hex}"


def local_home(host: mr.Host | None) -> str:
    """The local cloud's state directory a job of ``host`` lives in, as an absolute path (the
    triggerer may run with another environment): ``host.home``, else ``MEADOWRUN_HOME``, else
    meadowrun's documented default ``~/.meadowrun``."""
    home = host.home if isinstance(host, mr.AllocLocalInstance) else None
    home = home or os.environ.get("MEADOWRUN_HOME") or "~/.meadowrun"
    return str(Path(home).expanduser().resolve())


def host_for_home(meadowrun_home: str | None) -> mr.Host | None:
    """The host to find a job by in the local cloud at ``meadowrun_home``."""
    return mr.AllocLocalInstance(home=meadowrun_home) if meadowrun_home else None


_HOST_KINDS: dict[str, type[mr.Host]] = {
    kind.__name__: kind for kind in (mr.AllocLocalInstance, mr.AllocEC2Instance, mr.AllocAzureVM)
}


def host_to_json(host: mr.Host | None) -> dict[str, Any] | None:
    """The job's host (``None``: ``MEADOWRUN_HOST`` as the submitting worker sees it) as JSON
    that a trigger carries; ``None`` for the local cloud, which its home identifies."""
    host = mr.resolve_host(host)
    if isinstance(host, mr.AllocLocalInstance):
        return None  # the local cloud is found by its home, which travels on its own
    fields = {f.name: getattr(host, f.name) for f in dataclasses.fields(host)}
    return {"kind": type(host).__name__, "fields": fields}


def host_from_json(data: dict[str, Any] | None) -> mr.Host | None:
    if data is None:
        return None
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data["fields"].items()}
    return _HOST_KINDS[data["kind"]](**fields)


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


def _submit(
    spec: JobSpec, key: str, detach: bool, timeout_seconds: float | None = None
) -> mr.JobHandle[Any]:
    common: dict[str, Any] = {
        "host": spec.host,
        "resources": spec.resources,
        "deployment": spec.deployment,
        "wait_for_result": False,
        "job_key": key,
        "detach": detach,
    }
    if detach:
        common["detached_timeout"] = timeout_seconds
    if spec.command is not None:
        handle = mr.run_command(spec.command, environment=spec.environment, **common)
    else:
        assert spec.function is not None
        pickle_by_value_if_unimportable(spec.function)
        handle = mr.run_function(spec.function, args=spec.args, kwargs=spec.kwargs, **common)
    assert isinstance(handle, mr.JobHandle), handle  # wait_for_result=False
    return handle


# --- output ------------------------------------------------------------------------------------


class OutputLines:
    """Splits a job's raw output chunks (``on_output(stream, data)``) into lines for
    ``emit(level, line)`` (stderr at WARNING, as meadowrun logs it) and remembers the last
    stdout line (the XCom of a command, as BashOperator)."""

    def __init__(self, emit: Callable[[int, str], None] | None = None) -> None:
        self._emit = emit
        self._partial: dict[str, bytes] = {}
        self.last_stdout_line: str | None = None

    def feed(self, stream: str, data: bytes) -> None:
        *lines, rest = (self._partial.get(stream, b"") + data).split(b"\n")
        self._partial[stream] = rest
        for line in lines:
            self._line(stream, line)

    def flush(self) -> None:
        partial, self._partial = self._partial, {}
        for stream, rest in partial.items():
            if rest:
                self._line(stream, rest)

    def _line(self, stream: str, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        if stream == "stdout":
            self.last_stdout_line = text
        if self._emit is not None:
            self._emit(logging.INFO if stream == "stdout" else logging.WARNING, text)


def job_log_file(
    base_folder: str | Path, dag_id: str, run_id: str, task_id: str, map_index: int, job_id: str
) -> Path:
    """Where the worker saves a job's output, beside Airflow's own task logs."""
    folder = Path(base_folder) / "meadowrun" / f"dag_id={dag_id}" / f"run_id={run_id}"
    folder = folder / f"task_id={task_id}"
    if map_index >= 0:
        folder = folder / f"map_index={map_index}"
    return folder / f"{job_id}.log"


def save_log(log_file: Path, data: bytes) -> bool:
    """Write a job's output to ``log_file``; a failure is logged, never raised (the log is a
    convenience, the task's outcome does not depend on it)."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_bytes(data)
    except OSError as exc:
        log.warning("Could not save the meadowrun job's log to %s: %s", log_file, exc)
        return False
    return True


def read_job(
    key: str, host: mr.Host | None, log_file: Path | None, timeout: float
) -> tuple[Any, str | None]:
    """Attach to the ended job named ``key``: its value (its error is raised) and its last
    stdout line. Its output, replayed from the start, is saved to ``log_file`` (also when the
    job failed)."""
    lines = OutputLines()
    chunks: list[bytes] = []

    def on_output(stream: str, data: bytes) -> None:
        lines.feed(stream, data)
        chunks.append(data)

    try:
        value = mr.attach_job(key, host=host, on_output=on_output).result(timeout=timeout)
    finally:
        lines.flush()
        if log_file is not None:
            save_log(log_file, b"".join(chunks))
    return value, lines.last_stdout_line


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def job_output_not_logged() -> Iterator[None]:
    """Keep meadowrun from logging the output of the jobs this process follows.

    The handle that submits a detached job follows it until ``stop_following``; whoever
    follows it next (the trigger) gets its output replayed from the start, so lines logged
    here would appear twice in the task log.
    """
    drop = _DropAll()
    logger = logging.getLogger(JOB_LOGGER)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


# --- attached jobs -----------------------------------------------------------------------------


class StartedJob:
    """A job of this process's client: wait for it, or cancel it and wait until it is gone.

    Its output is logged by meadowrun (``meadowrun_core.job``) as it arrives."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.key = attempt_key()
        self._closed = False
        self.handle = _submit(spec, self.key, detach=False)

    def job_id(self) -> str | None:
        """The job's meadowrun id (the prefix of its output lines), once it is placed."""
        job_id = mr.job_info(self.key, host=self.spec.host)["job_id"]
        return None if job_id is None else str(job_id)

    def finish(self, log_file: Path | None) -> str | None:
        """Once the job ended: its output, replayed from the output kept with its outcome, is
        saved to ``log_file``; returns its last stdout line."""
        last_line: str | None = None

        def read() -> None:
            nonlocal last_line
            _, last_line = read_job(self.key, self.spec.host, log_file, CANCEL_WAIT_SECONDS)

        with contextlib.suppress(mr.MeadowrunError, TimeoutError):
            read()
        return last_line

    def wait(self, poll_seconds: float = 0.5) -> Any:
        """The job's result; polls so that signals (SIGTERM, SIGALRM timeouts) get through."""
        while True:
            with contextlib.suppress(TimeoutError):
                return self.handle.result(timeout=poll_seconds)

    def cancel(self, wait_seconds: float = CANCEL_WAIT_SECONDS) -> bool:
        """Cancel the job and wait until it has ended; False if it had finished already."""
        if self._closed:
            return False
        was_done = self.handle.done()
        self.handle.cancel()  # our own job: the agent is told to stop it
        mr.cancel_job(self.key, host=self.spec.host, timeout=wait_seconds)  # waits for the end
        status = mr.job_status(self.key, host=self.spec.host)
        if status in NOT_ENDED:
            log.warning("meadowrun job %s is still %s after cancel", self.key, status)
        self.close()
        return not was_done

    def close(self) -> None:
        """Drop the job's record (its outcome was read, or it was cancelled)."""
        if not self._closed:
            self._closed = True
            mr.forget_job(self.key, host=self.spec.host)


def start_job(spec: JobSpec) -> StartedJob:
    return StartedJob(spec)


# --- detached jobs, found by key ---------------------------------------------------------------

# How long a worker waits for its detached job to be started on an instance before deferring
# (the job is sent by this process, so it must not exit before that).
START_WAIT_SECONDS = 600.0


def submit_detached(key: str, spec: JobSpec, timeout_seconds: float | None) -> mr.JobHandle[Any]:
    """Start the job under ``key`` with a lease of its own, bounded by ``timeout_seconds``."""
    return _submit(spec, key, detach=True, timeout_seconds=timeout_seconds)


def wait_until_started(
    key: str, handle: mr.JobHandle[Any], host: mr.Host | None, timeout: float = START_WAIT_SECONDS
) -> str:
    """Wait until an instance has the job (or it already ended); return its status.

    This process sends the job to its instance, so it must not exit (defer) before that. On
    timeout the job is cancelled.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while (status := mr.job_status(key, host=host)) == PENDING and not handle.done():
        if time.monotonic() > deadline:
            handle.cancel()
            raise TimeoutError(f"meadowrun job {key} did not start within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    return status


def outcome_event(
    key: str,
    get_value: Callable[[], Any],
    lines: OutputLines | None = None,
    host: mr.Host | None = None,
) -> dict[str, Any]:
    """The JSON event that tells a deferred task how its job ended (the value itself stays in
    meadowrun's store until ``execute_complete`` reads it). ``get_value`` may feed ``lines``
    (a command's XCom is its last stdout line)."""
    event: dict[str, Any] = {"job_key": key, "job_id": None}
    try:
        value = get_value()
    except mr.TaskException as exc:
        event.update(status="failed", message=exc.message, traceback=exc.remote_traceback)
    except mr.JobCancelledError as exc:
        event.update(status="cancelled", message=str(exc))
    except mr.MeadowrunError as exc:
        # a detached job past its detached_timeout (the task's execution_timeout)
        timed_out = mr.job_status(key, host=host) == "lease_expired"
        event.update(
            status="timed_out" if timed_out else "error", message=f"{type(exc).__name__}: {exc}"
        )
    else:
        if isinstance(value, mr.CommandResult):
            event.update(status="exited", return_code=value.return_code, last_line=None)
        else:
            event.update(status="succeeded")
    if lines is not None:
        lines.flush()
        if event["status"] == "exited":
            event["last_line"] = lines.last_stdout_line
    event["job_id"] = mr.job_info(key, host=host)["job_id"]
    return event
