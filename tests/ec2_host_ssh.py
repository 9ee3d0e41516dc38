"""The EC2 twin's hosts' SSH side: login, port forwarding and running commands as sshd would.

``HostSshServer`` accepts only the UserData's user with the UserData's authorized key and
forwards only to the host's own loopback (127.0.0.1 / localhost); ``run_session`` runs an exec
request with ``/bin/sh -c`` in the host's home directory, without a pty, copying stdin and
output between the channel and pipes. Kept apart from the host lifecycle (tests/ec2_hosts.py)
and the IMDS emulator (tests/ec2_host_imds.py): this is all the asyncssh server code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from typing import BinaryIO

import asyncssh

from tests.ec2_host_record import Host

# A child of the harness's logger, so that quieting "tests.ec2_hosts" quiets this too.
_log = logging.getLogger("tests.ec2_hosts.ssh")

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_READ_SIZE = 65536


class HostSshServer(asyncssh.SSHServer):
    """Public key login for the UserData's user only; forwarding to the host's loopback only."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username != self._host.boot.ssh_user and self._conn is not None:
            _log.info("%s refuses user %r", self._host.instance_id, username)
            self._conn.set_authorized_keys(None)  # no key is good for any other user
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        allowed = dest_host in _LOOPBACK_NAMES
        if not allowed:
            _log.info(
                "%s refuses forwarding to %s:%d", self._host.instance_id, dest_host, dest_port
            )
        return allowed


async def run_session(
    host: Host, env: dict[str, str], process: asyncssh.SSHServerProcess[bytes]
) -> None:
    """One SSH session: run its command as sshd would, without a pty, in ``env``."""
    if process.subsystem:
        process.stderr.write(f"subsystem {process.subsystem} not supported\n".encode())
        process.exit(1)
        return
    command = process.command
    argv = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh"]
    env = dict(env)
    # sshd's default AcceptEnv on Ubuntu: only the locale comes from the client.
    for name, value in process.env.items():
        key, val = str(name), str(value)
        if key == "LANG" or key.startswith("LC_"):
            env[key] = val
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=out_w,
            stderr=err_w,
            cwd=host.home,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(out_r)
        os.close(err_r)
        process.stderr.write(f"sh: {exc}\n".encode())
        process.exit(127)
        return
    finally:
        os.close(out_w)
        os.close(err_w)
    _log.debug("%s runs %r (pid %d)", host.instance_id, command, proc.pid)
    assert proc.stdin is not None
    stdin_pump = asyncio.create_task(_pump_stdin(process.stdin, proc.stdin))
    stdout = os.fdopen(out_r, "rb", buffering=0)
    stderr = os.fdopen(err_r, "rb", buffering=0)
    output_pumps = asyncio.gather(
        _pump_output(stdout, process.stdout), _pump_output(stderr, process.stderr)
    )
    try:
        returncode = await proc.wait()
        await output_pumps  # until the pipes close: all of the output has been sent
    finally:
        stdin_pump.cancel()
        output_pumps.cancel()
    with contextlib.suppress(OSError, asyncssh.Error):
        if returncode >= 0:
            process.exit(returncode)
        else:
            process.exit_with_signal(signal.Signals(-returncode).name.removeprefix("SIG"))


async def _pump_stdin(source: asyncssh.SSHReader[bytes], target: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_READ_SIZE):
            target.write(data)
            await target.drain()
    except (OSError, asyncssh.Error):
        pass  # the command stopped reading, or the client went away
    finally:
        target.close()


async def _pump_output(pipe: BinaryIO, target: asyncssh.SSHWriter[bytes]) -> None:
    """Copy a pipe to the channel. If the channel goes, stop reading, as sshd does: the
    command then gets SIGPIPE/EPIPE when it next writes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while data := await reader.read(_READ_SIZE):
            target.write(data)
            await target.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        transport.close()
