"""Wake-ups for the local cloud's queues, so that a waiting receive does not poll the file.

A receiver waiting on a queue listens on a Unix datagram socket in Linux's abstract
namespace (no file, no path length limit, gone with its process) and registers the
socket's name as an empty file in ``<home>/doorbells/<queue digest>/``; a sender, once its
messages are committed, sends one byte to every name registered for that queue and removes
the names nobody listens on any more. The socket is bound before the receiver looks at the
queue, so a ring between its look and its wait is not lost (the byte waits in the socket).
A ring only says "look again": a forged one costs a look, and the receiver still looks at
least every ``FALLBACK_SECONDS`` (a machine without abstract sockets, a sender that could
not ring). Polling instead cost a map's client about 7 looks per result (0.5 ms doubling to
10 ms after each) and most of its CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
from pathlib import Path

log = logging.getLogger(__name__)

FALLBACK_SECONDS = 0.25
_PREFIX = b"\0meadowrun-bell-"
_sender: socket.socket | None = None


@functools.lru_cache(maxsize=256)
def _directory(home: Path, queue: str) -> str:
    return os.path.join(home, "doorbells", hashlib.sha256(queue.encode()).hexdigest()[:24])


class Doorbell:
    """One receiver's bell for one queue; ``wait`` returns on a ring or after ``timeout``."""

    def __init__(self, home: Path, queue: str) -> None:
        self._registration: Path | None = None
        self._socket: socket.socket | None = None
        token = secrets.token_hex(12)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(_PREFIX + token.encode())
            directory = _directory(home, queue)
            registration = Path(directory, token)
            try:
                registration.touch(mode=0o600)
            except FileNotFoundError:
                for folder in (os.path.dirname(directory), directory):  # both private
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(folder, mode=0o700)
                registration.touch(mode=0o600)
        except OSError as exc:  # no abstract sockets here: the receiver just looks more often
            log.debug("no doorbell for queue %s: %s", queue, exc)
            sock.close()
            return
        self._socket, self._registration = sock, registration

    async def wait(self, timeout: float) -> None:
        if self._socket is None:
            await asyncio.sleep(min(timeout, 0.01))
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(self._socket, 64), min(timeout, FALLBACK_SECONDS))
        with contextlib.suppress(BlockingIOError):
            while True:  # more rings came meanwhile: the next look covers them all
                self._socket.recv(64)

    def close(self) -> None:
        if self._registration is not None:
            self._registration.unlink(missing_ok=True)
        if self._socket is not None:
            self._socket.close()
        self._socket = self._registration = None


def ring(home: Path, queue: str) -> None:
    """Wake every receiver waiting on ``queue`` (call after the messages are committed)."""
    global _sender
    try:
        names = os.listdir(_directory(home, queue))
    except FileNotFoundError:
        return  # nobody has ever waited on it
    if _sender is None:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
    for name in names:
        try:
            _sender.sendto(b"!", _PREFIX + name.encode())
        except (ConnectionRefusedError, FileNotFoundError):  # its receiver is gone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(_directory(home, queue), name))
        except OSError:  # its buffer is full (it has been rung already), or anything else
            continue
