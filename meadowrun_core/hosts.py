"""Where jobs run. ``AllocLocalInstance`` is the embedded local cloud and the default host."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from meadowrun_core.exceptions import BadInputError


@dataclass(frozen=True)
class Host:
    """Base class of hosts; a host names a cloud and how instances are allocated there."""


def _checked_custom_resources(host: str, value: Any) -> dict[str, float] | None:
    """``custom_resources`` as a private copy, or a ``BadInputError`` naming what is wrong:
    names are non-empty strings, amounts positive numbers."""
    if value is None:
        return None
    example = f"{host}(custom_resources={{'TEMPERATURE_SENSOR': 4}})"
    if not isinstance(value, Mapping):
        raise BadInputError(
            f"{host}(custom_resources={value!r}) must be a dict of name -> amount that each "
            f"instance offers, e.g. {example}"
        )
    checked: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name.strip():
            raise BadInputError(
                f"{host}(custom_resources=...) has the name {name!r}: names must be non-empty "
                f"strings, e.g. {example}"
            )
        if (
            not isinstance(amount, int | float)
            or isinstance(amount, bool)
            or not math.isfinite(amount)
            or amount <= 0
        ):
            raise BadInputError(
                f"{host}(custom_resources=...) offers {amount!r} of {name!r}: amounts must be "
                f"positive numbers (how many one instance has), e.g. {example}"
            )
        checked[name] = amount
    return checked


def _hash_host(host: Host) -> int:
    """Hosts key per-process caches; ``custom_resources`` (a dict) hashes as sorted pairs."""
    values = []
    for f in fields(host):
        value = getattr(host, f.name)
        values.append(tuple(sorted(value.items())) if isinstance(value, dict) else value)
    return hash((type(host).__name__, *values))


@dataclass(frozen=True)
class AllocLocalInstance(Host):
    """The embedded local cloud, the default host: instances are agent processes on this
    machine, state under ``MEADOWRUN_HOME``.

    ``idle_timeout`` (default None: ``MEADOWRUN_IDLE_TIMEOUT``, 60 s): how long an instance
    with no job lives on. ``max_cpu`` and ``max_memory_gb`` (default None:
    ``MEADOWRUN_LOCAL_MAX_CPU`` / ``_MAX_MEMORY_GB``, else this machine's size): what the local
    cloud may launch in total. ``home`` (default None: ``MEADOWRUN_HOME``, else
    ``~/.meadowrun``): picks another local cloud. ``custom_resources`` (default None: none):
    what each instance this host launches offers beyond CPU and memory, as name -> amount
    (``{"TEMPERATURE_SENSOR": 4}``); jobs asking for them with ``Resources(custom=...)`` are
    placed only where enough is free, counted like CPU and memory.

    Example::

        mr.run_function(f, host=mr.AllocLocalInstance(max_cpu=2, idle_timeout=5))
        mr.run_function(
            f,
            host=mr.AllocLocalInstance(custom_resources={"TEMPERATURE_SENSOR": 4}),
            resources=mr.Resources(custom={"TEMPERATURE_SENSOR": 1}),
        )
    """

    idle_timeout: float | None = None
    max_cpu: float | None = None
    max_memory_gb: float | None = None
    home: str | None = None
    custom_resources: Mapping[str, float] | None = None

    __hash__ = _hash_host

    def __post_init__(self) -> None:
        custom = _checked_custom_resources("AllocLocalInstance", self.custom_resources)
        object.__setattr__(self, "custom_resources", custom)


@dataclass(frozen=True)
class AllocEC2Instance(Host):
    """EC2 instances in the caller's AWS account (spot where ``Resources.max_eviction_rate``
    allows), state in DynamoDB, queues in SQS, objects in S3.

    ``region_name`` (default None: ``AWS_DEFAULT_REGION``, else us-east-1). ``ami_id`` (default
    None: the region's latest Amazon Linux 2023 image, looked up in SSM). ``subnet_id`` (default
    None: EC2 picks a default subnet). ``security_group_ids`` (default (): a meadowrun group
    allowing SSH from ``ssh_cidr``). ``iam_role_instance_profile`` (default None: the profile
    ``meadowrun install --cloud aws`` creates). ``idle_timeout`` (default None:
    ``MEADOWRUN_IDLE_TIMEOUT``, 60 s): how long an idle instance lives on. ``max_cpu`` and
    ``max_memory_gb`` (default None: ``MEADOWRUN_AWS_MAX_CPU`` / ``MEADOWRUN_AWS_MAX_MEMORY_GB``):
    a spending guard on what may run at once. ``agent_python`` (default None: a fresh instance
    gets this client's exact meadowrun-core and dependencies from S3 at boot): an interpreter on
    the image that already has meadowrun-core. ``ssh_cidr`` (default None: this client's own
    address, as AWS's checkip service sees it): who may SSH in. ``use_private_ip`` (default
    False): connect to private addresses (from inside the VPC). ``launch_timeout`` (default
    300.0): seconds an instance may take to boot before its launch fails.
    ``custom_resources`` (default None: none): what every instance this host launches offers
    beyond its type's hardware, as name -> amount (``{"licenses": 2}``), for jobs asking with
    ``Resources(custom=...)``; counted like CPU and memory.

    Example::

        mr.run_function(f, host=mr.AllocEC2Instance("us-east-1", max_cpu=64))
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
    custom_resources: Mapping[str, float] | None = None

    __hash__ = _hash_host

    def __post_init__(self) -> None:
        custom = _checked_custom_resources("AllocEC2Instance", self.custom_resources)
        object.__setattr__(self, "custom_resources", custom)
        _check_cidr("AllocEC2Instance", self.ssh_cidr)


# Canonical's Ubuntu 22.04 LTS (Gen2) image: a stock image with a python3 and cloud-init.
UBUNTU_2204_IMAGE = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
_AZURE_LOCATION = re.compile(r"[a-z][a-z0-9]{1,40}")
_AZURE_RESOURCE_GROUP = re.compile(r"[-\w._()]{1,90}")
_AZURE_SUBNET = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/"
    r"virtualNetworks/[^/]+/subnets/[^/]+",
    re.IGNORECASE,
)


def _check_cidr(host: str, ssh_cidr: str | None) -> None:
    if ssh_cidr is None:
        return
    try:
        ipaddress.ip_network(ssh_cidr, strict=False)
    except ValueError:
        raise BadInputError(
            f"{host}(ssh_cidr={ssh_cidr!r}) is not a CIDR; give one such as "
            "'203.0.113.7/32' or '10.0.0.0/16'"
        ) from None


@dataclass(frozen=True)
class AllocAzureVM(Host):
    """Azure VMs in the caller's subscription (Spot where ``Resources.max_eviction_rate``
    allows), state in Table storage, queues in Queue storage, objects in Blob storage, keys in
    Key Vault (docs/azure.md).

    ``location`` (default None: ``MEADOWRUN_AZURE_LOCATION``, else the Azure CLI's default
    location). ``resource_group`` (default None: ``MEADOWRUN_AZURE_RESOURCE_GROUP``, else the
    Azure CLI's default group), where VMs and their security group are created.
    ``subscription_id`` (default None: ``AZURE_SUBSCRIPTION_ID``). ``subnet_id`` (default
    None): an existing subnet's resource id for the VMs' NICs. ``image`` (default Ubuntu 22.04
    LTS): a ``publisher:offer:sku:version`` URN or an image resource id. ``idle_timeout``,
    ``max_cpu``, ``max_memory_gb`` (``MEADOWRUN_AZURE_MAX_CPU`` /
    ``MEADOWRUN_AZURE_MAX_MEMORY_GB``), ``agent_python``, ``ssh_cidr``, ``use_private_ip``,
    ``launch_timeout`` and ``custom_resources`` as ``AllocEC2Instance``'s.

    Example::

        mr.run_function(f, host=mr.AllocAzureVM(location="eastus", resource_group="ml"))
    """

    location: str | None = None
    resource_group: str | None = None
    subscription_id: str | None = None
    subnet_id: str | None = None
    image: str = UBUNTU_2204_IMAGE
    idle_timeout: float | None = None
    max_cpu: float | None = None
    max_memory_gb: float | None = None
    agent_python: str | None = None
    ssh_cidr: str | None = None
    use_private_ip: bool = False
    launch_timeout: float = 300.0
    custom_resources: Mapping[str, float] | None = None

    __hash__ = _hash_host

    def __post_init__(self) -> None:
        custom = _checked_custom_resources("AllocAzureVM", self.custom_resources)
        object.__setattr__(self, "custom_resources", custom)
        _check_cidr("AllocAzureVM", self.ssh_cidr)
        if self.location is not None and not _AZURE_LOCATION.fullmatch(self.location):
            raise BadInputError(
                f"AllocAzureVM(location={self.location!r}) is not an Azure region name; give "
                "one such as 'eastus' (`az account list-locations -o table`)"
            )
        group = self.resource_group
        if group is not None and (not _AZURE_RESOURCE_GROUP.fullmatch(group) or group[-1] == "."):
            raise BadInputError(
                f"AllocAzureVM(resource_group={group!r}) is not a resource group name (1-90 "
                "letters, digits, '-', '_', '.', '(', ')', not ending in '.')"
            )
        if self.subnet_id is not None and not _AZURE_SUBNET.fullmatch(self.subnet_id):
            raise BadInputError(
                f"AllocAzureVM(subnet_id={self.subnet_id!r}) is not a subnet's resource id "
                "(/subscriptions/.../resourceGroups/.../providers/Microsoft.Network/"
                "virtualNetworks/<vnet>/subnets/<subnet>)"
            )
        if not (self.image.startswith("/subscriptions/") or len(self.image.split(":")) == 4):
            raise BadInputError(
                f"AllocAzureVM(image={self.image!r}) is neither a 'publisher:offer:sku:version' "
                f"URN nor an image resource id; e.g. {UBUNTU_2204_IMAGE!r}"
            )
        if self.launch_timeout <= 0:
            raise BadInputError("AllocAzureVM(launch_timeout=...) must be positive")


def resolve_host(host: Host | None) -> Host:
    """The host ``host`` stands for: itself, or for None ``MEADOWRUN_HOST`` (local, ec2,
    azure), else the local cloud.

    Example::

        mr.resolve_host(None)   # AllocLocalInstance() unless MEADOWRUN_HOST says otherwise
    """
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
