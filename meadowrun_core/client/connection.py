"""One multiplexed, authenticated connection from this client to an instance agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from meadowrun_core import frames
from meadowrun_core.protocol import encode_frame, hello_frame, read_frame
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

# what a follower of a job receives: the agent's frames for it, then (if the connection
# closes first) ``DISCONNECTED``
Event = tuple[frames.AgentFrame | frames.Disconnected, bytes]
DISCONNECTED: frames.Disconnected = {"type": "disconnected"}


class AgentConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, signer: Signer
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._signer = signer
        self._jobs: dict[str, list[asyncio.Queue[Event]]] = {}
        self._followers: dict[str, asyncio.Queue[Event]] = {}
        self.closed = False
        writer.write(hello_frame(signer))  # the agent reads nothing else before it
        self._task = asyncio.create_task(self._read_loop())

    def register(self, job_id: str, follower: str = "") -> asyncio.Queue[Event]:
        """Listen to a job's events; ``follower`` names this listener for replayed output."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if follower:
            self._followers[follower] = queue
        if self.closed:
            queue.put_nowait((DISCONNECTED, b""))
        self._jobs.setdefault(job_id, []).append(queue)
        return queue

    def unregister(self, job_id: str, queue: asyncio.Queue[Event]) -> None:
        self._followers = {k: q for k, q in self._followers.items() if q is not queue}
        listeners = self._jobs.get(job_id, [])
        if queue in listeners:
            listeners.remove(queue)
        if not listeners:
            self._jobs.pop(job_id, None)

    def close(self) -> None:
        self._writer.close()

    def send(self, header: frames.ClientFrame, blob: bytes = b"") -> None:
        if not self.closed:
            self._writer.write(encode_frame(self._signer, header, blob))

    async def _read_loop(self) -> None:
        try:
            while True:
                raw, blob = await read_frame(self._reader, self._signer)
                header = cast(frames.AgentFrame, raw)
                replay_for = raw.get("replay_for")
                if replay_for is not None:
                    follower = self._followers.get(replay_for)
                    if follower is not None:
                        follower.put_nowait((header, blob))
                    continue
                for queue in self._jobs.get(raw.get("job_id", ""), ()):
                    queue.put_nowait((header, blob))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("connection to agent failed")
        finally:
            self.closed = True
            for listeners in self._jobs.values():
                for queue in listeners:
                    queue.put_nowait((DISCONNECTED, b""))
            with contextlib.suppress(Exception):
                self._writer.close()
