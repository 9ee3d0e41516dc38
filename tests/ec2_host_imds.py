"""The EC2 twin's hosts' IMDSv2 emulator: one small HTTP server per test host.

It answers the token, instance id, local address, placement, identity document and spot
interruption notice (``Ec2TestHosts.interrupt``) that meadowrun's agent asks its instance for;
every process on the host finds it through ``AWS_EC2_METADATA_SERVICE_ENDPOINT``. Kept apart
from the host lifecycle (tests/ec2_hosts.py) and the SSH server (tests/ec2_host_ssh.py): it is
the only HTTP in the twin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping

from tests.ec2_host_record import Host
from tests.imds_tokens import TOKEN_PATH

# A child of the harness's logger, so that quieting "tests.ec2_hosts" quiets this too.
_log = logging.getLogger("tests.ec2_hosts.imds")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
}


async def serve_imds(
    host: Host,
    region: str,
    lock: threading.Condition,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One IMDSv2 request per connection (``Connection: close``)."""
    try:
        request_line = (await reader.readline()).decode("latin-1").split()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if length := int(headers.get("content-length", "0") or 0):
            await reader.readexactly(length)
        if len(request_line) < 2:
            status, body = 400, ""
        else:
            method, path = request_line[0], request_line[1].split("?")[0]
            status, body = _imds_answer(host, region, lock, method, path, headers)
        payload = body.encode()
        writer.write(
            (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                "Content-Type: text/plain\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + payload
        )
        await writer.drain()
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        _log.debug("bad IMDS request to %s: %r", host.instance_id, exc)
    finally:
        writer.close()


def _imds_answer(
    host: Host,
    region: str,
    lock: threading.Condition,
    method: str,
    path: str,
    headers: Mapping[str, str],
) -> tuple[int, str]:
    if path == TOKEN_PATH:
        return host.tokens.issue(method, headers)
    refused = host.tokens.refuse(method, headers)
    if refused is not None:
        return refused, ""
    with lock:
        interrupt_at = host.interrupt_at
    item = path.removeprefix("/latest/meta-data/").rstrip("/")
    if path.rstrip("/") == "/latest/dynamic/instance-identity/document":
        document = {"instanceId": host.instance_id, "region": region}
        return 200, json.dumps(document)
    if not path.startswith("/latest/meta-data/"):
        return 404, ""
    if item == "instance-id":
        return 200, host.instance_id
    if item == "local-ipv4":
        return 200, host.ip
    if item == "placement/region":
        return 200, region
    if item == "placement/availability-zone":
        return 200, f"{region}a"
    if item == "spot/instance-action" and interrupt_at is not None:
        when = interrupt_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, json.dumps({"action": "terminate", "time": when})
    return 404, ""
