"""Launching and terminating meadowrun's EC2 instances, and reaching them over SSH.

``launch`` runs one instance of the chosen type (spot or on-demand), with cloud-init user
data that sets a host key generated here and our client key, then SSHes in (host key pinned)
and starts the agent detached, so it outlives this client. The agent registers in DynamoDB
and from then on clients reach it through SSH port forwarding to its loopback port.

Tests (and any emulator) set ``MEADOWRUN_EC2_ADDRESS_MAP`` to a JSON file mapping EC2
instance ids to ``host:port`` of test hosts, because emulated instances have made-up IPs.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import asyncssh
from botocore.exceptions import ClientError

from meadowrun_core.aws import names, ssh
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.aws.instance_selection import FALLBACK_ERROR_CODES, choose_instance_types
from meadowrun_core.aws.instance_types import Ec2Offer, load_offers
from meadowrun_core.aws.pricing import DiskCache, default_price_source
from meadowrun_core.aws.user_data import InstanceBoot, render_user_data
from meadowrun_core.backend import CapacityError
from meadowrun_core.config import Settings
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType

log = logging.getLogger(__name__)

ADDRESS_MAP_ENV = "MEADOWRUN_EC2_ADDRESS_MAP"
# How long a new instance profile may take to become usable by RunInstances.
PROFILE_PROPAGATION_SECONDS = 60.0
# How many (type, market) choices to try before giving up on capacity errors.
MAX_FALLBACK_CHOICES = 5
_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
# Tunables the agent takes from the client that launches it, so both agree on leases.
_AGENT_SETTINGS = {
    "MEADOWRUN_LEASE_SECONDS": "lease_seconds",
    "MEADOWRUN_VISIBILITY_TIMEOUT": "visibility_timeout_seconds",
    "MEADOWRUN_RECONCILE_INTERVAL": "reconcile_interval_seconds",
}


class Ec2Provider:
    def __init__(
        self, host: AllocEC2Instance, region: str, settings: Settings, cache_dir: Path
    ) -> None:
        self.host = host
        self.region = region
        self.settings = settings
        self.idle_timeout = (
            host.idle_timeout if host.idle_timeout is not None else settings.idle_timeout_seconds
        )
        self._cache_dir = cache_dir
        self._ec2 = aws_client("ec2", region)
        self._offers: list[Ec2Offer] | None = None
        self._ec2_ids: dict[str, str] = {}
        self._host_keys: dict[str, str] = {}
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._forwards: dict[tuple[str, int], asyncssh.SSHListener] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    # --- choosing ----------------------------------------------------------------------
    def offers(self) -> list[Ec2Offer]:
        if self._offers is None:
            self._offers, _ = load_offers(
                self.region, default_price_source(), self._ec2, DiskCache(self._cache_dir)
            )
        return self._offers

    def check_satisfiable(self, resources: Resources) -> None:
        choose_instance_types(self.offers(), resources, 1, self.region)

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        result = []
        for choice in choose_instance_types(self.offers(), resources, workers, self.region):
            offer = choice.offer
            if offer.logical_cpu > room_cpu + 1e-9 or offer.memory_gb > room_memory_gb + 1e-9:
                continue
            bucket = offer.interruption_bucket if choice.market == "spot" else 0
            instance_type = InstanceType(
                name=offer.name,
                logical_cpu=offer.logical_cpu,
                memory_gb=offer.memory_gb,
                price_per_hour=choice.price_per_hour,
                interruption_probability=(bucket or 0) / 100,
                is_spot=choice.market == "spot",
            )
            result.append((instance_type, choice.workers_per_instance))
            if len(result) == MAX_FALLBACK_CHOICES:
                break
        return result

    # --- launching ---------------------------------------------------------------------
    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        host_private, host_public = ssh.new_host_key()
        key = await asyncio.to_thread(self._client_key)
        params = await asyncio.to_thread(
            self._run_instances_params, instance_id, instance_type, host_private, host_public, key
        )
        response = await self._run_instances(params)
        ec2_id = response["Instances"][0]["InstanceId"]
        self._ec2_ids[instance_id] = ec2_id
        self._host_keys[instance_id] = host_public
        log.info(
            "launched EC2 %s %s (%s) as %s",
            "spot" if instance_type.is_spot else "on-demand",
            instance_type.name,
            ec2_id,
            instance_id,
        )
        try:
            connection = await self.ssh_connection(instance_id)
            await connection.run(self._agent_command(instance_id), check=True, timeout=60)
        except BaseException:
            self.terminate(instance_id)
            raise

    async def _run_instances(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunInstances; capacity errors become ``CapacityError``, and a just-created instance
        profile that IAM has not propagated yet is waited for (IAM is eventually consistent)."""
        deadline = time.monotonic() + PROFILE_PROPAGATION_SECONDS
        while True:
            try:
                response: dict[str, Any] = await asyncio.to_thread(
                    lambda: self._ec2.run_instances(**params)
                )
                return response
            except ClientError as exc:
                code = error_code(exc)
                message = str(exc.response.get("Error", {}).get("Message", ""))
                if code in FALLBACK_ERROR_CODES:
                    raise CapacityError(f"{code}: {message}") from exc
                propagating = code == "InvalidParameterValue" and "iamInstanceProfile" in message
                if not propagating or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)

    def _run_instances_params(
        self,
        instance_id: str,
        instance_type: InstanceType,
        host_private: str,
        host_public: str,
        key: asyncssh.SSHKey,
    ) -> dict[str, Any]:
        boot = InstanceBoot(
            host_private_key=host_private,
            host_public_key=host_public,
            authorized_key=ssh.public_line(key),
            ssh_user=ssh.SSH_USER,
            install_commands=_install_commands(),
        )
        tags = [
            *names.TAGS,
            {"Key": names.INSTANCE_ID_TAG, "Value": instance_id},
            {"Key": names.HOST_KEY_TAG, "Value": host_public},
            {"Key": "Name", "Value": f"meadowrun {instance_id}"},
        ]
        params: dict[str, Any] = {
            "ImageId": self.host.ami_id or self._latest_ami(instance_type.name),
            "InstanceType": instance_type.name,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": render_user_data(boot),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "SecurityGroupIds": list(self.host.security_group_ids) or [self._security_group()],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if self.host.subnet_id:
            params["SubnetId"] = self.host.subnet_id
        profile = self.host.iam_role_instance_profile or self._instance_profile()
        params["IamInstanceProfile"] = {"Name": profile}
        if instance_type.is_spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        return params

    def _latest_ami(self, instance_type: str) -> str:
        arch = next((o.arch for o in self.offers() if o.name == instance_type), "x86_64")
        return _latest_ami(self.region, "arm64" if arch == "arm64" else "x86_64")

    @functools.cache  # noqa: B019 - one provider per backend, kept for the process
    def _client_key(self) -> asyncssh.SSHKey:
        """The account's SSH client key, read from Secrets Manager once per provider."""
        return ssh.client_key(self.region)

    @functools.cache  # noqa: B019
    def _security_group(self) -> str:
        from meadowrun_core.aws.install import ensure_security_group

        group_id, _ = ensure_security_group(self.region)
        return group_id

    @functools.cache  # noqa: B019
    def _instance_profile(self) -> str:
        from meadowrun_core.aws.install import ensure_instance_profile

        return ensure_instance_profile(self.region)

    def _agent_command(self, instance_id: str) -> str:
        """Start the agent detached (setsid, nohup), state under ~/.meadowrun."""
        settings = " ".join(
            f"{name}={shlex.quote(str(getattr(self.settings, field)))}"
            for name, field in _AGENT_SETTINGS.items()
        )
        agent = " ".join(
            shlex.quote(part)
            for part in [
                self.host.agent_python,
                "-m",
                "meadowrun_core.agent.server",
                "--cloud",
                "aws",
                "--region",
                self.region,
                "--instance-id",
                instance_id,
                "--idle-timeout",
                str(self.idle_timeout),
            ]
        )
        log_file = f'"$MEADOWRUN_HOME"/agent-{shlex.quote(instance_id)}.log'
        return (
            'export MEADOWRUN_HOME="$HOME/.meadowrun"; '
            'mkdir -p -m 700 "$MEADOWRUN_HOME" && cd "$MEADOWRUN_HOME" && '
            f"{settings} setsid nohup {agent} > {log_file} 2>&1 < /dev/null &"
        )

    # --- reaching an instance ----------------------------------------------------------
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
            return connection

    async def forward(self, instance_id: str, remote_port: int) -> int:
        """A local port forwarded over SSH to the instance's loopback ``remote_port``."""
        connection = await self.ssh_connection(instance_id)
        key = (instance_id, remote_port)
        listener = self._forwards.get(key)
        if listener is None or connection is not self._connections.get(instance_id):
            listener = await connection.forward_local_port("127.0.0.1", 0, "127.0.0.1", remote_port)
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

    # --- stopping ----------------------------------------------------------------------
    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        try:
            ec2_id, _ = self._identify(instance_id)
        except ConnectionError:
            return
        log.info("terminating EC2 instance %s (%s)", ec2_id, instance_id)
        self._ec2.terminate_instances(InstanceIds=[ec2_id])
        connection = self._connections.pop(instance_id, None)
        if connection is not None:
            connection.close()

    def failure_hint(self, instance_id: str) -> str:
        ec2_id = self._ec2_ids.get(instance_id, "(not launched)")
        return (
            f"EC2 instance {ec2_id} was terminated; the agent's log was "
            f"~/.meadowrun/agent-{instance_id}.log on it"
        )

    def close(self) -> None:
        for listener in self._forwards.values():
            listener.close()
        self._forwards.clear()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


@functools.cache
def _latest_ami(region: str, arch: str) -> str:
    """The region's current Amazon Linux 2023 image, from AWS's public SSM parameter."""
    parameter = _AMI_PARAMETER.format(arch=arch)
    value = aws_client("ssm", region).get_parameter(Name=parameter)["Parameter"]["Value"]
    return str(value)


def _install_commands() -> tuple[str, ...]:
    """What cloud-init runs on a fresh Amazon Linux image: meadowrun-core in its own venv."""
    venv = str(Path(names.INSTANCE_PYTHON).parent.parent)
    version = importlib.metadata.version("meadowrun-core")
    return (
        f"python3 -m venv {venv}",
        f"{venv}/bin/pip install 'meadowrun-core[aws]=={version}'",
    )
