"""Worker processes owned by an agent, reused between jobs with the same deployment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast, overload

from meadowrun_core import frames
from meadowrun_core.protocol import encode_frame, read_frame
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

OutputSink = Callable[[str, bytes], None]


class WorkerDiedError(Exception):
    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        super().__init__(describe_exit(returncode))


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the worker process vanished"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the kernel's out-of-memory killer sends this)" if returncode == -9 else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {returncode}"


@dataclass(eq=False)
class WorkerProcess:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    python: str
    stdout_fd: int
    stderr_fd: int
    deployment_key: str | None = None
    code_loaded: str | None = None
    sink: OutputSink | None = None
    report_sink: Callable[[bytes], None] | None = None
    killed_reason: str | None = None
    _calls: int = field(default=0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def drain_output(self) -> None:
        """Forward whatever the worker has written so far; called before reporting a result."""
        for fd, stream in ((self.stdout_fd, "stdout"), (self.stderr_fd, "stderr")):
            while True:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                if self.sink is not None:
                    self.sink(stream, data)

    @overload
    async def request(
        self, signer: Signer, header: frames.LoadCode, blob: bytes = b""
    ) -> tuple[frames.CodeLoaded, bytes]: ...

    @overload
    async def request(
        self, signer: Signer, header: frames.Call, blob: bytes = b""
    ) -> tuple[frames.Result, bytes]: ...

    async def request(
        self, signer: Signer, header: frames.LoadCode | frames.Call, blob: bytes = b""
    ) -> tuple[Mapping[str, Any], bytes]:
        """Send one frame and wait for the reply; WorkerDiedError if the process dies first."""
        await self.send(signer, header, blob)
        reply = await self._reply(signer)
        self.drain_output()
        return reply

    async def send(
        self, signer: Signer, header: frames.AgentToWorkerFrame, blob: bytes = b""
    ) -> None:
        try:
            self.writer.write(encode_frame(signer, header, blob))
            await self.writer.drain()
        except ConnectionError as exc:
            raise WorkerDiedError(await _wait_exit(self.proc)) from exc

    async def receive(self, signer: Signer) -> tuple[frames.Result, bytes]:
        """The worker's next result (of a batch's task); reports sent by the job meanwhile
        go to ``report_sink``."""
        header, blob = await self._reply(signer)
        return cast(frames.Result, header), blob

    async def _reply(self, signer: Signer) -> tuple[dict[str, Any], bytes]:
        """The worker's next frame other than a report (``CodeLoaded`` or ``Result``)."""
        while True:
            try:
                header, blob = await read_frame(self.reader, signer)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise WorkerDiedError(await _wait_exit(self.proc)) from exc
            if header.get("type") != "report":
                return header, blob
            self.drain_output()  # keep output written before the report ahead of it
            if self.report_sink is not None:
                self.report_sink(blob)

    def kill(self, reason: str) -> None:
        self.killed_reason = self.killed_reason or reason
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close_fds(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self.stdout_fd, self.stderr_fd):
            loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.writer.close()


async def _wait_exit(proc: asyncio.subprocess.Process) -> int | None:
    try:
        return await asyncio.wait_for(proc.wait(), timeout=5)
    except TimeoutError:
        return None


class WorkerPool:
    """Spawns workers and keeps idle ones per deployment key for the next job."""

    def __init__(self, signer: Signer, base_env: dict[str, str], max_idle: int) -> None:
        self._signer = signer
        self._base_env = base_env
        self._max_idle = max_idle
        self._idle: list[WorkerProcess] = []
        self.busy: set[WorkerProcess] = set()
        self._prewarming: set[asyncio.Task[None]] = set()

    async def spawn(self, python: str, environment: dict[str, str]) -> WorkerProcess:
        parent_sock, child_sock = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        env = {**self._base_env, **environment, "PYTHONUNBUFFERED": "1"}
        env["MEADOWRUN_WORKER_FD"] = str(child_sock.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                python,
                "-m",
                "meadowrun_core.worker",
                pass_fds=(child_sock.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=env,
            )
        finally:
            child_sock.close()
            os.close(out_w)
            os.close(err_w)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
        worker = WorkerProcess(proc, reader, writer, python, out_r, err_r)
        loop = asyncio.get_running_loop()
        loop.add_reader(out_r, worker.drain_output)
        loop.add_reader(err_r, worker.drain_output)
        try:
            header, _ = await asyncio.wait_for(read_frame(reader, self._signer), timeout=60)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            worker.drain_output()
            worker.kill("did not start")
            returncode = await _wait_exit(proc)
            worker.close_fds()
            raise WorkerDiedError(returncode) from exc
        assert header["type"] == "ready"  # frames.Ready
        return worker

    async def acquire(
        self, python: str, deployment_key: str, environment: dict[str, str]
    ) -> WorkerProcess:
        """An idle worker for this deployment, else a blank one of the same python, else new."""
        chosen = next((w for w in self._idle if w.deployment_key == deployment_key), None)
        if chosen is None and not environment:
            chosen = next(
                (w for w in self._idle if w.deployment_key is None and w.python == python), None
            )
            if chosen is not None:  # keep one blank worker ready for the next new deployment
                task = asyncio.create_task(self.prewarm(python))
                self._prewarming.add(task)
                task.add_done_callback(self._prewarming.discard)
        if chosen is not None:
            self._idle.remove(chosen)
            if chosen.proc.returncode is not None:
                chosen.close_fds()
                return await self.acquire(python, deployment_key, environment)
        else:
            chosen = await self.spawn(python, environment)
        chosen.deployment_key = deployment_key
        self.busy.add(chosen)
        return chosen

    def release(self, worker: WorkerProcess) -> None:
        """Return a healthy worker to the pool; a dead or surplus one is discarded."""
        self.busy.discard(worker)
        worker.sink = None
        worker.report_sink = None
        if worker.proc.returncode is not None or worker.killed_reason:
            worker.close_fds()
            return
        self._idle.append(worker)
        while len(self._idle) > self._max_idle:
            oldest = self._idle.pop(0)
            oldest.kill("surplus idle worker")
            oldest.close_fds()

    def discard(self, worker: WorkerProcess) -> None:
        self.busy.discard(worker)
        worker.kill("discarded")
        worker.close_fds()

    async def prewarm(self, python: str) -> None:
        try:
            self._idle.append(await self.spawn(python, {}))
        except WorkerDiedError as exc:
            log.warning("could not prewarm a worker: %s", exc)

    def kill_all(self) -> None:
        for worker in [*self._idle, *self.busy]:
            worker.kill("instance shutting down")
