"""The agent process of one instance: ``python -m meadowrun_core.agent.server``.

It listens on a loopback port (recorded in the allocation table), runs jobs that clients have
allocated on it (``jobs_function``, ``jobs_command``, ``jobs_map``), streams their output
back (``running_job``), and reconciles its instance every ``reconcile_interval``
(``reconciler``) until it is idle, interrupted or told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import cast

from meadowrun_core import clouds, event_loop, frames
from meadowrun_core.agent import held_rooms
from meadowrun_core.agent.cloud import AgentCloud
from meadowrun_core.agent.gate import ConnectionGate
from meadowrun_core.agent.jobs_command import run_command
from meadowrun_core.agent.jobs_function import run_function
from meadowrun_core.agent.jobs_map import run_map_slot
from meadowrun_core.agent.reconciler import Reconciler
from meadowrun_core.agent.running_job import ClientConnection, RunningJob
from meadowrun_core.agent.state import AgentState, InstanceFolders
from meadowrun_core.agent.worker_pool import WorkerPool
from meadowrun_core.config import Settings, meadowrun_home
from meadowrun_core.protocol import FrameTooLargeError, read_frame
from meadowrun_core.serialization import UnauthenticatedDataError

log = logging.getLogger("meadowrun_core.agent")


class Agent:
    """Wires an instance's parts together and serves its clients: reads their frames and
    starts, cancels, stops and attaches to jobs."""

    def __init__(
        self,
        instance_id: str,
        home: Path,
        settings: Settings,
        idle_timeout: float,
        cloud: AgentCloud,
    ) -> None:
        folders = InstanceFolders(home / "instances" / instance_id)
        folders.pid_dir.mkdir(parents=True, exist_ok=True)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("MEADOWRUN_WORKER")}
        base_env["MEADOWRUN_HOME"] = str(home)
        base_env["MEADOWRUN_INSTANCE_ID"] = instance_id
        base_env["MEADOWRUN_INTERRUPTION_FILE"] = str(folders.interruption_file)
        base_env.update(cloud.worker_environment())
        self.state = AgentState(
            instance_id,
            home,
            folders,
            settings,
            cloud,
            WorkerPool(cloud.signer, base_env, max_idle=8),
            cloud.table,
        )
        self.gate = ConnectionGate(cloud.signer)
        self.reconciler = Reconciler(self.state, idle_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        # cancels whose run frame's job had not started yet: cancelled on arrival
        self._early_cancels: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        state = self.state
        server = await asyncio.start_server(self.handle_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await state.pool.prewarm(sys.executable)
        state.table.register_instance(state.instance_id, f"127.0.0.1:{port}", os.getpid())
        log.info(
            "instance %s listening on 127.0.0.1:%d (%s event loop)",
            state.instance_id, port, event_loop.chosen(),
        )  # fmt: skip
        reconciler = asyncio.create_task(self.reconciler.loop())
        await state.shutdown.wait()
        reconciler.cancel()
        server.close()
        state.table.remove_instance(state.instance_id, "instance terminated")
        for job in list(state.jobs.values()):
            job.kill("instance terminated")
        state.pool.kill_all()
        await asyncio.sleep(0.05)
        log.info("instance %s terminated", state.instance_id)
        await asyncio.to_thread(state.cloud.terminate_self, state.instance_id)

    # --- client protocol ---------------------------------------------------------------
    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self.gate.admit(reader, writer):
            return
        conn = ClientConnection(writer, self.state.signer)
        try:
            while True:
                header, blob = await read_frame(reader, self.state.signer)
                if header["type"] == "run":
                    run = cast(frames.Run, header)
                    # admitted before the next frame is read: a stop or cancel the client
                    # sent right after this run frame finds the job
                    job = self._admit(conn, run)
                    if job is not None:
                        task = asyncio.create_task(self.run_job(job, run, blob))
                        self._tasks.add(task)  # keep a reference until it finishes
                        task.add_done_callback(self._tasks.discard)
                elif header["type"] == "cancel":
                    self._cancel(cast(frames.Cancel, header))
                elif header["type"] == "attach":
                    self._attach(conn, cast(frames.Attach, header))
                elif header["type"] == "stop":
                    self._stop(cast(frames.Stop, header))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (UnauthenticatedDataError, FrameTooLargeError) as exc:
            log.warning("closing a connection that sent a bad frame: %s", exc)
        finally:
            writer.close()
            held_rooms.release_connection(self.state, conn)

    def _cancel(self, header: frames.Cancel) -> None:
        reason = header.get("reason", "cancelled by the client")
        job = self.state.jobs.get(header["job_id"])
        if job is not None:
            job.kill(reason)
        elif header["job_id"] in self.state.held:  # it ended: only its held room is left
            held_rooms.release(self.state, header["job_id"])
        else:  # the run frame's task has not started yet: cancel it on arrival
            self._early_cancels[header["job_id"]] = reason

    def _attach(self, conn: ClientConnection, header: frames.Attach) -> None:
        job = self.state.jobs.get(header["job_id"])
        if job is None:
            unknown: frames.Final = {
                "type": "final",
                "job_id": header["job_id"],
                "status": "unknown",
            }
            conn.send(unknown)
        else:
            job.attach(conn, header.get("follower", ""))

    def _stop(self, header: frames.Stop) -> None:
        job = self.state.jobs.get(header["job_id"])
        if job is not None:
            job.stopping.set()

    # --- jobs --------------------------------------------------------------------------
    def _admit(self, conn: ClientConnection, header: frames.Run) -> RunningJob | None:
        """The job of a run frame, registered as running; None (the client told) when it
        has no allocation on this instance."""
        state = self.state
        job_id = header["job_id"]
        refused: frames.Final = {"type": "final", "job_id": job_id, "status": "refused"}
        if header.get("reuse"):  # the room its previous call left held (held_rooms)
            room = held_rooms.take(state, job_id, conn)
            if room is None:
                refused["message"] = f"the room held for job {job_id} was given back"
                refused["hold_lapsed"] = True
                conn.send(refused)
                return None
            memory_gb = room.memory_gb
        else:
            alloc = next(
                (a for a in state.table.list_allocations(state.instance_id) if a.job_id == job_id),
                None,
            )
            if alloc is None:
                refused["message"] = f"job {job_id} has no allocation on {state.instance_id}"
                conn.send(refused)
                return None
            memory_gb = alloc.memory_gb
        job = RunningJob(job_id, header["kind"], [conn], memory_gb, timeout=header.get("timeout"))
        state.jobs[job_id] = job
        state.last_activity = time.monotonic()
        early_cancel = self._early_cancels.pop(job_id, None)
        if early_cancel is not None:
            job.kill(early_cancel)
        return job

    async def run_job(self, job: RunningJob, header: frames.Run, blob: bytes) -> None:
        """Run an admitted job to its end, free its allocation, keep a keyed job's outcome,
        and send the final frame to everyone following it."""
        state = self.state
        job_id = job.job_id
        if header.get("job_key"):
            state.table.mark_job_key_started(header["job_key"])
        outcome: frames.JobOutcome = {"status": "error", "message": "agent error"}
        payload = b""
        try:
            if job.cancel_reason is not None:  # cancelled before it started
                outcome = {"status": job.end_status, "message": job.cancel_reason}
            else:
                outcome, payload = await self._run_kind(job, header, blob)
        except Exception as exc:
            log.exception("job %s failed in the agent", job_id)
            outcome = {"status": "error", "message": f"agent error: {exc!r}"}
        finally:
            job.stop_clock()
            # (cast: mypy cannot rule out an ``output_key`` of another type in the outcome)
            final = cast(
                frames.Final, {**outcome, "type": "final", "job_id": job_id, "kind": job.kind}
            )
            # free the room first: whoever sees the outcome may rely on the room being free
            # (unless its client asked to keep it for its next call: held_rooms)
            hold = self._hold_seconds(job, header, final)
            if hold > 0:
                held_rooms.hold(state, job, hold, final["status"])
                final["held"] = True
            else:
                state.table.deallocate(job_id, final["status"])
            if header.get("job_key"):
                # keep the outcome where any process can find it by key (attach_job)
                payload_key = state.store.put(state.signer.sign(payload)) if payload else None
                if job.output_log:
                    final["output_key"] = state.store.put(
                        state.signer.sign(pickle.dumps(list(job.output_log)))
                    )
                state.table.record_job_final(header["job_key"], json.dumps(final), payload_key)
            del state.jobs[job_id]
            state.last_activity = time.monotonic()
        for subscriber in job.subscribers:
            subscriber.send(final, payload)
        if job.has_pid_file:  # (after the final frame: the reconciler cannot run in between)
            state.folders.pid_file(job_id).unlink(missing_ok=True)

    def _hold_seconds(self, job: RunningJob, header: frames.Run, final: frames.Final) -> float:
        """How long to keep a call's room for its client's next call (0: free it now): as
        long as it asked, if the call ran (its worker lives on), its connection is open and
        the instance takes jobs."""
        if (
            header["kind"] != "function"
            or header.get("job_key")
            or final["status"] not in ("succeeded", "failed")
            or not job.subscribers[0].is_open
            or self.reconciler.interruption_handled
            or self.state.shutdown.is_set()
        ):
            return 0.0
        return float(header.get("hold", 0.0))

    async def _run_kind(
        self, job: RunningJob, header: frames.Run, blob: bytes
    ) -> tuple[frames.JobOutcome, bytes]:
        """Run the job by its kind; its outcome and the final frame's payload."""
        if header["kind"] == "function":
            return await run_function(self.state, job, header, blob)
        if header["kind"] == "command":
            return await run_command(self.state, job, header), b""
        if header["kind"] == "map":
            return await run_map_slot(self.state, job, header), b""
        return {"status": "refused", "message": f"unknown job kind {job.kind!r}"}, b""


def main() -> None:
    parser = argparse.ArgumentParser(description="meadowrun local-cloud instance agent")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--cloud", choices=clouds.BUILT, default="local")
    parser.add_argument("--region", default=None, help="the cloud's region, where it has one")
    args = parser.parse_args()
    os.umask(0o077)  # everything the agent and its workers write is private to this user
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    home = meadowrun_home()
    cloud = clouds.built(args.cloud).open_agent_cloud(home, args.region)
    agent = Agent(args.instance_id, home, Settings.from_env(), args.idle_timeout, cloud)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.state.shutdown.set)
        await agent.run()

    with asyncio.Runner(loop_factory=event_loop.new_event_loop) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
