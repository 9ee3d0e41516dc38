"""The agent process of one local-cloud instance.

It listens on a loopback port (recorded in the allocation table), runs jobs that clients have
allocated on it, streams their output back, and every ``reconcile_interval`` it heartbeats,
frees allocations of dead workers or lapsed client leases, enforces memory, acts on
interruption notices and terminates itself when idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from meadowrun_core.agent.cloud import AgentCloud, LocalAgentCloud
from meadowrun_core.agent.gate import ConnectionGate
from meadowrun_core.agent.map_feeder import MapFeeder, Task
from meadowrun_core.agent.worker_pool import (
    WorkerDiedError,
    WorkerPool,
    WorkerProcess,
    describe_exit,
)
from meadowrun_core.config import Settings, meadowrun_home
from meadowrun_core.deployment.code_mirror import materialize
from meadowrun_core.deployment.instance import InstancePreparer, failure_payload, preparer_for
from meadowrun_core.deployment.process import DeploymentError
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.local.allocation_table import LAUNCH_GRACE_SECONDS
from meadowrun_core.local.sqlite_db import StateGoneError
from meadowrun_core.protocol import FrameTooLargeError, encode_frame, read_frame
from meadowrun_core.seams.object_store import DamagedObjectError, get_verified
from meadowrun_core.seams.spill import FRAME_INLINE_BYTES
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

log = logging.getLogger("meadowrun_core.agent")

# How much of a job's output the agent keeps for followers that attach late.
OUTPUT_REPLAY_BYTES = 1 << 20
# A job allocated here that has not arrived this long after its allocation never will.
NEVER_STARTED_SECONDS = LAUNCH_GRACE_SECONDS + 60


class ClientConnection:
    """The agent's side of one client connection; events for jobs are written here."""

    def __init__(self, writer: asyncio.StreamWriter, signer: Signer) -> None:
        self._writer = writer
        self._signer = signer

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        if self._writer.is_closing():
            return
        self._writer.write(encode_frame(self._signer, header, blob))


@dataclass(eq=False)
class RunningJob:
    job_id: str
    kind: str
    subscribers: list[ClientConnection]
    memory_gb: float
    process: psutil.Process | None = None
    worker: WorkerProcess | None = None
    command: asyncio.subprocess.Process | None = None
    cancel_reason: str | None = None
    end_status: str = "cancelled"
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # the tail of the job's output, replayed to a follower that attaches late
    output_log: deque[tuple[str, bytes]] = field(default_factory=deque)
    output_bytes: int = 0

    def output(self, stream: str, data: bytes) -> None:
        self.output_log.append((stream, data))
        self.output_bytes += len(data)
        while self.output_bytes > OUTPUT_REPLAY_BYTES and len(self.output_log) > 1:
            self.output_bytes -= len(self.output_log.popleft()[1])
        for subscriber in self.subscribers:
            self._send_output(subscriber, stream, data)

    def _send_output(
        self, subscriber: ClientConnection, stream: str, data: bytes, replay_for: str = ""
    ) -> None:
        header = {"type": "output", "job_id": self.job_id, "stream": stream}
        if replay_for:
            header["replay_for"] = replay_for
        subscriber.send(header, data)

    def report(self, payload: bytes) -> None:
        """A value the job sent with ``meadowrun_core.report``; only live followers get it."""
        for subscriber in self.subscribers:
            subscriber.send({"type": "report", "job_id": self.job_id}, payload)

    def attach(self, subscriber: ClientConnection, follower: str) -> None:
        """Follow from the start: replay the kept output to this follower, then stream live
        (a connection already subscribed gets the replay for the new follower only)."""
        for stream, data in self.output_log:
            self._send_output(subscriber, stream, data, follower)
        if subscriber not in self.subscribers:
            self.subscribers.append(subscriber)

    def kill(self, reason: str, status: str = "cancelled") -> None:
        """Stop the job now; ``status`` is what the client is told (cancelled, out_of_memory,
        interrupted, lease_expired)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.end_status = status
        self.stopping.set()
        if self.worker is not None:
            self.worker.kill(reason)
        if self.command is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.command.pid, signal.SIGKILL)


class Agent:
    def __init__(
        self,
        instance_id: str,
        home: Path,
        settings: Settings,
        idle_timeout: float,
        cloud: AgentCloud | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.home = home
        self.settings = settings
        self.idle_timeout = idle_timeout
        self.cloud = cloud or LocalAgentCloud(home)
        self.signer = self.cloud.signer
        self.gate = ConnectionGate(self.signer)
        self.table = self.cloud.table
        self.queues = self.cloud.queues
        self.store = self.cloud.store
        self.dir = home / "instances" / instance_id
        self.pid_dir = self.dir / "pids"
        self.code_dir = self.dir / "code"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.interruption_file = self.dir / "interruption_at"
        self.jobs: dict[str, RunningJob] = {}
        self.feeders: dict[str, MapFeeder] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._early_cancels: dict[str, str] = {}
        self.last_activity = time.monotonic()
        self.interruption_handled = False
        self.shutdown = asyncio.Event()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("MEADOWRUN_WORKER")}
        base_env["MEADOWRUN_HOME"] = str(home)
        base_env["MEADOWRUN_INSTANCE_ID"] = instance_id
        base_env["MEADOWRUN_INTERRUPTION_FILE"] = str(self.interruption_file)
        base_env.update(self.cloud.worker_environment())
        self.pool = WorkerPool(self.signer, base_env, max_idle=8)

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        server = await asyncio.start_server(self.handle_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await self.pool.prewarm(sys.executable)
        self.table.register_instance(self.instance_id, f"127.0.0.1:{port}", os.getpid())
        log.info("instance %s listening on 127.0.0.1:%d", self.instance_id, port)
        reconciler = asyncio.create_task(self.reconcile_loop())
        await self.shutdown.wait()
        reconciler.cancel()
        server.close()
        self.table.remove_instance(self.instance_id, "instance terminated")
        for job in list(self.jobs.values()):
            job.kill("instance terminated")
        self.pool.kill_all()
        await asyncio.sleep(0.05)
        log.info("instance %s terminated", self.instance_id)
        await asyncio.to_thread(self.cloud.terminate_self, self.instance_id)

    async def reconcile_loop(self) -> None:
        while not self.shutdown.is_set():
            try:
                await self.reconcile_once()
            except StateGoneError as exc:  # the home was deleted: nothing left to serve
                log.warning("%s; shutting down", exc)
                self.shutdown.set()
                self.table = _GoneTable()
            except Exception:
                log.exception("reconcile failed")
            await asyncio.sleep(self.settings.reconcile_interval_seconds)

    async def reconcile_once(self) -> None:
        record = self.table.heartbeat(self.instance_id)
        if record is None:
            log.info("instance record removed from the table; shutting down")
            self.shutdown.set()
            return
        interruption_at = record.interruption_at
        if interruption_at is None and not self.interruption_handled:
            interruption_at = await asyncio.to_thread(self.cloud.interruption_notice)
            if interruption_at is not None:  # the cloud said so: tell clients and jobs too
                self.table.request_interruption(
                    self.instance_id, max(0.0, interruption_at - time.time())
                )
        if interruption_at is not None:
            await self.handle_interruption(interruption_at)
            if self.shutdown.is_set():
                return
        for alloc in self.table.allocations_with_expired_lease(self.instance_id):
            job = self.jobs.get(alloc.job_id)
            if job is not None:
                log.info("client lease of job %s expired; stopping it", alloc.job_id)
                job.kill("the client's lease expired (client gone)", "lease_expired")
            elif time.time() - alloc.created > self.settings.lease_seconds:
                self.table.deallocate(alloc.job_id, "client lease expired")
        self.free_never_started()
        self.reap_pid_files()
        self.enforce_memory()
        if (
            not self.jobs
            and time.monotonic() - self.last_activity > self.idle_timeout
            and self.table.remove_instance_if_idle(self.instance_id)
        ):
            log.info("idle for %.0f s; terminating", self.idle_timeout)
            self.shutdown.set()

    def free_never_started(self) -> None:
        """Free allocations whose job never arrived (its client died between allocating and
        sending it); a detached job's own long lease would otherwise hold them."""
        cutoff = time.time() - NEVER_STARTED_SECONDS
        for alloc in self.table.list_allocations(self.instance_id):
            if alloc.job_id not in self.jobs and alloc.created < cutoff:
                log.info("job %s was allocated but never started; freeing it", alloc.job_id)
                self.table.deallocate(alloc.job_id, "never started")

    def reap_pid_files(self) -> None:
        """Free the allocation of a job this agent does not run whose PID file names a dead
        process (a job it runs is freed by ``run_job`` when its worker exits)."""
        for pid_file in self.pid_dir.glob("*.pid"):
            job_id = pid_file.stem
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if job_id in self.jobs or pid_is_alive(pid, pid_file):
                continue
            if self.table.deallocate(job_id, "worker died"):
                log.info("reconciler freed allocation of dead worker %s (pid %d)", job_id, pid)
            pid_file.unlink(missing_ok=True)

    def enforce_memory(self) -> None:
        for job in list(self.jobs.values()):
            pid = job.worker.pid if job.worker else job.command.pid if job.command else None
            if pid is None:
                continue
            try:
                proc = psutil.Process(pid)
                rss = proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True)
                )
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
        if not self.interruption_handled:
            self.interruption_handled = True
            log.warning("interruption notice: terminating at %.1f", interruption_at)
            self.interruption_file.write_text(repr(interruption_at))
            self.table.set_prevent_further_allocation(self.instance_id)
            for feeder in list(self.feeders.values()):
                feeder.interrupted = True
                await feeder.give_back()
        if time.time() >= interruption_at:
            for feeder in list(self.feeders.values()):
                await feeder.flush()
            for job in list(self.jobs.values()):
                job.kill("the instance was interrupted (spot reclaimed)", "interrupted")
            self.pool.kill_all()
            self.table.remove_instance(self.instance_id, "instance interrupted")
            self.shutdown.set()

    # --- client protocol ---------------------------------------------------------------
    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self.gate.admit(reader, writer):
            return
        conn = ClientConnection(writer, self.signer)
        try:
            while True:
                header, blob = await read_frame(reader, self.signer)
                if header["type"] == "run":
                    task = asyncio.create_task(self.run_job(conn, header, blob))
                    self._tasks.add(task)  # keep a reference until it finishes
                    task.add_done_callback(self._tasks.discard)
                elif header["type"] == "cancel":
                    reason = header.get("reason", "cancelled by the client")
                    job = self.jobs.get(header["job_id"])
                    if job is not None:
                        job.kill(reason)
                    else:  # the run frame's task has not started yet: cancel it on arrival
                        self._early_cancels[header["job_id"]] = reason
                elif header["type"] == "attach":
                    job = self.jobs.get(header["job_id"])
                    if job is None:
                        conn.send(
                            {"type": "final", "job_id": header["job_id"], "status": "unknown"}
                        )
                    else:
                        job.attach(conn, header.get("follower", ""))
                elif header["type"] == "stop":
                    job = self.jobs.get(header["job_id"])
                    if job is not None:
                        job.stopping.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (UnauthenticatedDataError, FrameTooLargeError) as exc:
            log.warning("closing a connection that sent a bad frame: %s", exc)
        finally:
            writer.close()

    async def run_job(self, conn: ClientConnection, header: dict[str, Any], blob: bytes) -> None:
        job_id = header["job_id"]
        alloc = next(
            (a for a in self.table.list_allocations(self.instance_id) if a.job_id == job_id), None
        )
        if alloc is None:
            conn.send(
                {
                    "type": "final",
                    "job_id": job_id,
                    "status": "refused",
                    "message": f"job {job_id} has no allocation on {self.instance_id}",
                }
            )
            return
        job = RunningJob(job_id, header["kind"], [conn], alloc.memory_gb)
        self.jobs[job_id] = job
        self.last_activity = time.monotonic()
        if header.get("job_key"):
            self.table.mark_job_key_started(header["job_key"])
        final: dict[str, Any] = {"status": "error", "message": "agent error"}
        payload = b""
        try:
            early_cancel = self._early_cancels.pop(job_id, None)
            if early_cancel is not None:
                final = {"status": "cancelled", "message": early_cancel}
            elif job.kind == "function":
                final, payload = await self.run_function(job, header, blob)
            elif job.kind == "command":
                final = await self.run_command(job, header)
            elif job.kind == "map":
                final = await self.run_map_slot(job, header)
            else:
                final = {"status": "refused", "message": f"unknown job kind {job.kind!r}"}
        except Exception as exc:
            log.exception("job %s failed in the agent", job_id)
            final = {"status": "error", "message": f"agent error: {exc!r}"}
        finally:
            final.update(type="final", job_id=job_id, kind=job.kind)
            # free the room first: whoever sees the outcome may rely on the room being free
            self.table.deallocate(job_id, final["status"])
            if header.get("job_key"):
                # keep the outcome where any process can find it by key (attach_job)
                payload_key = self.store.put(self.signer.sign(payload)) if payload else None
                if job.output_log:
                    final["output_key"] = self.store.put(
                        self.signer.sign(pickle.dumps(list(job.output_log)))
                    )
                self.table.record_job_final(header["job_key"], json.dumps(final), payload_key)
            del self.jobs[job_id]
            (self.pid_dir / f"{job_id}.pid").unlink(missing_ok=True)
            self.last_activity = time.monotonic()
        for subscriber in job.subscribers:
            subscriber.send(final, payload)

    def _preparer(self) -> InstancePreparer:
        """Prepares deployments on this instance, with secrets from its cloud's store."""
        return preparer_for(self.home, self.dir, self.store, self.signer, self.cloud.secrets.get)

    async def _prepare_worker(self, job: RunningJob, deployment: dict[str, Any]) -> WorkerProcess:
        prepared = PreparedDeployment.from_json(deployment)
        try:
            ready = await self._preparer().prepare(prepared)
        except DeploymentError as exc:
            raise _CodeLoadError(failure_payload(exc)) from None
        worker = await self.pool.acquire(ready.python, prepared.key(), ready.environment)
        worker.sink = job.output
        worker.report_sink = job.report
        job.worker = worker
        if job.cancel_reason:
            worker.kill(job.cancel_reason)
        if prepared.code_manifest and worker.code_loaded != prepared.code_manifest:
            reply, failure = await worker.request(
                self.signer,
                {
                    "type": "load_code",
                    "manifest": prepared.code_manifest,
                    "cache_dir": str(self.code_dir),
                },
            )
            if not reply["ok"]:
                self.pool.discard(worker)
                raise _CodeLoadError(failure)
            worker.code_loaded = prepared.code_manifest
        self.table.set_worker_pid(job.job_id, worker.pid)
        return worker

    async def _command_context(
        self, job: RunningJob, header: dict[str, Any]
    ) -> tuple[dict[str, str], str]:
        """Environment and working directory of a command: its deployment's interpreter first
        on PATH, the mirrored code on PYTHONPATH, and the mirror of the caller's working
        directory (else the git checkout, else a scratch directory) as cwd."""
        prepared = PreparedDeployment.from_json(header["deployment"])
        ready = await self._preparer().prepare(prepared)
        env = {**os.environ, **ready.environment, **header.get("environment", {})}
        env["PYTHONUNBUFFERED"] = "1"
        env["PATH"] = os.pathsep.join([os.path.dirname(ready.python), env.get("PATH", "")])
        cwd = ready.workdir
        if prepared.code_manifest:
            roots = await asyncio.to_thread(
                materialize, self.store, self.signer, prepared.code_manifest, self.code_dir
            )
            python_path = [r.path for r in roots]
            if env.get("PYTHONPATH"):
                python_path.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(python_path)
            caller_cwd = header.get("caller_cwd")
            cwd = next((r.path for r in roots if r.original == caller_cwd), cwd)
        if cwd is None:
            scratch = self.dir / "jobs" / job.job_id
            scratch.mkdir(parents=True, exist_ok=True)
            cwd = str(scratch)
        return env, header.get("cwd") or cwd

    def _worker_gone(
        self, job: RunningJob, worker: WorkerProcess, exc: WorkerDiedError
    ) -> dict[str, Any]:
        self.pool.release(worker)
        if job.cancel_reason:
            return {"status": job.end_status, "message": job.cancel_reason}
        return {"status": "died", "message": describe_exit(exc.returncode)}

    async def run_function(
        self, job: RunningJob, header: dict[str, Any], blob: bytes
    ) -> tuple[dict[str, Any], bytes]:
        try:
            worker = await self._prepare_worker(job, header["deployment"])
        except _CodeLoadError as exc:
            return {"status": "failed", "stage": "load"}, exc.failure
        except WorkerDiedError as exc:
            return {"status": "died", "message": f"worker could not start: {exc}"}, b""
        call: dict[str, Any] = {
            k: header[k] for k in ("function_key", "function_name") if k in header
        }
        call.update(
            type="call", call_id=job.job_id, pid_file=str(self.pid_dir / f"{job.job_id}.pid")
        )
        try:
            if header.get("arguments_key"):  # too large for a frame: in the object store
                blob = await asyncio.to_thread(
                    get_verified, self.store, self.signer, header["arguments_key"]
                )
        except (KeyError, DamagedObjectError) as exc:
            self.pool.release(worker)
            return {"status": "failed", "stage": "load"}, failure_payload(exc)
        try:
            reply, payload = await worker.request(self.signer, call, blob)
        except WorkerDiedError as exc:
            return self._worker_gone(job, worker, exc), b""
        self.pool.release(worker)
        if reply["ok"]:
            if len(payload) > FRAME_INLINE_BYTES:  # too large for a frame: by reference
                key = await asyncio.to_thread(self.store.put, self.signer.sign(payload))
                return {"status": "succeeded", "result_key": key}, b""
            return {"status": "succeeded"}, payload
        return {"status": "failed", "stage": reply.get("stage", "run")}, payload

    async def run_command(self, job: RunningJob, header: dict[str, Any]) -> dict[str, Any]:
        try:
            env, cwd = await self._command_context(job, header)
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
        if job.cancel_reason:  # cancelled while it was being started
            job.kill(job.cancel_reason, job.end_status)
        (self.pid_dir / f"{job.job_id}.pid").write_text(str(proc.pid))
        self.table.set_worker_pid(job.job_id, proc.pid)

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

    async def run_map_slot(self, job: RunningJob, header: dict[str, Any]) -> dict[str, Any]:
        spec = header["map"]
        feeder = self.feeders.get(spec["request_queue"])
        if feeder is None:
            feeder = MapFeeder(
                self.queues,
                self.signer,
                spec["request_queue"],
                spec["result_queue"],
                spec["max_attempts"],
                self.settings.visibility_timeout_seconds,
                store=self.store,
            )
            self.feeders[spec["request_queue"]] = feeder
            feeder.start()
        feeder.slots += 1
        worker: WorkerProcess | None = None
        in_flight: list[Task] = []
        try:
            worker = await self._prepare_worker(job, header["deployment"])
            pace = _BatchPace()
            call = {
                "type": "call_batch",
                "function_key": spec["function_key"],
                "pid_file": str(self.pid_dir / f"{job.job_id}.pid"),
            }
            while in_flight := await feeder.next_tasks(job.stopping, pace.size):
                # the worker streams one reply per task, so a death pins down its task
                await worker.send(self.signer, call, pickle.dumps([t.argument for t in in_flight]))
                pace.restart()
                while in_flight:
                    reply, payload = await worker.receive(self.signer)
                    task = in_flight.pop(0)
                    feeder.complete(
                        task, reply["ok"], payload, "" if reply["ok"] else reply["stage"]
                    )
                    pace.record()
                worker.drain_output()
            self.pool.release(worker)
            if feeder.interrupted:
                return {"status": "interrupted", "message": "instance interruption notice"}
            return {"status": "stopped"}
        except _CodeLoadError as exc:
            return {"status": "failed", "stage": "load", "message": _failure_text(exc.failure)}
        except WorkerDiedError as exc:
            died = (
                self._worker_gone(job, worker, exc)
                if worker
                else {"status": "died", "message": str(exc)}
            )
            if in_flight:
                running, *not_started = in_flight
                feeder.complete(running, False, pickle.dumps((None, died["message"])), "died")
                feeder.put_back(not_started)
            return died
        finally:
            feeder.slots -= 1
            if feeder.slots == 0:
                self.feeders.pop(spec["request_queue"], None)
                await feeder.close()
                if job.end_status == "lease_expired":
                    self.queues.delete_queue(spec["request_queue"])
                    self.queues.delete_queue(spec["result_queue"])


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


class _BatchPace:
    """How many tasks to hand a worker at once: about 5 ms of work, so tiny tasks share a
    frame while long ones go one by one and stay balanced across workers."""

    TARGET_SECONDS = 0.005
    MAX_TASKS = 64

    def __init__(self) -> None:
        self.size = 1
        self._last = time.perf_counter()
        self._mean: float | None = None

    def record(self) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self._mean = elapsed if self._mean is None else 0.8 * self._mean + 0.2 * elapsed
        self.size = max(1, min(self.MAX_TASKS, int(self.TARGET_SECONDS / max(self._mean, 1e-6))))

    def restart(self) -> None:
        self._last = time.perf_counter()


class _CodeLoadError(Exception):
    def __init__(self, failure: bytes) -> None:
        self.failure = failure


def _failure_text(failure: bytes) -> str:
    try:
        return str(pickle.loads(failure)[1])
    except Exception:
        return "code could not be loaded"


def main() -> None:
    parser = argparse.ArgumentParser(description="meadowrun local-cloud instance agent")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--cloud", choices=("local", "aws"), default="local")
    parser.add_argument("--region", default=None, help="the AWS region (--cloud aws)")
    args = parser.parse_args()
    os.umask(0o077)  # everything the agent and its workers write is private to this user
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    home = meadowrun_home()
    cloud: AgentCloud | None = None
    if args.cloud == "aws":
        from meadowrun_core.aws.agent_cloud import AwsAgentCloud

        cloud = AwsAgentCloud(home, args.region)
    agent = Agent(args.instance_id, home, Settings.from_env(), args.idle_timeout, cloud)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.shutdown.set)
        await agent.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
