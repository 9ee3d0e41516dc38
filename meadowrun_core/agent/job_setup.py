"""What every kind of job needs before it runs: its deployment prepared on this instance and,
for functions and map slots, a worker of that deployment with its code loaded."""

from __future__ import annotations

import asyncio

from meadowrun_core import frames
from meadowrun_core.agent.running_job import RunningJob
from meadowrun_core.agent.state import AgentState
from meadowrun_core.agent.worker_pool import WorkerDiedError, WorkerProcess, describe_exit
from meadowrun_core.deployment.instance import InstancePreparer, failure_payload, preparer_for
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.deployment.spec import PreparedDeployment


class CodeLoadError(Exception):
    """The job's deployment or code could not be loaded; ``failure`` is the pickled
    ``(exception or None, traceback text)`` for the client."""

    def __init__(self, failure: bytes) -> None:
        self.failure = failure


def preparer(state: AgentState) -> InstancePreparer:
    """Prepares deployments on this instance, with secrets from its cloud's store."""
    return preparer_for(
        state.home, state.folders.dir, state.store, state.signer, state.cloud.secrets.get
    )


def _prepared(state: AgentState, deployment: frames.DeploymentJson) -> PreparedDeployment:
    """The run frame's deployment; the last one's object (its key worked out already) while
    a client sends the same again, as a caller's loop of calls does."""
    last = state.last_deployment
    if last is not None and last[0] == deployment:
        return last[1]
    prepared = PreparedDeployment.from_json(deployment)
    state.last_deployment = (deployment, prepared)
    return prepared


async def prepare_worker(
    state: AgentState, job: RunningJob, deployment: frames.DeploymentJson, record_pid: bool = True
) -> WorkerProcess:
    """A worker for the job's deployment with its code loaded, its output and reports going
    to the job; CodeLoadError if the deployment or code cannot be loaded. ``record_pid``
    False: the caller puts the worker's PID in the table itself (``record_pid_soon``)."""
    prepared = _prepared(state, deployment)
    try:
        ready = await preparer(state).prepare(prepared)
    except DeploymentError as exc:
        raise CodeLoadError(failure_payload(exc)) from None
    worker = await state.pool.acquire(ready.python, prepared.key(), ready.environment)
    job.workdir = ready.workdir
    worker.sink = job.output
    worker.report_sink = job.report
    job.worker = worker
    if job.cancel_reason:
        worker.kill(job.cancel_reason)
    if prepared.code_manifest and worker.code_loaded != prepared.code_manifest:
        load: frames.LoadCode = {
            "type": "load_code",
            "manifest": prepared.code_manifest,
            "cache_dir": str(state.folders.code_dir),
        }
        reply, failure = await worker.request(state.signer, load)
        if not reply["ok"]:
            state.pool.discard(worker)
            raise CodeLoadError(failure)
        worker.code_loaded = prepared.code_manifest
    if record_pid:
        state.table.set_worker_pid(job.job_id, worker.pid)
    return worker


# how long a function job runs before its worker's PID goes into the allocation table and
# its PID file
RECORD_PID_AFTER_SECONDS = 0.05


def record_pid_soon(state: AgentState, job: RunningJob, pid: int) -> None:
    """Put the worker's PID in the table (``meadowrun jobs`` shows it) and in the job's PID
    file (the reconciler's) once the job has run ``RECORD_PID_AFTER_SECONDS``: a short call
    has ended by then, which saves a write transaction and two file operations on its round
    trip. Until then nothing needs them: the agent itself runs the job (and frees it if the
    worker dies), and the worker dies with the agent."""

    def record() -> None:
        if state.jobs.get(job.job_id) is job:
            state.folders.pid_file(job.job_id).write_text(str(pid))
            job.has_pid_file = True
            state.table.set_worker_pid(job.job_id, pid)

    asyncio.get_running_loop().call_later(RECORD_PID_AFTER_SECONDS, record)


def worker_gone(
    state: AgentState, job: RunningJob, worker: WorkerProcess, exc: WorkerDiedError
) -> frames.JobOutcome:
    """The outcome of a job whose worker died: the reason it was stopped for, if it was."""
    state.pool.release(worker)
    if job.cancel_reason:
        return {"status": job.end_status, "message": job.cancel_reason}
    return {"status": "died", "message": describe_exit(exc.returncode)}
