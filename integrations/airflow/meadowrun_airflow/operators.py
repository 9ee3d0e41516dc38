"""``MeadowrunOperator``: a PythonOperator / BashOperator whose work runs on meadowrun instances.

The Airflow worker only submits and follows the job, so its slot stays cheap; with
``deferrable=True`` it does not even hold the slot while the job runs, and with
``wait_for_completion=False`` it only submits the job (modelled on the Amazon provider's
BatchOperator and EcsRunTaskOperator; those two runs are in ``deferral.py``, the conversion of
the arguments in ``arguments.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

import meadowrun_core as mr
from meadowrun_airflow.arguments import (
    REMOTE_CONTEXT_KEYS,
    is_templated,
    plain_argument,
    to_meadowrun_resources,
)
from meadowrun_airflow.deferral import DetachedJobMixin
from meadowrun_airflow.hooks import MeadowrunHook, host_from_value
from meadowrun_airflow.jobs import JobSpec, StartedJob, job_log_file, start_job
from meadowrun_airflow.links import MeadowrunJobLogLink


class MeadowrunJobError(AirflowException):
    """The job failed on its meadowrun instance; ``remote_traceback`` is the worker's."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(
            f"{message}\n\nRemote traceback:\n{remote_traceback}" if remote_traceback else message
        )
        self.remote_traceback = remote_traceback


class MeadowrunOperator(DetachedJobMixin, BaseOperator):
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
    :param host: where the job runs (templated): an ``mr.Host``, a host kind (``"local"``,
        ``"ec2"``, ``"azure"``) or a dict of the connection's fields, e.g.
        ``{"host": "local", "meadowrun_home": "{{ params.home }}"}``. Default: the host of
        ``meadowrun_conn_id``.
    :param resources: ``mr.Resources`` per job, or a dict of its fields (templated, e.g.
        ``{"logical_cpu": "{{ params.cpu }}", "memory_gb": 4}``). Airflow's own form
        (``{"cpus": 2, "ram": 4096}``, MB) is understood too; mapped tasks
        (``.partial``/``.expand``) must use that form or ``meadowrun_resources``, because Airflow
        coerces ``resources`` of mapped tasks. Kept as the ``meadowrun_resources`` attribute
        (Airflow reserves the ``resources`` attribute and forbids templating it).
    :param meadowrun_resources: the same as ``resources``, for mapped tasks.
    :param deployment: ``mr.Deployment``; default: mirror the worker's code and interpreter.
    :param environment: environment variables for the job (templated).
    :param meadowrun_conn_id: a ``meadowrun`` connection naming the host; default
        ``meadowrun_default``, used if it exists (else ``MEADOWRUN_HOST``, else the local
        cloud). ``None``: no connection.
    :param deferrable: submit, then free the worker slot while a trigger follows the job.
    :param wait_for_completion: ``False``: submit the job and end the task at once, the job
        running on (fire and forget, as BatchOperator's); its key is the return value and the
        ``meadowrun_job_key`` XCom (``mr.attach_job(key)``, ``mr.cancel_job(key)``).
    :param skip_on_exit_code: command exit code(s) that skip the task instead of failing it.
    """

    template_fields: Sequence[str] = (
        "command",
        "op_args",
        "op_kwargs",
        "environment",
        "host",
        "meadowrun_resources",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "command": "bash",
        "op_args": "py",
        "op_kwargs": "py",
        "environment": "json",
        "host": "py",
        "meadowrun_resources": "py",
    }
    operator_extra_links = (MeadowrunJobLogLink(),)
    ui_color = "#c8e6c9"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any] | str | None = None,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        command: str | Sequence[str] | None = None,
        host: mr.Host | str | Mapping[str, Any] | None = None,
        resources: mr.Resources | Mapping[str, Any] | Any | None = None,
        meadowrun_resources: mr.Resources | Mapping[str, Any] | None = None,
        deployment: mr.Deployment | None = None,
        environment: Mapping[str, str] | None = None,
        meadowrun_conn_id: str | None = MeadowrunHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
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
        # host and resources are templated: checked now unless they hold Jinja
        if host is not None and not is_templated(host):
            host_from_value(host)
        self.host = host
        resources = meadowrun_resources if meadowrun_resources is not None else resources
        self.meadowrun_resources = (
            resources if is_templated(resources) else to_meadowrun_resources(resources)
        )
        self.deployment = deployment
        self.environment = dict(environment or {})
        self.meadowrun_conn_id = meadowrun_conn_id
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.skip_on_exit_code = (
            set()
            if skip_on_exit_code is None
            else {skip_on_exit_code}
            if isinstance(skip_on_exit_code, int)
            else set(skip_on_exit_code)
        )
        self._job: StartedJob | None = None
        self._job_key: str | None = None
        self._host: mr.Host | None = None

    # --- building the job ---------------------------------------------------------------
    def _resolve_host(self) -> mr.Host | None:
        """The (rendered) ``host``, else the connection's; ``None``: the default host."""
        if self.host is not None:
            self._host = host_from_value(self.host)
        elif self.meadowrun_conn_id:
            self._host = MeadowrunHook(self.meadowrun_conn_id).get_host()
            if self._host is not None:
                self.log.info(
                    "Using meadowrun host %r from connection %r", self._host, self.meadowrun_conn_id
                )
        return self._host

    def _context_kwargs(self, context: Context) -> dict[str, Any]:
        """Plain context values for parameters of the callable that ask for them by name."""
        if not callable(self.python_callable):
            return {}
        try:
            params = inspect.signature(self.python_callable).parameters
        except (TypeError, ValueError):
            return {}
        positional = [
            p.name
            for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
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
        resources = to_meadowrun_resources(self.meadowrun_resources)
        env = {str(k): str(v) for k, v in self.environment.items()}
        if self.command is not None:
            argv = (
                ["bash", "-c", self.command]
                if isinstance(self.command, str)
                else [str(a) for a in self.command]
            )
            return JobSpec(
                command=argv,
                environment=env,
                host=host,
                resources=resources,
                deployment=self.deployment,
            )
        deployment = self.deployment
        if env:
            import dataclasses

            base = deployment or mr.Deployment.mirror_local()
            deployment = dataclasses.replace(
                base, environment_variables={**base.environment_variables, **env}
            )
        kwargs = {**self._context_kwargs(context), **self.op_kwargs}
        return JobSpec(
            function=self.python_callable,
            args=tuple(plain_argument(v) for v in self.op_args),
            kwargs={k: plain_argument(v) for k, v in kwargs.items()},
            host=host,
            resources=resources,
            deployment=deployment,
        )

    def _log_file(self, context: Context, job_id: str | None) -> Path | None:
        """Where the job's own log is saved (for the "Meadowrun job log" link)."""
        base = conf.get("logging", "base_log_folder", fallback=None)
        if not job_id or not base:
            return None
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return job_log_file(
            base, ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else map_index, job_id
        )

    def _persist_job(
        self, context: Context, key: str | None, job_id: str | None, log_file: Path | None = None
    ) -> None:
        MeadowrunJobLogLink.persist(
            context,
            job_key=key,
            job_id=job_id,
            log_file=str(log_file) if log_file is not None and log_file.is_file() else None,
        )

    # --- running ------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        spec = self._job_spec(context)
        if not self.wait_for_completion:
            return self._submit_and_leave(context, spec)
        if self.deferrable:
            return self._submit_and_defer(context, spec)
        self.log.info("Running %s on meadowrun", spec.description)
        self._job = job = start_job(spec)
        failure: mr.TaskException | None = None
        value: Any = None
        try:
            try:
                value = job.wait()
            except mr.TaskException as exc:
                failure = exc
            job_id = job.job_id()
            log_file = self._log_file(context, job_id)
            last_line = job.finish(log_file)  # saves the job's log
            self._persist_job(context, None, job_id, log_file)
        except BaseException:
            # Timeouts (AirflowTaskTimeout), kills and errors: never leave the job behind.
            job.cancel()
            raise
        finally:
            job.close()
        if failure is not None:
            raise self._job_failed(failure.message, failure.remote_traceback) from None
        if isinstance(value, mr.CommandResult):
            self._check_exit_code(value.return_code)
            return last_line
        return value

    def _check_exit_code(self, return_code: int) -> None:
        if return_code in self.skip_on_exit_code:
            raise AirflowSkipException(f"the command exited with code {return_code}; skipping")
        if return_code != 0:
            raise AirflowException(
                f"the command failed on meadowrun: it exited with code {return_code}"
            )

    def _job_failed(self, message: str, remote_traceback: str) -> MeadowrunJobError:
        if remote_traceback:
            self.log.error(
                "The job failed on its meadowrun instance. Remote traceback:\n%s",
                remote_traceback.rstrip(),
            )
        return MeadowrunJobError(message, remote_traceback)

    def on_kill(self) -> None:
        """Cancel the job on its instance and wait until it has ended."""
        if self._job is not None:
            self.log.info("Cancelling the meadowrun job")
            self._job.cancel()
        if self._job_key is not None:
            self.log.info("Cancelling meadowrun job %s", self._job_key)
            mr.cancel_job(self._job_key, host=self._host)
