"""What a backend whose instances are reached over SSH (EC2, Azure) does with its provider's
tunnels: agent streams, a job's servers and the client's ports, all through forwards."""

from __future__ import annotations

import asyncio

from meadowrun_core.remote.ssh_reach import InstanceReach
from meadowrun_core.seams.allocation_table import InstanceRecord


class SshReachedBackend:
    """Mixed into a cloud's backend; ``provider`` is its provider (an ``InstanceReach``)."""

    provider: InstanceReach

    async def open_agent_stream(
        self, instance: InstanceRecord
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Through an SSH tunnel to the agent's loopback port; frames are HMAC-signed too."""
        if instance.address is None:
            raise ConnectionError(f"instance {instance.instance_id} has not registered yet")
        remote_port = int(instance.address.rsplit(":", 1)[1])
        local_port = await self.provider.forward(instance.instance_id, remote_port)
        return await asyncio.open_connection("127.0.0.1", local_port)

    async def reach(self, instance: InstanceRecord, host: str, port: int) -> tuple[str, int]:
        return "127.0.0.1", await self.provider.forward(instance.instance_id, port, host)

    async def expose(self, port: int) -> None:
        await self.provider.expose(port)

    def close(self) -> None:
        self.provider.close()
