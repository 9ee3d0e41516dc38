"""The agent's periodic pass over its instance: every ``reconcile_interval`` it heartbeats its
table record, acts on interruption notices, stops jobs whose client lease lapsed, frees the
allocations of jobs that never arrived or whose worker died, enforces memory, and ends the
instance once it has been idle for ``idle_timeout``."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import psutil

from meadowrun_core.agent import held_rooms
from meadowrun_core.agent.process_memory import tree_rss
from meadowrun_core.agent.state import AgentState
from meadowrun_core.exceptions import StateGoneError
from meadowrun_core.seams.allocation_table import LAUNCH_GRACE_SECONDS

log = logging.getLogger("meadowrun_core.agent")

# A job allocated here that has not arrived this long after its allocation never will.
NEVER_STARTED_SECONDS = LAUNCH_GRACE_SECONDS + 60


class Reconciler:
    """Keeps the table, the running jobs and the instance's life in step with what is
    really there (the agent runs ``loop`` until it shuts down)."""

    def __init__(self, state: AgentState, idle_timeout: float) -> None:
        self.state = state
        self.idle_timeout = idle_timeout
        self.interruption_handled = False

    async def loop(self) -> None:
        state = self.state
        while not state.shutdown.is_set():
            try:
                await self.reconcile_once()
            except StateGoneError as exc:  # the home was deleted: nothing left to serve
                log.warning("%s; shutting down", exc)
                state.shutdown.set()
                state.table = _GoneTable()
            except Exception:
                log.exception("reconcile failed")
            await asyncio.sleep(state.settings.reconcile_interval_seconds)

    async def reconcile_once(self) -> None:
        state = self.state
        record = state.table.heartbeat(state.instance_id)
        if record is None:
            log.info("instance record removed from the table; shutting down")
            state.shutdown.set()
            return
        interruption_at = record.interruption_at
        if interruption_at is None and not self.interruption_handled:
            interruption_at = await asyncio.to_thread(state.cloud.interruption_notice)
            if interruption_at is not None:  # the cloud said so: tell clients and jobs too
                state.table.request_interruption(
                    state.instance_id, max(0.0, interruption_at - time.time())
                )
        if interruption_at is not None:
            await self.handle_interruption(interruption_at)
            if state.shutdown.is_set():
                return
        for alloc in state.table.allocations_with_expired_lease(state.instance_id):
            job = state.jobs.get(alloc.job_id)
            if job is not None:
                log.info("client lease of job %s expired; stopping it", alloc.job_id)
                job.kill("the client's lease expired (client gone)", "lease_expired")
            elif alloc.job_id in state.held:
                held_rooms.release(state, alloc.job_id)
            elif time.time() - alloc.created > state.settings.lease_seconds:
                state.table.deallocate(alloc.job_id, "client lease expired")
        self.free_never_started()
        self.reap_pid_files()
        self.enforce_memory()
        if (
            not state.jobs
            and time.monotonic() - state.last_activity > self.idle_timeout
            and state.table.remove_instance_if_idle(state.instance_id)
        ):
            log.info("idle for %.0f s; terminating", self.idle_timeout)
            state.shutdown.set()

    def free_never_started(self) -> None:
        """Free allocations whose job never arrived (its client died between allocating and
        sending it); a detached job's own long lease would otherwise hold them."""
        state = self.state
        cutoff = time.time() - NEVER_STARTED_SECONDS
        for alloc in state.table.list_allocations(state.instance_id):
            if (
                alloc.job_id not in state.jobs
                and alloc.job_id not in state.held
                and alloc.created < cutoff
            ):
                log.info("job %s was allocated but never started; freeing it", alloc.job_id)
                state.table.deallocate(alloc.job_id, "never started")

    def reap_pid_files(self) -> None:
        """Free the allocation of a job this agent does not run whose PID file names a dead
        process (a job it runs is freed by ``Agent.run_job`` when its worker exits)."""
        state = self.state
        for pid_file in state.folders.pid_dir.glob("*.pid"):
            job_id = pid_file.stem
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if job_id in state.jobs or pid_is_alive(pid, pid_file):
                continue
            if state.table.deallocate(job_id, "worker died"):
                log.info("reconciler freed allocation of dead worker %s (pid %d)", job_id, pid)
            pid_file.unlink(missing_ok=True)

    def enforce_memory(self) -> None:
        for job in list(self.state.jobs.values()):
            pid = job.worker.pid if job.worker else job.command.pid if job.command else None
            if pid is None:
                continue
            try:
                rss = tree_rss(pid)
            except psutil.Error:
                continue
            limit = job.memory_gb * 2**30
            if rss > limit:
                job.kill(
                    f"out of memory: the job used {rss / 2**30:.2f} GB, more than the "
                    f"{job.memory_gb:g} GB it asked for; ask for more with "
                    f"Resources(memory_gb=...)",
                    "out_of_memory",
                )

    async def handle_interruption(self, interruption_at: float) -> None:
        """On the first notice: tell jobs (the interruption file), take no more allocations,
        and give unfinished map tasks back; at the time itself, stop everything and leave."""
        state = self.state
        if not self.interruption_handled:
            self.interruption_handled = True
            log.warning("interruption notice: terminating at %.1f", interruption_at)
            state.folders.interruption_file.write_text(repr(interruption_at))
            state.table.set_prevent_further_allocation(state.instance_id)
            for job_id in list(state.held):  # no further call starts here
                held_rooms.release(state, job_id)
            for feeder in list(state.feeders.values()):
                feeder.interrupted = True
                await feeder.give_back()
        if time.time() >= interruption_at:
            # tasks still running are the instance's loss, not theirs: back to the queue with
            # their attempts unchanged before their workers die (a late notice, or a task
            # longer than the notice, must not use up an attempt)
            for feeder in list(state.feeders.values()):
                await feeder.give_back()
            for job in list(state.jobs.values()):
                job.kill("the instance was interrupted (spot reclaimed)", "interrupted")
            state.pool.kill_all()
            state.table.remove_instance(state.instance_id, "instance interrupted")
            state.shutdown.set()


def pid_is_alive(pid: int, pid_file: Path) -> bool:
    """Whether the process a PID file names still runs: not a zombie, and not a newer process
    that reused the PID (started after the file was written)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= pid_file.stat().st_mtime + 1.0
    except (psutil.Error, OSError):
        return False


class _GoneTable:
    """Stands in for the table of a deleted home while the agent shuts down."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
