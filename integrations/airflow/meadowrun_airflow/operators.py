"""``MeadowrunOperator``: a PythonOperator / BashOperator whose work runs on meadowrun instances.

The Airflow worker only submits and follows the job, so its slot stays cheap; with
``deferrable=True`` it does not even hold the slot while the job runs (modelled on the Amazon
provider's BatchOperator and EcsRunTaskOperator).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowSkipException, AirflowTaskTimeout

import meadowrun_core as mr
from meadowrun_airflow.jobs import (
    NOT_ENDED,
    PENDING,
    UNKNOWN,
    JobSpec,
    OutputLines,
    StartedJob,
    discard_output,
    host_to_json,
    job_key,
    job_output_not_logged,
    local_home,
    outcome_event,
    start_job,
    submit_detached,
    wait_until_started,
)

# How long resuming waits to read a finished job's value from meadowrun's store.
RESULT_READ_SECONDS = 120.0

# Context values a remote callable may ask for by parameter name: plain data that pickles.
# (``ti``, ``dag_run`` and the like are live objects of the worker and cannot travel.)
REMOTE_CONTEXT_KEYS = frozenset({
    "ds", "ds_nodash", "ts", "ts_nodash", "ts_nodash_with_tz", "logical_date",
    "data_interval_start", "data_interval_end", "run_id", "params", "task_instance_key_str",
})


def to_meadowrun_resources(resources: Any) -> mr.Resources | None:
    """``mr.Resources`` from itself or from Airflow's executor resources (cpus, ram in MB,
    gpus), which is what ``resources`` becomes on a mapped task."""
    if resources is None or isinstance(resources, mr.Resources):
        return resources
    if isinstance(resources, Mapping):
        from airflow.sdk.definitions.operator_resources import Resources

        resources = Resources(**resources)  # type: ignore[no-untyped-call]
    cpus, ram, gpus = (getattr(resources, name, None) for name in ("cpus", "ram", "gpus"))
    if cpus is None or ram is None:
        raise TypeError(f"resources must be meadowrun_core.Resources, got {resources!r}")
    return mr.Resources(logical_cpu=float(cpus.qty), memory_gb=float(ram.qty) / 1024,
                        gpus=float(gpus.qty) if gpus is not None else 0)


def _plain(value: Any) -> Any:
    """Airflow's lazy XCom proxies (the results of a mapped task) as plain lists and dicts:
    they hold live handles of the worker and must not be pickled."""
    if type(value).__module__.startswith("airflow."):
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            # by index: iterating probes one past the end, which Airflow logs as an error
            return [value[i] for i in range(len(value))]
    return value


class MeadowrunJobError(AirflowException):
    """The job failed on its meadowrun instance; ``remote_traceback`` is the worker's."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{message}\n\nRemote traceback:\n{remote_traceback}"
                         if remote_traceback else message)
        self.remote_traceback = remote_traceback


class MeadowrunOperator(BaseOperator):
    """Run ``python_callable(*op_args, **op_kwargs)`` or ``command`` on a meadowrun instance.

    The callable's return value (or the command's last stdout line, as BashOperator) becomes
    the ``return_value`` XCom. The remote stdout and stderr are logged to the task log line
    by line while the job runs.

    :param python_callable: function to run remotely (pickled; its DAG module travels by value).
        Parameters named like plain context values (``ds``, ``run_id``, ``params``, ...) are
        filled from the task context.
    :param op_args: positional arguments (templated).
    :param op_kwargs: keyword arguments (templated).
    :param command: a shell command string (run with ``bash -c``) or an argv list (templated).
    :param host: an ``mr.Host``; default: the connection's host, else ``MEADOWRUN_HOST``/local.
    :param resources: ``mr.Resources`` per job. Airflow's own form (``{"cpus": 2, "ram": 4096}``,
        MB) is understood too; mapped tasks (``.partial``/``.expand``) must use that form or
        ``meadowrun_resources``, because Airflow coerces ``resources`` of mapped tasks.
    :param meadowrun_resources: ``mr.Resources``, for mapped tasks.
    :param deployment: ``mr.Deployment``; default: mirror the worker's code and interpreter.
    :param environment: environment variables for the job (templated).
    :param meadowrun_conn_id: a ``meadowrun`` connection naming the host.
    :param deferrable: submit, then free the worker slot while a trigger follows the job.
    :param skip_on_exit_code: command exit code(s) that skip the task instead of failing it.
    """

    template_fields: Sequence[str] = ("command", "op_args", "op_kwargs", "environment")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "command": "bash", "op_args": "py", "op_kwargs": "py", "environment": "json",
    }
    ui_color = "#c8e6c9"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any] | str | None = None,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        command: str | Sequence[str] | None = None,
        host: mr.Host | None = None,
        resources: mr.Resources | Any | None = None,
        meadowrun_resources: mr.Resources | None = None,
        deployment: mr.Deployment | None = None,
        environment: Mapping[str, str] | None = None,
        meadowrun_conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        skip_on_exit_code: int | Collection[int] | None = 99,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (python_callable is None) == (command is None):
            raise ValueError("MeadowrunOperator needs exactly one of python_callable or command")
        if python_callable is not None and not (
            callable(python_callable) or isinstance(python_callable, str)
        ):
            raise TypeError("python_callable must be a callable or a 'package.module.function'")
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        self.command = command
        self.host = host
        self.meadowrun_resources = to_meadowrun_resources(meadowrun_resources or resources)
        self.deployment = deployment
        self.environment = dict(environment or {})
        self.meadowrun_conn_id = meadowrun_conn_id
        self.deferrable = deferrable
        self.skip_on_exit_code = (
            set() if skip_on_exit_code is None
            else {skip_on_exit_code} if isinstance(skip_on_exit_code, int)
            else set(skip_on_exit_code)
        )
        self._job: StartedJob | None = None
        self._job_key: str | None = None

    # --- building the job ---------------------------------------------------------------
    def _resolve_host(self) -> mr.Host | None:
        if self.host is not None or not self.meadowrun_conn_id:
            return self.host
        from meadowrun_airflow.hooks import MeadowrunHook

        host = MeadowrunHook(self.meadowrun_conn_id).get_host()
        self.log.info("Using meadowrun host %r from connection %r", host, self.meadowrun_conn_id)
        return host

    def _context_kwargs(self, context: Context) -> dict[str, Any]:
        """Plain context values for parameters of the callable that ask for them by name."""
        if not callable(self.python_callable):
            return {}
        try:
            params = inspect.signature(self.python_callable).parameters
        except (TypeError, ValueError):
            return {}
        positional = [p.name for p in params.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        taken = set(positional[: len(self.op_args)]) | set(self.op_kwargs)
        takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        wanted = REMOTE_CONTEXT_KEYS if takes_var_kw else REMOTE_CONTEXT_KEYS & set(params)
        found: dict[str, Any] = {}
        for name in sorted(wanted - taken):
            if name in context:
                value = context[name]  # type: ignore[literal-required]
                found[name] = dict(value) if name == "params" else value
        return found

    def _job_spec(self, context: Context) -> JobSpec:
        host = self._resolve_host()
        env = {str(k): str(v) for k, v in self.environment.items()}
        if self.command is not None:
            argv = (["bash", "-c", self.command] if isinstance(self.command, str)
                    else [str(a) for a in self.command])
            return JobSpec(command=argv, environment=env, host=host,
                           resources=self.meadowrun_resources, deployment=self.deployment)
        deployment = self.deployment
        if env:
            import dataclasses

            base = deployment or mr.Deployment.mirror_local()
            deployment = dataclasses.replace(
                base, environment_variables={**base.environment_variables, **env})
        kwargs = {**self._context_kwargs(context), **self.op_kwargs}
        return JobSpec(function=self.python_callable,
                       args=tuple(_plain(v) for v in self.op_args),
                       kwargs={k: _plain(v) for k, v in kwargs.items()},
                       host=host, resources=self.meadowrun_resources, deployment=deployment)

    # --- running ------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        spec = self._job_spec(context)
        if self.deferrable:
            return self._submit_and_defer(context, spec)
        self.log.info("Running %s on meadowrun", spec.description)
        self._job = job = start_job(spec)
        try:
            value = job.wait()
            last_line = job.last_stdout_line() if isinstance(value, mr.CommandResult) else None
        except mr.TaskException as exc:
            raise self._job_failed(exc.message, exc.remote_traceback) from None
        except BaseException:
            # Timeouts (AirflowTaskTimeout), kills and errors: never leave the job behind.
            job.cancel()
            raise
        finally:
            job.close()
        if isinstance(value, mr.CommandResult):
            self._check_exit_code(value.return_code)
            return last_line
        return value

    def _check_exit_code(self, return_code: int) -> None:
        if return_code in self.skip_on_exit_code:
            raise AirflowSkipException(f"the command exited with code {return_code}; skipping")
        if return_code != 0:
            raise AirflowException(
                f"the command failed on meadowrun: it exited with code {return_code}")

    def _job_failed(self, message: str, remote_traceback: str) -> MeadowrunJobError:
        if remote_traceback:
            self.log.error("The job failed on its meadowrun instance. Remote traceback:\n%s",
                           remote_traceback.rstrip())
        return MeadowrunJobError(message, remote_traceback)

    # --- deferrable mode ------------------------------------------------------------------
    def _key(self, context: Context) -> str:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return job_key(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else map_index)

    def _finished_outcome(self, key: str, host: mr.Host | None,
                          log_output: bool = True) -> dict[str, Any]:
        """The outcome of a job that has ended. Its output is replayed from the start: into
        this task's log if ``log_output``, and for a command's last stdout line."""
        job_id = mr.job_info(key, host=host)["job_id"]
        lines = OutputLines(
            (lambda level, text: self.log.log(level, "[%s] %s", job_id, text))
            if log_output else None)
        return outcome_event(
            key, lambda: mr.attach_job(key, host=host, on_output=lines.feed).result(
                timeout=RESULT_READ_SECONDS),
            lines, host)

    def _submit_and_defer(self, context: Context, spec: JobSpec) -> Any:
        key = self._job_key = self._key(context)
        # The trigger relays the job's output, replayed from its start; meadowrun must not log
        # it here too (the submitting handle follows the job until it has started).
        with job_output_not_logged():
            return self._start_or_reattach(context, spec, key)

    def _start_or_reattach(self, context: Context, spec: JobSpec, key: str) -> Any:
        from meadowrun_airflow.triggers import MeadowrunJobTrigger

        host = spec.host
        status = mr.job_status(key, host=host)
        if status in ("succeeded", "exited"):
            # its output is in the earlier try's log already
            event = self._finished_outcome(key, host, log_output=False)
            if event.get("return_code", 0) == 0:
                self.log.info("Job %s already finished (started by an earlier try); "
                              "using its result", key)
                return self.execute_complete(context, event)
        if status in NOT_ENDED:
            self.log.info("Reattaching to meadowrun job %s, started by an earlier try", key)
        else:
            if status != UNKNOWN:  # an earlier try's job ended badly: this is a retry
                self.log.info("Job %s of an earlier try ended %s; starting it again", key, status)
                mr.forget_job(key, host=host)
            timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
            handle = submit_detached(key, spec, timeout)
            status = wait_until_started(key, handle, host)
            if status == PENDING:  # the submission failed before the job reached an instance
                return self.execute_complete(context, outcome_event(key, handle.result,
                                                                    host=host))
            handle.stop_following()  # the job runs on; the trigger follows it
            self.log.info("Submitted %s to meadowrun as job %s (meadowrun job id %s)",
                          spec.description, key, mr.job_info(key, host=host)["job_id"])
            if status not in NOT_ENDED:  # already over: no point in deferring
                return self.execute_complete(context, self._finished_outcome(key, host))
        context["ti"].xcom_push(key="meadowrun_job_key", value=key)
        self.defer(
            trigger=MeadowrunJobTrigger(
                job_key=key, meadowrun_home=local_home(host), host=host_to_json(host)
            ),
            method_name="execute_complete",
            # The job itself stops at execution_timeout (its detached lease); a safety net.
            timeout=self.execution_timeout + timedelta(seconds=60)
            if self.execution_timeout else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any],
                         last_line: str | None = None) -> Any:
        """Resume after the trigger saw the job end: return its result or fail the task.

        ``last_line`` is accepted from tasks deferred by earlier versions of this operator
        (the last stdout line their worker saw before deferring)."""
        key = self._job_key = event["job_key"]
        host = self._resolve_host()
        status = event.get("status")
        try:
            if status == "succeeded":
                self.log.info("Job %s succeeded", key)
                return mr.attach_job(key, host=host, on_output=discard_output).result(
                    timeout=RESULT_READ_SECONDS)
            if status == "exited":
                self._check_exit_code(int(event["return_code"]))
                return event.get("last_line") or last_line
            if status == "timed_out":
                raise AirflowTaskTimeout(f"meadowrun job {key} ran past the execution_timeout "
                                         f"and was stopped: {event.get('message', '')}")
            if status == "failed":
                raise self._job_failed(f"job {key}: {event.get('message', '')}",
                                       event.get("traceback", ""))
            raise AirflowException(f"meadowrun job {key} ended {status}: "
                                   f"{event.get('message', '')}")
        finally:
            mr.forget_job(key, host=host)

    def on_kill(self) -> None:
        """Cancel the job on its instance and wait until it has ended."""
        if self._job is not None:
            self.log.info("Cancelling the meadowrun job")
            self._job.cancel()
        if self._job_key is not None:
            self.log.info("Cancelling meadowrun job %s", self._job_key)
            mr.cancel_job(self._job_key, host=self._resolve_host())
