"""The runs of ``MeadowrunOperator`` whose job outlives the worker's attention: with
``wait_for_completion=False`` it submits the job detached under the task instance's key and
leaves; with ``deferrable=True`` it submits (or reattaches to an earlier try's job), frees the
worker slot while ``MeadowrunJobTrigger`` follows the job, and resumes in
``execute_complete``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

import meadowrun_core as mr
from meadowrun_airflow.jobs import (
    CANCEL_WAIT_SECONDS,
    NOT_ENDED,
    PENDING,
    UNKNOWN,
    JobSpec,
    OutputLines,
    host_to_json,
    job_key,
    job_output_not_logged,
    local_home,
    outcome_event,
    read_job,
    submit_detached,
    wait_until_started,
)

# How long resuming waits to read a finished job's value from meadowrun's store.
RESULT_READ_SECONDS = 120.0

# typed as the operator it is mixed into, without being a second BaseOperator at run time
if TYPE_CHECKING:
    _OperatorBase = BaseOperator
else:
    _OperatorBase = object


class DetachedJobMixin(_OperatorBase):
    """Fire-and-forget and deferrable runs of ``MeadowrunOperator``: the job is submitted
    detached under the task instance's key (``job_key``), so a later try, the trigger and
    ``execute_complete`` find it by that key."""

    _job_key: str | None

    # --- provided by MeadowrunOperator ----------------------------------------------------
    def _resolve_host(self) -> mr.Host | None:
        raise NotImplementedError

    def _log_file(self, context: Context, job_id: str | None) -> Path | None:
        raise NotImplementedError

    def _persist_job(
        self, context: Context, key: str | None, job_id: str | None, log_file: Path | None = None
    ) -> None:
        raise NotImplementedError

    def _check_exit_code(self, return_code: int) -> None:
        raise NotImplementedError

    def _job_failed(self, message: str, remote_traceback: str) -> AirflowException:
        raise NotImplementedError

    def _key(self, context: Context) -> str:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return job_key(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else map_index)

    def _finished_outcome(
        self, key: str, host: mr.Host | None, log_output: bool = True
    ) -> dict[str, Any]:
        """The outcome of a job that has ended. Its output is replayed from the start: into
        this task's log if ``log_output``, and for a command's last stdout line."""
        job_id = mr.job_info(key, host=host)["job_id"]
        lines = OutputLines(
            (lambda level, text: self.log.log(level, "[%s] %s", job_id, text))
            if log_output
            else None
        )
        return outcome_event(
            key,
            lambda: mr.attach_job(key, host=host, on_output=lines.feed).result(
                timeout=RESULT_READ_SECONDS
            ),
            lines,
            host,
        )

    # --- fire and forget ------------------------------------------------------------------
    def _submit_and_leave(self, context: Context, spec: JobSpec) -> str:
        """``wait_for_completion=False``: submit the job detached under the task instance's
        key and return the key; a job of an earlier try that still runs is not started
        again."""
        key = self._job_key = self._key(context)
        host = spec.host
        with job_output_not_logged():
            status = mr.job_status(key, host=host)
            if status in NOT_ENDED:
                self.log.info(
                    "Job %s (started by an earlier try) is %s; not starting it again", key, status
                )
            else:
                if status != UNKNOWN:
                    self.log.info(
                        "Job %s of an earlier try ended %s; starting it again", key, status
                    )
                    mr.forget_job(key, host=host)
                timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
                handle = submit_detached(key, spec, timeout)
                if wait_until_started(key, handle, host) == PENDING:
                    # the submission failed before the job reached an instance
                    self.execute_complete(context, outcome_event(key, handle.result, host=host))
                handle.stop_following()  # the job runs on, on its own lease
        job_id = mr.job_info(key, host=host)["job_id"]
        self.log.info(
            "Submitted %s to meadowrun as job %s (meadowrun job id %s); not waiting "
            "for it (wait_for_completion=False)",
            spec.description,
            key,
            job_id,
        )
        context["ti"].xcom_push(key="meadowrun_job_key", value=key)
        self._persist_job(context, key, job_id)
        return key

    # --- deferrable mode ------------------------------------------------------------------
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
                self.log.info(
                    "Job %s already finished (started by an earlier try); using its result", key
                )
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
                return self.execute_complete(context, outcome_event(key, handle.result, host=host))
            handle.stop_following()  # the job runs on; the trigger follows it
            self.log.info(
                "Submitted %s to meadowrun as job %s (meadowrun job id %s)",
                spec.description,
                key,
                mr.job_info(key, host=host)["job_id"],
            )
            self._persist_job(context, key, mr.job_info(key, host=host)["job_id"])
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
            if self.execution_timeout
            else None,
        )

    def execute_complete(
        self, context: Context, event: dict[str, Any], last_line: str | None = None
    ) -> Any:
        """Resume after the trigger saw the job end: return its result or fail the task.

        ``last_line`` is accepted from tasks deferred by earlier versions of this operator
        (the last stdout line their worker saw before deferring)."""
        key = self._job_key = event["job_key"]
        host = self._resolve_host()
        status = event.get("status")
        log_file = self._log_file(context, event.get("job_id"))
        try:
            # the value stays in meadowrun's store; reading it replays the job's output too,
            # which is saved as the job's log (for the "Meadowrun job log" link)
            value: Any = None
            try:
                value, _ = read_job(
                    key,
                    host,
                    log_file,
                    RESULT_READ_SECONDS if status == "succeeded" else CANCEL_WAIT_SECONDS,
                )
            except (mr.MeadowrunError, TimeoutError):
                if status == "succeeded":
                    raise
            finally:
                self._persist_job(context, key, event.get("job_id"), log_file)
            if status == "succeeded":
                self.log.info("Job %s succeeded", key)
                return value
            if status == "exited":
                self._check_exit_code(int(event["return_code"]))
                return event.get("last_line") or last_line
            if status == "timed_out":
                raise AirflowTaskTimeout(
                    f"meadowrun job {key} ran past the execution_timeout "
                    f"and was stopped: {event.get('message', '')}"
                )
            if status == "failed":
                raise self._job_failed(
                    f"job {key}: {event.get('message', '')}", event.get("traceback", "")
                )
            raise AirflowException(
                f"meadowrun job {key} ended {status}: {event.get('message', '')}"
            )
        finally:
            mr.forget_job(key, host=host)
