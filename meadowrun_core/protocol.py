"""Length-prefixed, HMAC-authenticated frames between clients, agents and workers.

A frame is ``[u32 length][32-byte HMAC][u32 header length][JSON header][binary blob]``. Control
data is JSON; only the blob can carry a pickle, and a receiver unpickles it only after the
frame's HMAC has verified, so a process without the cluster key cannot inject code.

A connection to an agent starts with a small signed ``hello`` frame (at most
``HELLO_MAX_FRAME`` bytes, fresh timestamp, one-time nonce). Until it has verified, the agent
reads nothing larger, so an unauthenticated peer costs a few KiB, never a large buffer. After it,
frames are bounded by ``MAX_FRAME``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from meadowrun_core.frames import Hello
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

_U32 = struct.Struct("!I")
_MAC_LEN = 32
# The largest frame between authenticated peers (arguments and results travel in frames).
MAX_FRAME = 2**31 - 1
# The largest first frame of a connection: it must be a hello, nothing else is read before it.
HELLO_MAX_FRAME = 4096
# A hello is accepted this long after (or before: clock skew) it was made, once.
HELLO_MAX_AGE_SECONDS = 300.0

Header = dict[str, Any]


class FrameTooLargeError(ValueError):
    """A frame's length prefix is over the limit of where it was read."""


def encode_frame(signer: Signer, header: Mapping[str, Any], blob: bytes = b"") -> bytes:
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    body = _U32.pack(len(header_bytes)) + header_bytes + blob
    length = len(body) + _MAC_LEN
    if length > MAX_FRAME:
        raise FrameTooLargeError(
            f"a {header.get('type', '')} message of {length / 2**30:.2f} GiB is over the "
            f"{MAX_FRAME / 2**30:.0f} GiB frame limit; pass large data through a file or "
            "storage the worker can read, and send its path instead"
        )
    return _U32.pack(length) + signer.mac(body) + body


def decode_body(signer: Signer, frame: bytes) -> tuple[Header, bytes]:
    if len(frame) < _MAC_LEN + _U32.size:
        raise UnauthenticatedDataError(f"frame of {len(frame)} bytes is too short to be signed")
    mac, body = frame[:_MAC_LEN], frame[_MAC_LEN:]
    if not hmac.compare_digest(mac, signer.mac(body)):
        raise UnauthenticatedDataError("frame failed authentication; closing the connection")
    (header_len,) = _U32.unpack_from(body)
    header = json.loads(body[4 : 4 + header_len])
    if not isinstance(header, dict) or not isinstance(header.get("type", ""), str):
        raise UnauthenticatedDataError("a signed frame without a valid header")
    return header, body[4 + header_len :]


def _check_length(length: int, limit: int) -> None:
    if length > limit:
        raise FrameTooLargeError(f"frame of {length} bytes is over the limit of {limit} bytes")


async def read_frame(
    reader: asyncio.StreamReader, signer: Signer, max_frame: int = MAX_FRAME
) -> tuple[Header, bytes]:
    (length,) = _U32.unpack(await reader.readexactly(4))
    _check_length(length, max_frame)
    return decode_body(signer, await reader.readexactly(length))


def hello_frame(signer: Signer) -> bytes:
    """The first frame of every connection to an agent."""
    hello: Hello = {"type": "hello", "time": time.time(), "nonce": secrets.token_hex(16)}
    return encode_frame(signer, hello)


class HelloGuard:
    """Checks hellos: signed, fresh, and each nonce used once (a replayed hello is refused)."""

    def __init__(self, max_age: float = HELLO_MAX_AGE_SECONDS) -> None:
        self._max_age = max_age
        self._seen: dict[str, float] = {}

    async def read_hello(self, reader: asyncio.StreamReader, signer: Signer) -> None:
        """Read and check a connection's first frame; raise UnauthenticatedDataError (or
        FrameTooLargeError, IncompleteReadError) unless it is a valid hello."""
        header, _ = await read_frame(reader, signer, HELLO_MAX_FRAME)
        now = time.time()
        sent, nonce = header.get("time"), header.get("nonce")
        if header.get("type") != "hello" or not isinstance(nonce, str):
            raise UnauthenticatedDataError("the first frame of a connection must be a hello")
        if not isinstance(sent, int | float) or abs(now - sent) > self._max_age:
            raise UnauthenticatedDataError("a stale hello (replayed, or the clock is off)")
        self._seen = {n: t for n, t in self._seen.items() if t > now - 2 * self._max_age}
        if nonce in self._seen:
            raise UnauthenticatedDataError("a replayed hello")
        self._seen[nonce] = now


def send_frame_sync(
    sock: socket.socket, signer: Signer, header: Mapping[str, Any], blob: bytes = b""
) -> None:
    sock.sendall(encode_frame(signer, header, blob))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks += chunk
    return bytes(chunks)


def read_frame_sync(sock: socket.socket, signer: Signer) -> tuple[Header, bytes]:
    (length,) = _U32.unpack(_recv_exactly(sock, 4))
    _check_length(length, MAX_FRAME)
    return decode_body(signer, _recv_exactly(sock, length))
