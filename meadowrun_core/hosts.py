"""Where jobs run. ``AllocLocalInstance`` is the embedded local cloud and the default host."""

from __future__ import annotations

import os
from dataclasses import dataclass

from meadowrun_core.exceptions import BadInputError


@dataclass(frozen=True)
class Host:
    """Base class of hosts; a host names a cloud and how instances are allocated there."""


@dataclass(frozen=True)
class AllocLocalInstance(Host):
    """Instances are agent processes on this machine, state under ``MEADOWRUN_HOME``.

    ``idle_timeout`` (seconds) is how long an instance with no job lives on; ``max_cpu`` and
    ``max_memory_gb`` cap what the local cloud may launch in total (default: this machine);
    ``home`` picks a local cloud other than ``MEADOWRUN_HOME``'s.
    """

    idle_timeout: float | None = None
    max_cpu: float | None = None
    max_memory_gb: float | None = None
    home: str | None = None


@dataclass(frozen=True)
class AllocEC2Instance(Host):
    """Instances are EC2 instances (spot where ``Resources.max_eviction_rate`` allows) in the
    caller's AWS account, state in DynamoDB, queues in SQS, objects in S3.

    ``ami_id`` defaults to the region's latest Amazon Linux 2023 image (looked up in SSM);
    ``security_group_ids`` to a meadowrun group allowing SSH; ``iam_role_instance_profile``
    to the profile ``meadowrun install --cloud aws`` creates. ``max_cpu`` and ``max_memory_gb``
    cap what may run at once (a spending guard; ``MEADOWRUN_AWS_MAX_CPU`` /
    ``MEADOWRUN_AWS_MAX_MEMORY_GB``). By default a fresh instance gets meadowrun-core (this
    client's exact version and dependencies) from S3 at boot; ``agent_python`` names an
    interpreter with meadowrun-core already on the image instead. ``ssh_cidr`` is who may
    SSH in (default: this client's own address, as AWS's checkip service sees it);
    ``use_private_ip`` connects to private addresses (from inside the VPC).
    """

    region_name: str | None = None
    ami_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    iam_role_instance_profile: str | None = None
    idle_timeout: float | None = None
    max_cpu: float | None = None
    max_memory_gb: float | None = None
    agent_python: str | None = None
    ssh_cidr: str | None = None
    use_private_ip: bool = False
    launch_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.ssh_cidr is not None:
            import ipaddress

            try:
                ipaddress.ip_network(self.ssh_cidr, strict=False)
            except ValueError:
                raise BadInputError(
                    f"AllocEC2Instance(ssh_cidr={self.ssh_cidr!r}) is not a CIDR; give one "
                    "such as '203.0.113.7/32' or '10.0.0.0/16'"
                ) from None


@dataclass(frozen=True)
class AllocAzureVM(Host):
    location: str | None = None


def resolve_host(host: Host | None) -> Host:
    """``host=None`` means ``MEADOWRUN_HOST`` (local, ec2, azure), else the local cloud."""
    if host is not None:
        if not isinstance(host, Host):
            raise BadInputError(
                f"host must be AllocLocalInstance(), AllocEC2Instance() or AllocAzureVM(), "
                f"got {host!r}"
            )
        return host
    name = os.environ.get("MEADOWRUN_HOST", "local").strip().lower()
    if name in ("", "local"):
        return AllocLocalInstance()
    if name == "ec2":
        return AllocEC2Instance()
    if name == "azure":
        return AllocAzureVM()
    raise BadInputError(f"MEADOWRUN_HOST={name!r} is not one of: local, ec2, azure")
