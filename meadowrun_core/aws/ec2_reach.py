"""Reaching meadowrun's EC2 instances: one SSH connection per instance (host key pinned),
shared by the bootstrap and every agent stream, local forwards to the instance's ports
(its agent, a Dask scheduler) and reverse forwards of this machine's ports to it.

Tests (and any emulator) set ``MEADOWRUN_EC2_ADDRESS_MAP`` to a JSON file mapping EC2
instance ids to ``host:port`` of test hosts, because emulated instances have made-up IPs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import asyncssh

from meadowrun_core.aws import names, ssh
from meadowrun_core.hosts import AllocEC2Instance

log = logging.getLogger(__name__)

ADDRESS_MAP_ENV = "MEADOWRUN_EC2_ADDRESS_MAP"


class InstanceReach:
    """Mixed into ``Ec2Provider``, which sets these up and knows the client's key."""

    host: AllocEC2Instance
    _ec2: Any
    _ec2_ids: dict[str, str]
    _host_keys: dict[str, str]
    _connections: dict[str, asyncssh.SSHClientConnection]
    _forwards: dict[tuple[str, str, int], asyncssh.SSHListener]
    _connecting: dict[str, asyncio.Lock]
    _exposed: set[int]
    _reverse: dict[tuple[str, int], asyncssh.SSHListener]

    def _client_key(self) -> asyncssh.SSHKey:
        raise NotImplementedError

    async def ssh_connection(self, instance_id: str) -> asyncssh.SSHClientConnection:
        """One SSH connection per instance, shared by bootstrap and every agent stream."""
        lock = self._connecting.setdefault(instance_id, asyncio.Lock())
        async with lock:
            connection = self._connections.get(instance_id)
            if connection is not None and not connection.is_closed():
                return connection
            ec2_id, host_key = await asyncio.to_thread(self._identify, instance_id)
            address, port = await self._ssh_address(ec2_id)
            connection = await ssh.connect(
                address,
                port,
                host_key,
                await asyncio.to_thread(self._client_key),
                self.host.launch_timeout,
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

    def _identify(self, instance_id: str) -> tuple[str, str]:
        """The EC2 id and pinned host public key of a meadowrun instance (from its tags when
        another client launched it)."""
        if instance_id in self._ec2_ids:
            return self._ec2_ids[instance_id], self._host_keys[instance_id]
        reservations = self._ec2.describe_instances(
            Filters=[
                {"Name": f"tag:{names.INSTANCE_ID_TAG}", "Values": [instance_id]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        for reservation in reservations:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                self._ec2_ids[instance_id] = instance["InstanceId"]
                self._host_keys[instance_id] = tags[names.HOST_KEY_TAG]
                return self._ec2_ids[instance_id], self._host_keys[instance_id]
        raise ConnectionError(f"no running EC2 instance is meadowrun instance {instance_id}")

    async def _ssh_address(self, ec2_id: str) -> tuple[str, int]:
        deadline = time.monotonic() + self.host.launch_timeout
        while True:
            address = await asyncio.to_thread(self._lookup_address, ec2_id)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"EC2 instance {ec2_id} has no address after {self.host.launch_timeout:g} s"
                )
            await asyncio.sleep(0.1)

    def _lookup_address(self, ec2_id: str) -> tuple[str, int] | None:
        mapped = os.environ.get(ADDRESS_MAP_ENV)
        if mapped:  # an emulator's instances: test hosts stand in for them
            try:
                entry = json.loads(Path(mapped).read_text()).get(ec2_id)
            except (OSError, ValueError):
                return None
            if entry is None:
                return None
            host, port = str(entry).rsplit(":", 1)
            return host, int(port)
        reservations = self._ec2.describe_instances(InstanceIds=[ec2_id])["Reservations"]
        instance = reservations[0]["Instances"][0]
        if instance["State"]["Name"] != "running":
            return None
        field = "PrivateIpAddress" if self.host.use_private_ip else "PublicIpAddress"
        ip = instance.get(field)
        return (str(ip), 22) if ip else None

    def close(self) -> None:
        for listener in self._forwards.values():
            listener.close()
        self._forwards.clear()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
