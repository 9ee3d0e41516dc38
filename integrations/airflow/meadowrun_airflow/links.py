"""``MeadowrunJobLogLink``: the "Meadowrun job log" button of a MeadowrunOperator task.

As the Amazon provider's Batch links do, the operator persists what the link needs in an XCom
while it runs (``persist``) and the link is built from it (``get_link``). It points at the
job's own log: its output (stdout and stderr, as the job wrote it, without Airflow's log
prefixes), saved by the worker when the job ended under Airflow's log folder
(``[logging] base_log_folder``/meadowrun/...). A job started with
``wait_for_completion=False`` has no saved log (nobody followed it): its link is empty, and
``mr.attach_job(job_key)`` replays its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

# The XCom that holds the job's identity and the path of its saved log.
JOB_XCOM_KEY = "meadowrun_job"


class MeadowrunJobLogLink(BaseOperatorLink):
    """A ``file://`` URL of the job's saved log (empty while it has none)."""

    name = "Meadowrun job log"
    key = JOB_XCOM_KEY

    @classmethod
    def persist(cls, context: Context, **job: Any) -> None:
        """Record the job (``job_key``, ``job_id``, ``log_file``, ...) for the link."""
        context["ti"].xcom_push(key=cls.key, value=job)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        job = XCom.get_value(ti_key=ti_key, key=self.key)
        log_file = job.get("log_file") if isinstance(job, dict) else None
        return Path(log_file).as_uri() if log_file else ""
