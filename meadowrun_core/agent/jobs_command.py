"""A command job: a process in its own session, run with its deployment's interpreter and
code, its output streamed to the job's followers."""

from __future__ import annotations

import asyncio
import os

from meadowrun_core import frames
from meadowrun_core.agent.job_setup import preparer
from meadowrun_core.agent.running_job import RunningJob
from meadowrun_core.agent.state import AgentState
from meadowrun_core.deployment.code_materialize import materialize
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.deployment.spec import PreparedDeployment


async def run_command(
    state: AgentState, job: RunningJob, header: frames.RunCommand
) -> frames.JobOutcome:
    """Run the command to its exit (or until it is killed); its outcome."""
    try:
        env, cwd = await _command_context(state, job, header)
    except DeploymentError as exc:
        return {"status": "failed_to_start", "message": str(exc)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *header["args"],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        return {
            "status": "failed_to_start",
            "message": f"cannot run {header['args'][0]!r}: {exc}",
        }
    job.command = proc
    job.start_clock()
    if job.cancel_reason:  # cancelled while it was being started
        job.kill(job.cancel_reason, job.end_status)
    state.folders.pid_file(job.job_id).write_text(str(proc.pid))
    state.table.set_worker_pid(job.job_id, proc.pid)

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            job.output(name, chunk)

    await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
    returncode = await proc.wait()
    if job.cancel_reason:
        return {
            "status": job.end_status,
            "message": job.cancel_reason,
            "return_code": returncode,
        }
    return {"status": "exited", "return_code": returncode}


async def _command_context(
    state: AgentState, job: RunningJob, header: frames.RunCommand
) -> tuple[dict[str, str], str]:
    """Environment and working directory of a command: its deployment's interpreter first
    on PATH, the mirrored code on PYTHONPATH, and the mirror of the caller's working
    directory (else the git checkout, else a scratch directory) as cwd."""
    prepared = PreparedDeployment.from_json(header["deployment"])
    ready = await preparer(state).prepare(prepared)
    env = {**os.environ, **ready.environment, **header.get("environment", {})}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = os.pathsep.join([os.path.dirname(ready.python), env.get("PATH", "")])
    env["MEADOWRUN_INSTANCE_ID"] = state.instance_id  # as a worker's: it runs in a job
    cwd = ready.workdir
    if prepared.code_manifest:
        roots = await asyncio.to_thread(
            materialize, state.store, state.signer, prepared.code_manifest, state.folders.code_dir
        )
        python_path = [r.path for r in roots]
        if env.get("PYTHONPATH"):
            python_path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(python_path)
        caller_cwd = header.get("caller_cwd")
        cwd = next((r.path for r in roots if r.original == caller_cwd), cwd)
    if cwd is None:
        scratch = state.folders.dir / "jobs" / job.job_id
        scratch.mkdir(parents=True, exist_ok=True)
        cwd = str(scratch)
    return env, header.get("cwd") or cwd
