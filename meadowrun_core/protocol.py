"""Length-prefixed, HMAC-authenticated frames between clients, agents and workers.

A frame is ``[u32 length][32-byte HMAC][u32 header length][JSON header][binary blob]``. Control
data is JSON; only the blob can carry a pickle, and a receiver unpickles it only after the
frame's HMAC has verified, so a process without the cluster key cannot inject code.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import struct
from typing import Any

from meadowrun_core.serialization import Signer, UnauthenticatedDataError

_U32 = struct.Struct("!I")
_MAC_LEN = 32
MAX_FRAME = 2**31 - 1

Header = dict[str, Any]


def encode_frame(signer: Signer, header: Header, blob: bytes = b"") -> bytes:
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    body = _U32.pack(len(header_bytes)) + header_bytes + blob
    return _U32.pack(len(body) + _MAC_LEN) + signer.mac(body) + body


def decode_body(signer: Signer, frame: bytes) -> tuple[Header, bytes]:
    mac, body = frame[:_MAC_LEN], frame[_MAC_LEN:]

    if not hmac.compare_digest(mac, signer.mac(body)):
        raise UnauthenticatedDataError("frame failed authentication; closing the connection")
    (header_len,) = _U32.unpack_from(body)
    header = json.loads(body[4 : 4 + header_len])
    return header, body[4 + header_len :]


async def read_frame(reader: asyncio.StreamReader, signer: Signer) -> tuple[Header, bytes]:
    (length,) = _U32.unpack(await reader.readexactly(4))
    return decode_body(signer, await reader.readexactly(length))


def send_frame_sync(sock: socket.socket, signer: Signer, header: Header, blob: bytes = b"") -> None:
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
    return decode_body(signer, _recv_exactly(sock, length))
