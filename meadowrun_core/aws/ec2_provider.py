"""Choosing, launching and terminating meadowrun's EC2 instances (reaching them over SSH:
``ec2_reach.py`` and ``remote/ssh_reach.py``).

``launch`` runs one instance of the chosen type (spot or on-demand), with cloud-init user
data that sets a host key generated here and our client key, then SSHes in (host key pinned)
and starts the agent detached, so it outlives this client. The agent registers in DynamoDB
and from then on clients reach it through SSH port forwarding to its loopback port.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from botocore.exceptions import ClientError

from meadowrun_core.aws import names, ssh
from meadowrun_core.aws.agent_upload import bundle_url, upload_agent_bundle
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.aws.ec2_reach import Ec2Reach
from meadowrun_core.aws.fleet import rank_for_fleet
from meadowrun_core.aws.instance_selection import (
    FALLBACK_ERROR_CODES,
    MARKET_WIDE_ERROR_CODES,
    choose_instance_types,
)
from meadowrun_core.aws.instance_types import Ec2Offer, load_offers
from meadowrun_core.aws.pricing import DiskCache, default_price_source
from meadowrun_core.aws.security_group import client_cidr, ensure_security_group
from meadowrun_core.backend import CapacityError
from meadowrun_core.bootstrap.agent_start import agent_command
from meadowrun_core.bootstrap.bundle import agent_bundle, agent_requirements
from meadowrun_core.bootstrap.cloud_init import InstanceBoot, render_user_data
from meadowrun_core.bootstrap.instance_script import boot_commands, boot_files
from meadowrun_core.config import Settings
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.remote import ssh as remote_ssh
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType, check_custom_offered

log = logging.getLogger(__name__)

# How long a new instance profile may take to become usable by RunInstances.
PROFILE_PROPAGATION_SECONDS = 60.0
# How many (type, market) choices to try before giving up on capacity errors: all of them
# (None), so on-demand is reached after every spot choice was refused.
MAX_FALLBACK_CHOICES: int | None = None
_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"


class Ec2Provider(Ec2Reach):
    def __init__(
        self,
        host: AllocEC2Instance,
        region: str,
        settings: Settings,
        cache_dir: Path,
        bucket: str | None = None,
        fresh_account: bool = False,
    ) -> None:
        self.host = host
        # offered by every instance this host launches, on top of its type's hardware
        self.custom = dict(host.custom_resources or {})
        self.bucket = bucket
        self._fresh_account = fresh_account  # create the key, group and role without looking
        self.region = region
        self.settings = settings
        self.idle_timeout = (
            host.idle_timeout if host.idle_timeout is not None else settings.idle_timeout_seconds
        )
        self._cache_dir = cache_dir
        self._ec2 = aws_client("ec2", region)
        self._s3 = aws_client("s3", region)
        self._offers: list[Ec2Offer] | None = None
        self._ec2_ids: dict[str, str] = {}
        self._host_keys: dict[str, str] = {}
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._forwards: dict[tuple[str, str, int], asyncssh.SSHListener] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._setup_lock = threading.Lock()
        self._setup: dict[str, Any] = {}
        self._exposed: set[int] = set()  # client ports every instance reaches on its loopback
        self._reverse: dict[tuple[str, int], asyncssh.SSHListener] = {}

    # --- choosing ----------------------------------------------------------------------
    def offers(self) -> list[Ec2Offer]:
        if self._offers is None:
            self._offers, _ = load_offers(
                self.region, default_price_source(), self._ec2, DiskCache(self._cache_dir)
            )
        return self._offers

    def on_demand_price(self, instance_type: str) -> float | None:
        """From the offers this client launched from (prices cached 4 h)."""
        return next((o.on_demand_price for o in self.offers() if o.name == instance_type), None)

    def check_satisfiable(self, resources: Resources) -> None:
        check_custom_offered(resources, self.custom, "AllocEC2Instance")
        choose_instance_types(self.offers(), resources, 1, self.region, self.custom)

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        """Every fitting choice within the room, ranked by the cheapest fleet for all the
        workers (``aws.fleet``): the first starts an optimal fleet, the rest are fallbacks."""
        result = []
        fitting = [
            c
            for c in choose_instance_types(
                self.offers(), resources, workers, self.region, self.custom
            )
            if c.offer.logical_cpu <= room_cpu + 1e-9 and c.offer.memory_gb <= room_memory_gb + 1e-9
        ]
        for choice in rank_for_fleet(fitting, workers):
            offer = choice.offer
            spot = choice.market == "spot"
            bucket = offer.interruption_bucket
            instance_type = InstanceType(
                name=offer.name,
                logical_cpu=offer.logical_cpu,
                memory_gb=offer.memory_gb,
                price_per_hour=choice.price_per_hour,
                interruption_probability=(100 if bucket is None else bucket) / 100 if spot else 0,
                is_spot=spot,
                gpus=offer.gpus,
                gpu_memory_gb=offer.gpu_memory_per_gpu,
                flags=tuple(sorted(offer.flags)),
                arch="arm64" if offer.arch == "arm64" else "x86_64",
                custom=tuple(sorted(self.custom.items())),
            )
            result.append((instance_type, choice.workers_per_instance))
            if len(result) == MAX_FALLBACK_CHOICES:
                break
        return result

    # --- launching ---------------------------------------------------------------------
    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        host_private, host_public = remote_ssh.new_host_key()
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
        await self.start_agent(
            instance_id,
            self._agent_command(instance_id),
            self.host.launch_timeout + 30,
            f"EC2 instance {ec2_id}",
        )

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
                    raise CapacityError(
                        f"{code}: {message}", market_wide=code in MARKET_WIDE_ERROR_CODES
                    ) from exc
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
        files, commands = self._bootstrap(instance_type.name)
        boot = InstanceBoot(
            host_private_key=host_private,
            host_public_key=host_public,
            authorized_key=remote_ssh.public_line(key),
            ssh_user=remote_ssh.SSH_USER,
            install_commands=commands,
            write_files=files,
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

    def _arch(self, instance_type: str) -> str:
        arch = next((o.arch for o in self.offers() if o.name == instance_type), "x86_64")
        return "arm64" if arch == "arm64" else "x86_64"

    def _latest_ami(self, instance_type: str) -> str:
        return _latest_ami(self.region, self._arch(instance_type))

    def _bootstrap(self, instance_type: str) -> tuple[tuple[dict[str, str], ...], tuple[str, ...]]:
        """cloud-init's ``write_files`` and ``runcmd`` that install the agent on a stock image
        (none when ``agent_python`` says the image has it)."""
        if self.host.agent_python is not None:
            return (), ()
        if self.bucket is None:
            raise RuntimeError("Ec2Provider needs the account's bucket to bootstrap instances")
        roots, arch = agent_requirements("aws"), self._arch(instance_type)
        bundle = self._once(f"bundle {roots} {arch}", lambda: agent_bundle(roots, arch))
        bucket = self.bucket
        day = int(time.time() // 86400)  # looked at again daily: the bucket's objects expire
        self._once(
            f"uploaded {bundle.key} {day}", lambda: upload_agent_bundle(self._s3, bucket, bundle)
        )
        url = bundle_url(self._s3, bucket, bundle)
        return tuple(boot_files(url, bundle.sha256)), tuple(boot_commands(bundle.python))

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per provider, even when several launches ask at the same time
        (they run in threads): the account's key, group, role and the agent's bundle."""
        with self._setup_lock:
            if name not in self._setup:
                self._setup[name] = make()
            return self._setup[name]

    def _client_key(self) -> asyncssh.SSHKey:
        """The account's SSH client key, read from Secrets Manager once per provider."""
        fresh = self._fresh_account
        key: asyncssh.SSHKey = self._once("client key", lambda: ssh.client_key(self.region, fresh))
        return key

    def _security_group(self) -> str:
        cidr = client_cidr(self.host.ssh_cidr)
        fresh = self._fresh_account
        group = self._once("group", lambda: ensure_security_group(self.region, cidr, fresh)[0])
        return str(group)

    def _instance_profile(self) -> str:
        from meadowrun_core.aws.iam import ensure_instance_profile

        fresh = self._fresh_account
        return str(self._once("profile", lambda: ensure_instance_profile(self.region, fresh)))

    def _agent_command(self, instance_id: str) -> str:
        """Start the agent detached (``bootstrap.agent_start``)."""
        return agent_command(
            cloud="aws",
            region=self.region,
            instance_id=instance_id,
            idle_timeout=self.idle_timeout,
            settings=self.settings,
            launch_timeout=self.host.launch_timeout,
            agent_python=self.host.agent_python,
            # the role's credentials come from the metadata service: give a busy one time
            environment={
                "AWS_METADATA_SERVICE_TIMEOUT": "5",
                "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3",
            },
        )

    # --- stopping ----------------------------------------------------------------------
    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        try:
            ec2_id, _ = self._identify(instance_id)
        except ConnectionError:
            return
        log.info("terminating EC2 instance %s (%s)", ec2_id, instance_id)
        self._ec2.terminate_instances(InstanceIds=[ec2_id])
        self.drop_connection(instance_id)

    def failure_hint(self, instance_id: str) -> str:
        ec2_id = self._ec2_ids.get(instance_id, "(not launched)")
        return (
            f"EC2 instance {ec2_id} was terminated; the agent's log was "
            f"~/.meadowrun/agent-{instance_id}.log on it"
        )


@functools.cache
def _latest_ami(region: str, arch: str) -> str:
    """The region's current Amazon Linux 2023 image, from AWS's public SSM parameter."""
    parameter = _AMI_PARAMETER.format(arch=arch)
    value = aws_client("ssm", region).get_parameter(Name=parameter)["Parameter"]["Value"]
    return str(value)
