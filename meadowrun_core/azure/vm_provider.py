"""Choosing, creating and deleting meadowrun's Azure VMs (reaching them over SSH:
``remote/ssh_reach.py``).

``launch`` creates one VM of the chosen size (Spot with ``evictionPolicy: Delete`` and
``maxPrice`` the regular price, or regular) with an inline NIC and public IP (in the
installed subnet unless the host names one) behind meadowrun's network security group, the
installed user-assigned identity (system-assigned where install has not run; the agent reads
Key Vault and deletes its own VM with it: ``installed.py``), and ``customData`` = the
cloud-init document that sets a host key generated here, authorizes our client key and
bootstraps the agent from Blob storage. Then it SSHes in (host key pinned) and starts the
agent detached, as on EC2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from meadowrun_core.azure import installed, settings, vm_network
from meadowrun_core.azure.account import SECRET_SSH_KEY, TAGS, DataPlane, get_or_create_secret
from meadowrun_core.azure.agent_upload import bundle_url, upload_agent_bundle
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.blob_object_store import CONTAINER_NAME
from meadowrun_core.azure.eviction_graph import GraphBandSource
from meadowrun_core.azure.pricing import cache_tag, cache_ttl_seconds, default_price_source
from meadowrun_core.azure.vm_selection import (
    SKIP_ONE_ERROR_CODES,
    choose_vm_sizes,
    is_quota_error,
    same_quota,
)
from meadowrun_core.azure.vm_sizes import VmSizeOffer, load_offers
from meadowrun_core.backend import CapacityError
from meadowrun_core.bootstrap.agent_start import agent_command
from meadowrun_core.bootstrap.bundle import agent_bundle, agent_requirements
from meadowrun_core.bootstrap.cloud_init import InstanceBoot, render_user_data
from meadowrun_core.bootstrap.instance_script import boot_commands, boot_files
from meadowrun_core.config import Settings
from meadowrun_core.disk_cache import DiskCache
from meadowrun_core.hosts import AllocAzureVM
from meadowrun_core.remote import ssh
from meadowrun_core.remote.ssh_reach import InstanceReach
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType, check_custom_offered

log = logging.getLogger(__name__)

INSTANCE_ID_TAG = installed.INSTANCE_ID_TAG
HOST_KEY_TAG = "meadowrun-host-key"


def vm_name(instance_id: str) -> str:
    return f"meadowrun-{instance_id}"


class AzureVmProvider(InstanceReach):
    cloud_noun = "Azure VM"

    def __init__(
        self,
        host: AllocAzureVM,
        target: settings.AzureTarget,
        credential: Any,
        settings_: Settings,
        cache_dir: Path,
        plane: DataPlane,
    ) -> None:
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient

        self.host = host
        self.target = target
        self.settings = settings_
        self.plane = plane
        self.custom = dict(host.custom_resources or {})
        self.idle_timeout = (
            host.idle_timeout if host.idle_timeout is not None else settings_.idle_timeout_seconds
        )
        arm: dict[str, Any] = {
            "base_url": settings.arm_url(),
            "credential_scopes": [settings.ARM_SCOPE],
        }
        self.compute = ComputeManagementClient(credential, target.subscription_id, **arm)
        self.network = NetworkManagementClient(credential, target.subscription_id, **arm)
        self.arm = Arm(credential, target.subscription_id)  # what install made
        self._cache_dir = cache_dir
        self._offers: list[VmSizeOffer] | None = None
        self._vm_names: dict[str, str] = {}
        self._host_keys: dict[str, str] = {}
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._forwards: dict[tuple[str, str, int], asyncssh.SSHListener] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._exposed: set[int] = set()
        self._reverse: dict[tuple[str, int], asyncssh.SSHListener] = {}
        self._setup_lock = threading.Lock()
        self._setup: dict[str, Any] = {}

    @property
    def reach_timeout(self) -> float:
        return self.host.launch_timeout

    # --- choosing ----------------------------------------------------------------------
    def offers(self) -> list[VmSizeOffer]:
        if self._offers is None:
            cache = DiskCache(cache_ttl_seconds(), self._cache_dir)
            tag = cache_tag(settings.arm_url())
            location = self.target.location
            bands = GraphBandSource(self.arm, cache, tag).bands(location)
            self._offers = load_offers(
                location, self.compute, default_price_source(), bands, cache, tag
            )
        return self._offers

    def on_demand_price(self, instance_type: str) -> float | None:
        return next((o.regular_price for o in self.offers() if o.name == instance_type), None)

    def check_satisfiable(self, resources: Resources) -> None:
        check_custom_offered(resources, self.custom, "AllocAzureVM")
        choose_vm_sizes(self.offers(), resources, 1, self.target.location, self.custom)

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        """Every fitting (size, market) within the room, cheapest per placed worker first."""
        result = []
        for choice in choose_vm_sizes(
            self.offers(), resources, workers, self.target.location, self.custom
        ):
            offer = choice.offer
            if offer.logical_cpu > room_cpu + 1e-9 or offer.memory_gb > room_memory_gb + 1e-9:
                continue
            spot = choice.market == "spot"
            instance_type = InstanceType(
                name=offer.name,
                logical_cpu=offer.logical_cpu,
                memory_gb=offer.memory_gb,
                price_per_hour=choice.price_per_hour,
                interruption_probability=offer.eviction_upper / 100 if spot else 0.0,
                is_spot=spot,
                gpus=offer.gpus,
                gpu_memory_gb=offer.gpu_memory_per_gpu,
                flags=tuple(sorted(offer.flags)),
                arch=offer.arch,
                custom=tuple(sorted(self.custom.items())),
            )
            result.append((instance_type, choice.workers_per_instance))
        return result

    # --- launching ---------------------------------------------------------------------
    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        host_private, host_public = ssh.new_host_key()
        key = await asyncio.to_thread(self._client_key)
        body = await asyncio.to_thread(
            self._vm_body, instance_id, instance_type, host_private, host_public, key
        )
        name = vm_name(instance_id)
        self._vm_names[instance_id] = name
        self._host_keys[instance_id] = host_public
        await asyncio.to_thread(self._create, name, body)
        log.info(
            "created Azure %s VM %s (%s) as %s",
            "Spot" if instance_type.is_spot else "regular",
            name,
            instance_type.name,
            instance_id,
        )
        await self.start_agent(
            instance_id,
            self._agent_command(instance_id),
            self.host.launch_timeout + 30,
            f"Azure VM {name}",
        )

    def _create(self, name: str, body: dict[str, Any]) -> None:
        """Create and wait; capacity and quota errors become ``CapacityError`` (a VM left
        ``Failed`` by a late allocation failure is deleted first, as Azure requires)."""
        group = self.target.resource_group
        try:
            vms: Any = self.compute.virtual_machines  # the body is the REST API's JSON
            # VM creates take a minute: poll every few seconds unless Azure says otherwise
            vms.begin_create_or_update(group, name, body, polling_interval=2).result()
        except HttpResponseError as exc:
            code = str(getattr(exc.error, "code", "") or "")
            message = str(getattr(exc.error, "message", "") or exc.message)
            # ResourceNotFound: the VM went while being created (a Spot VM evicted at once)
            capacity = code in SKIP_ONE_ERROR_CODES or is_quota_error(code, message)
            capacity = capacity or code == "ResourceNotFound"
            if not capacity:
                raise
            self._delete_quietly(name)
            spot = body["properties"].get("priority") == "Spot"
            quota = is_quota_error(code, message)
            size = body["properties"]["hardwareProfile"]["vmSize"]
            failed = [o for o in self.offers() if o.name == size and quota and not spot]
            family = same_quota(self.offers(), failed[0], "regular") if failed else set()
            raise CapacityError(
                f"{code}: {message}", market_wide=spot and quota, also_refuses=family - {size}
            ) from exc

    def _delete_quietly(self, name: str) -> None:
        try:
            self.compute.virtual_machines.begin_delete(self.target.resource_group, name)
        except HttpResponseError:
            log.debug("could not delete VM %s", name, exc_info=True)

    def _vm_body(
        self,
        instance_id: str,
        instance_type: InstanceType,
        host_private: str,
        host_public: str,
        key: asyncssh.SSHKey,
    ) -> dict[str, Any]:
        files, commands = self._bootstrap(instance_type.arch or "x86_64")
        boot = InstanceBoot(
            host_private_key=host_private,
            host_public_key=host_public,
            authorized_key=ssh.public_line(key),
            ssh_user=ssh.SSH_USER,
            install_commands=commands,
            write_files=files,
        )
        ip_config: dict[str, Any] = {}
        subnet = self.host.subnet_id or self._once("subnet", self._installed_subnet)
        if subnet:
            ip_config["subnet"] = {"id": subnet}
        if not self.host.use_private_ip:
            ip_config["publicIPAddressConfiguration"] = {
                "name": "pip",
                "properties": {"deleteOption": "Delete"},
            }
        nsg = self._once("nsg", self._ensure_nsg)
        name = vm_name(instance_id)
        properties: dict[str, Any] = {
            "hardwareProfile": {"vmSize": instance_type.name},
            "storageProfile": {
                "imageReference": vm_network.image_reference(self.host.image),
                "osDisk": {"createOption": "FromImage", "deleteOption": "Delete"},
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": ssh.SSH_USER,
                "customData": base64.b64encode(render_user_data(boot).encode()).decode(),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {
                        "publicKeys": [
                            {
                                "path": f"/home/{ssh.SSH_USER}/.ssh/authorized_keys",
                                "keyData": ssh.public_line(key),
                            }
                        ]
                    },
                },
            },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [
                    {
                        "name": "nic",
                        "properties": {
                            "primary": True,
                            "deleteOption": "Delete",
                            "networkSecurityGroup": {"id": nsg},
                            "ipConfigurations": [{"name": "ip", "properties": ip_config}],
                        },
                    }
                ],
            },
        }
        if instance_type.is_spot:
            regular = self.on_demand_price(instance_type.name)
            properties.update(
                priority="Spot",
                evictionPolicy="Delete",
                billingProfile={"maxPrice": regular if regular is not None else -1},
            )
        return {
            "location": self.target.location,
            "tags": {**TAGS, INSTANCE_ID_TAG: instance_id, HOST_KEY_TAG: host_public},
            "identity": self._once("identity", self._installed_identity),
            "properties": properties,
        }

    def _installed_subnet(self) -> str | None:
        return installed.vm_subnet(self.arm, self.target)

    def _installed_identity(self) -> dict[str, Any]:
        return installed.vm_identity(self.arm, self.target)

    def _ensure_nsg(self) -> str:
        cidr = vm_network.client_cidr(self.host.ssh_cidr)
        return vm_network.ensure_nsg(
            self.network, self.target.resource_group, self.target.location, cidr
        )

    def _bootstrap(self, arch: str) -> tuple[tuple[dict[str, str], ...], tuple[str, ...]]:
        """cloud-init's ``write_files`` and ``runcmd`` that install the agent on a stock image
        (none when ``agent_python`` says the image has it)."""
        if self.host.agent_python is not None:
            return (), ()
        roots = agent_requirements("azure")
        bundle = self._once(f"bundle {roots} {arch}", lambda: agent_bundle(roots, arch))
        container = self.plane.storage.blob_service().get_container_client(CONTAINER_NAME)
        day = int(time.time() // 86400)  # looked at again daily: stored objects expire
        self._once(f"uploaded {bundle.key} {day}", lambda: upload_agent_bundle(container, bundle))
        url = bundle_url(
            self.plane.storage.blob_url,
            self.plane.account_name,
            self.plane.account_key,
            CONTAINER_NAME,
            bundle,
        )
        return tuple(boot_files(url, bundle.sha256)), tuple(boot_commands(bundle.python))

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per provider, even when launches in threads ask at once."""
        with self._setup_lock:
            if name not in self._setup:
                self._setup[name] = make()
            return self._setup[name]

    def _client_key(self) -> asyncssh.SSHKey:
        """The subscription's SSH client key, from Key Vault once per provider."""
        vault = self.plane.vault
        key: asyncssh.SSHKey = self._once(
            "client key",
            lambda: asyncssh.import_private_key(
                get_or_create_secret(vault, SECRET_SSH_KEY, ssh.new_client_key_text)
            ),
        )
        return key

    def _agent_command(self, instance_id: str) -> str:
        return agent_command(
            cloud="azure",
            region=self.target.location,
            instance_id=instance_id,
            idle_timeout=self.idle_timeout,
            settings=self.settings,
            launch_timeout=self.host.launch_timeout,
            agent_python=self.host.agent_python,
            environment=settings.agent_environment(),
        )

    # --- reaching ----------------------------------------------------------------------
    def _identify(self, instance_id: str) -> tuple[str, str]:
        """The VM's name and pinned host key (from its tags when another client made it)."""
        if instance_id in self._vm_names:
            return self._vm_names[instance_id], self._host_keys[instance_id]
        for vm in self.compute.virtual_machines.list(self.target.resource_group):
            tags = vm.tags or {}
            if tags.get(INSTANCE_ID_TAG) == instance_id and HOST_KEY_TAG in tags:
                self._vm_names[instance_id] = str(vm.name)
                self._host_keys[instance_id] = str(tags[HOST_KEY_TAG])
                return self._vm_names[instance_id], self._host_keys[instance_id]
        raise ConnectionError(f"no Azure VM is meadowrun instance {instance_id}")

    def _lookup_address(self, cloud_id: str) -> tuple[str, int] | None:
        address = vm_network.vm_address(
            self.compute,
            self.network,
            self.target.resource_group,
            cloud_id,
            self.host.use_private_ip,
        )
        return (address, 22) if address else None

    # --- stopping ----------------------------------------------------------------------
    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        try:
            name, _ = self._identify(instance_id)
        except ConnectionError:
            return
        log.info("deleting Azure VM %s (%s)", name, instance_id)
        with contextlib.suppress(ResourceNotFoundError):
            self.compute.virtual_machines.begin_delete(self.target.resource_group, name)
        self.drop_connection(instance_id)

    def failure_hint(self, instance_id: str) -> str:
        name = self._vm_names.get(instance_id, "(not created)")
        return (
            f"Azure VM {name} was deleted; the agent's log was "
            f"~/.meadowrun/agent-{instance_id}.log on it"
        )
