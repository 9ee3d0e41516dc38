"""A job the agent runs, and the client connections that follow it: its output is sent to
every follower as it is written, and its tail kept for followers that attach later."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from dataclasses import dataclass, field

import psutil

from meadowrun_core import frames
from meadowrun_core.agent.worker_pool import WorkerProcess
from meadowrun_core.protocol import encode_frame
from meadowrun_core.serialization import Signer

# How much of a job's output the agent keeps for followers that attach late.
OUTPUT_REPLAY_BYTES = 1 << 20


class ClientConnection:
    """The agent's side of one client connection; events for jobs are written here."""

    def __init__(self, writer: asyncio.StreamWriter, signer: Signer) -> None:
        self._writer = writer
        self._signer = signer

    @property
    def is_open(self) -> bool:
        return not self._writer.is_closing()

    def send(self, header: frames.AgentFrame, blob: bytes = b"") -> None:
        if self._writer.is_closing():
            return
        self._writer.write(encode_frame(self._signer, header, blob))


@dataclass(eq=False)
class RunningJob:
    """A job running on this agent: who follows it, what runs it, and why it was stopped."""

    job_id: str
    kind: str
    subscribers: list[ClientConnection]
    memory_gb: float
    process: psutil.Process | None = None
    worker: WorkerProcess | None = None
    command: asyncio.subprocess.Process | None = None
    cancel_reason: str | None = None
    end_status: frames.JobStatus = "cancelled"
    workdir: str | None = None  # the deployment's working directory (a git checkout)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # the tail of the job's output, replayed to a follower that attaches late
    output_log: deque[tuple[str, bytes]] = field(default_factory=deque)
    output_bytes: int = 0
    timeout: float | None = None  # seconds the call or command may run (``start_clock``)
    # whether the job has a PID file to remove when it ends (a short function call has none)
    has_pid_file: bool = True
    _timer: asyncio.TimerHandle | None = None

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
        header: frames.Output = {"type": "output", "job_id": self.job_id, "stream": stream}
        if replay_for:
            header["replay_for"] = replay_for
        subscriber.send(header, data)

    def report(self, payload: bytes) -> None:
        """A value the job sent with ``meadowrun_core.report``; only live followers get it."""
        report: frames.Report = {"type": "report", "job_id": self.job_id}
        for subscriber in self.subscribers:
            subscriber.send(report, payload)

    def attach(self, subscriber: ClientConnection, follower: str) -> None:
        """Follow from the start: replay the kept output to this follower, then stream live
        (a connection already subscribed gets the replay for the new follower only)."""
        for stream, data in self.output_log:
            self._send_output(subscriber, stream, data, follower)
        if subscriber not in self.subscribers:
            self.subscribers.append(subscriber)

    def start_clock(self) -> None:
        """The call or command starts now: past ``timeout`` seconds it is killed and ends
        ``timed_out`` (preparing its deployment here did not count)."""
        if self.timeout is not None and self._timer is None:
            reason = f"ran past its timeout of {self.timeout:g} s and was stopped"
            self._timer = asyncio.get_running_loop().call_later(
                self.timeout, self.kill, reason, "timed_out"
            )

    def stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def kill(self, reason: str, status: frames.JobStatus = "cancelled") -> None:
        """Stop the job now; ``status`` is what the client is told (cancelled, out_of_memory,
        timed_out, interrupted, lease_expired)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.end_status = status
        self.stopping.set()
        if self.worker is not None:
            self.worker.kill(reason)
        if self.command is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.command.pid, signal.SIGKILL)
