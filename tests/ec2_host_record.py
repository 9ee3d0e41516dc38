"""What the EC2 twin knows about one booted test host (see tests/ec2_hosts.py).

The lifecycle (tests/ec2_hosts.py), the SSH server (tests/ec2_host_ssh.py) and the IMDS
emulator (tests/ec2_host_imds.py) all read and fill in the same record, so it lives on its own
rather than in any one of them.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from meadowrun_core.bootstrap.cloud_init import InstanceBoot
from tests.imds_tokens import ImdsTokens


@dataclass
class Host:
    instance_id: str
    ip: str
    home: Path
    boot: InstanceBoot
    ssh_port: int = 0
    imds_port: int = 0
    ssh_server: asyncssh.SSHAcceptor | None = None
    imds_server: asyncio.Server | None = None
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    tokens: ImdsTokens = field(default_factory=ImdsTokens)
    interrupt_at: datetime.datetime | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.ssh_port}"
