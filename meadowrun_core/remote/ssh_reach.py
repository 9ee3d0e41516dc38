"""Reaching a cloud's instances: one SSH connection per instance (host key pinned), shared by
the bootstrap and every agent stream, local forwards to the instance's ports (its agent, a
Dask scheduler) and reverse forwards of this machine's ports to it.

Each cloud's provider mixes ``InstanceReach`` in and says how to find an instance
(``_identify``: its cloud id and pinned host key) and its SSH address (``_lookup_address``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncssh

from meadowrun_core.backend import LaunchError
from meadowrun_core.remote import ssh

log = logging.getLogger(__name__)


class InstanceReach:
    """Mixed into a cloud's provider, which sets these up and knows the client's key."""

    _connections: dict[str, asyncssh.SSHClientConnection]
    _forwards: dict[tuple[str, str, int], asyncssh.SSHListener]
    _connecting: dict[str, asyncio.Lock]
    _exposed: set[int]
    _reverse: dict[tuple[str, int], asyncssh.SSHListener]
    cloud_noun = "instance"  # names the cloud's instances in messages ("EC2 instance")

    @property
    def reach_timeout(self) -> float:
        """How long an instance may take to boot before connecting to it gives up."""
        raise NotImplementedError

    def _client_key(self) -> asyncssh.SSHKey:
        raise NotImplementedError

    def _identify(self, instance_id: str) -> tuple[str, str]:
        """The cloud's id and the pinned host public key of a meadowrun instance; raises
        ``ConnectionError`` when no running instance is it."""
        raise NotImplementedError

    def _lookup_address(self, cloud_id: str) -> tuple[str, int] | None:
        """Where to SSH to the instance, None while it has no address yet."""
        raise NotImplementedError

    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        raise NotImplementedError

    async def start_agent(self, instance_id: str, command: str, timeout: float, what: str) -> None:
        """Run ``command`` (which starts the agent detached and waits for it to register)
        over SSH; on any failure the instance is terminated and ``LaunchError`` (or the
        failure itself) raised. ``what`` names the instance in the message."""
        try:
            connection = await self.ssh_connection(instance_id)
            result = await connection.run(command, timeout=timeout)
        except BaseException:
            self.terminate(instance_id)
            raise
        if result.exit_status != 0:
            self.terminate(instance_id)
            raise LaunchError(
                f"{what} ({instance_id}) could not start meadowrun's agent:\n"
                f"{str(result.stderr or '').strip()}"
            )

    async def ssh_connection(self, instance_id: str) -> asyncssh.SSHClientConnection:
        """One SSH connection per instance, shared by bootstrap and every agent stream."""
        lock = self._connecting.setdefault(instance_id, asyncio.Lock())
        async with lock:
            connection = self._connections.get(instance_id)
            if connection is not None and not connection.is_closed():
                return connection
            cloud_id, host_key = await asyncio.to_thread(self._identify, instance_id)
            address, port = await self._ssh_address(cloud_id)
            connection = await ssh.connect(
                address,
                port,
                host_key,
                await asyncio.to_thread(self._client_key),
                self.reach_timeout,
            )
            self._connections[instance_id] = connection
            for port in sorted(self._exposed):
                await self._expose_on(instance_id, connection, port)
            return connection

    async def expose(self, port: int) -> None:
        """Every instance (connected now or later) reaches this machine's 127.0.0.1:``port``
        at its own 127.0.0.1:``port``, through a reverse forward on the SSH connection."""
        self._exposed.add(port)
        for instance_id, connection in list(self._connections.items()):
            if not connection.is_closed():
                await self._expose_on(instance_id, connection, port)

    async def _expose_on(
        self, instance_id: str, connection: asyncssh.SSHClientConnection, port: int
    ) -> None:
        listener = self._reverse.get((instance_id, port))
        if listener is not None and connection is self._connections.get(instance_id):
            return
        try:
            self._reverse[(instance_id, port)] = await connection.forward_remote_port(
                "127.0.0.1", port, "127.0.0.1", port
            )
        except asyncssh.Error as exc:
            log.warning(
                "instance %s cannot reach this machine's port %d: %s", instance_id, port, exc
            )

    async def forward(
        self, instance_id: str, remote_port: int, remote_host: str = "127.0.0.1"
    ) -> int:
        """A local port forwarded over SSH to ``remote_host:remote_port`` as the instance sees
        it (its loopback by default)."""
        connection = await self.ssh_connection(instance_id)
        key = (instance_id, remote_host, remote_port)
        listener = self._forwards.get(key)
        if listener is None or connection is not self._connections.get(instance_id):
            listener = await connection.forward_local_port("127.0.0.1", 0, remote_host, remote_port)
            self._forwards[key] = listener
        return int(listener.get_port())

    async def _ssh_address(self, cloud_id: str) -> tuple[str, int]:
        deadline = time.monotonic() + self.reach_timeout
        while True:
            address = await asyncio.to_thread(self._lookup_address, cloud_id)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"{self.cloud_noun} {cloud_id} has no address after {self.reach_timeout:g} s"
                )
            await asyncio.sleep(0.1)

    def drop_connection(self, instance_id: str) -> None:
        """Forget (and close) the instance's connection: it is being terminated."""
        connection = self._connections.pop(instance_id, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for listener in self._forwards.values():
            listener.close()
        self._forwards.clear()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
