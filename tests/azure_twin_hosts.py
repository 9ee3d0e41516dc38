"""The Azure twin's VMs as real hosts: every VM the ARM twin creates becomes a twin host
(tests/twin_hosts.py), as every instance moto launches does in the EC2 twin (tests/
ec2_twin.py).

``AzureTwinHosts`` plugs into an ``AzureTwin`` bound to a ``TwinNetwork``'s gateway
(``AzureTwin(directory, host=network.gateway)``), so hosts reach ARM and Key Vault on it:

* a VM create (its operation, before it succeeds) boots a host named after the VM from its
  ``customData``, a cloud-config document (``ssh_keys``, ``users`` with
  ``ssh_authorized_keys``, ``write_files``, ``runcmd``, as
  ``meadowrun_core/bootstrap/cloud_init.py`` renders), as cloud-init's Azure datasource
  does: the ``adminUsername`` joins the users with the ``osProfile``'s SSH public keys, and
  without ``ssh_keys`` a fresh ed25519 host key is made; the hostname is the
  ``osProfile.computerName`` (Azure's default: the VM name). The host's address becomes the
  VM's NIC private IP and its public IP;
* the host's firewall is the network security group its NIC configuration names
  (``tests/azure_twin_nsg.py``, ``ingress_rules``: inbound rules by priority, then Azure's
  default rules, VNet = the twin subnet less the gateway), re-applied to every running host
  whenever a group or rule is PUT or deleted;
* 169.254.169.254:80 is the twin's Azure Instance Metadata Service (``azure_twin_imds.py``):
  instance metadata, Scheduled Events, managed identity tokens; ``preempt`` posts a Preempt
  event and evicts the VM (``ArmTwin.evict``) when its ``NotBefore`` passes;
* the image trusts the twin's CA: its certificate lies on every host's disk at
  ``TWIN_CA_PATH``, and logins (sshd ``SetEnv``) carry ``REQUESTS_CA_BUNDLE`` and
  ``SSL_CERT_FILE`` pointing at it, with ``instance_environment`` added.

A delete through ARM, an eviction or ``close`` powers the host off and releases its address.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.azure_twin import AzureTwin
from tests.azure_twin_arm import TwinVm
from tests.azure_twin_imds import AzureImds
from tests.azure_twin_nsg import ingress_rules, nsg_ids
from tests.twin_hosts import IngressRule, TwinHost, TwinNetwork

_log = logging.getLogger(__name__)

TWIN_CA_PATH = "/opt/azure-twin/ca.pem"


class AzureTwinHosts:
    def __init__(
        self,
        twin: AzureTwin,
        network: TwinNetwork,
        base_dir: Path,
        instance_environment: dict[str, str] | None = None,
    ) -> None:
        if twin.server.host != network.gateway:
            raise ValueError(
                f"the Azure twin listens on {twin.server.host}, where the hosts cannot reach "
                f"it: make it with AzureTwin(..., host={network.gateway!r})"
            )
        self.twin = twin
        self.network = network
        self.base_dir = Path(base_dir)
        self.instance_environment = {
            "REQUESTS_CA_BUNDLE": TWIN_CA_PATH,
            "SSL_CERT_FILE": TWIN_CA_PATH,
            **(instance_environment or {}),
        }
        gateway = ipaddress.IPv4Network(f"{network.gateway}/32")
        self.vnet = [str(n) for n in network.subnet.address_exclude(gateway)]
        self.internet = [str(gateway)]
        self.imds = AzureImds(network.gateway, network.subnet, self._evict)
        self._lock = threading.Lock()
        self._hosts: dict[tuple[str, str], tuple[TwinVm, TwinHost]] = {}  # (rg, name) lower

    # --- life ----------------------------------------------------------------------------------
    def start(self) -> AzureTwinHosts:
        self.imds.start()
        self.twin.arm.on_vm_created.append(self._boot)
        self.twin.arm.on_vm_deleted.append(self._power_off)
        self.twin.arm.nsgs.on_change.append(self.apply_firewalls)
        return self

    def close(self) -> None:
        for hooks, hook in (
            (self.twin.arm.on_vm_created, self._boot),
            (self.twin.arm.on_vm_deleted, self._power_off),
            (self.twin.arm.nsgs.on_change, self.apply_firewalls),
        ):
            if hook in hooks:
                hooks.remove(hook)  # type: ignore[arg-type]
        self.imds.close()
        with self._lock:
            hosts = [host for _, host in self._hosts.values()]
            self._hosts.clear()
        for host in hosts:
            self.network.release(host)

    def __enter__(self) -> AzureTwinHosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the tests look at ----------------------------------------------------------------
    def host(self, vm_name: str, resource_group: str | None = None) -> TwinHost:
        """The host playing the VM (a host is up once its VM's create succeeded)."""
        with self._lock:
            for (rg, name), (_, host) in self._hosts.items():
                if name == vm_name.lower() and resource_group in (None, rg):
                    return host
        raise KeyError(f"no twin host plays {vm_name}")

    def hosts(self) -> dict[str, TwinHost]:
        """VM name -> host, for the VMs up now."""
        with self._lock:
            return {vm.name: host for vm, host in self._hosts.values()}

    def preempt(self, vm_name: str, in_seconds: float) -> str:
        """Azure reclaims the Spot VM: a Preempt event now, the eviction at its NotBefore."""
        return self.imds.preempt(vm_name, in_seconds)

    def ingress(self, vm: TwinVm) -> list[IngressRule]:
        """The firewall of ``vm``'s host: its first NIC's security group, as Azure applies it."""
        groups = nsg_ids(vm.resource)
        group = self.twin.arm.nsgs.get(groups[0]) if groups else None
        return ingress_rules(group, self.vnet, self.internet)

    def apply_firewalls(self) -> None:
        with self._lock:
            up = list(self._hosts.values())
        for vm, host in up:
            rules = self.ingress(vm)
            if tuple(rules) != host.ingress and host.powered:
                _log.info("%s: firewall now %s", vm.name, rules)
                host.set_ingress(rules)

    # --- the ARM hooks ---------------------------------------------------------------------
    def _boot(self, vm: TwinVm) -> str:
        host = self.network.new_host(vm.name, self.base_dir / vm.name)
        try:
            ca = host.path(TWIN_CA_PATH)
            ca.parent.mkdir(parents=True, exist_ok=True)
            ca.write_bytes(self.twin.certificate.cert_path.read_bytes())
            os_profile = vm.resource["properties"].get("osProfile") or {}
            self.imds.add(host.ip, vm)
            host.boot(
                cloud_config(vm),
                (self.network.gateway, self.imds.port),
                self.ingress(vm),
                self.instance_environment,
                hostname=str(os_profile.get("computerName") or vm.name),
            )
        except BaseException:
            self.imds.remove(host.ip)
            self.network.release(host)
            raise
        with self._lock:
            self._hosts[(vm.resource_group.lower(), vm.name.lower())] = (vm, host)
        _log.info("twin host for VM %s up at %s", vm.name, host.ip)
        return host.ip

    def _power_off(self, vm: TwinVm) -> None:
        with self._lock:
            found = self._hosts.pop((vm.resource_group.lower(), vm.name.lower()), None)
        if found is not None:
            _, host = found
            self.imds.remove(host.ip)
            self.network.release(host)

    def _evict(self, vm: TwinVm) -> None:
        self.twin.arm.evict(vm.resource_group, vm.name)


def cloud_config(vm: TwinVm) -> str:
    """The VM's cloud-config as cloud-init on Azure sees it: its ``customData`` plus the admin
    user with the ``osProfile``'s keys, and a host key when the document brings none."""
    document: dict[str, Any] = {}
    if vm.custom_data:
        loaded = yaml.safe_load(vm.custom_data)
        if not isinstance(loaded, dict):
            raise ValueError(f"{vm.name}: customData is not a cloud-config document")
        document = loaded
    users = document.setdefault("users", [])
    admin = next(
        (u for u in users if isinstance(u, dict) and u.get("name") == vm.admin_username), None
    )
    if vm.admin_username and admin is None:
        admin = {"name": vm.admin_username, "shell": "/bin/bash"}
        users.append(admin)
    if admin is not None:
        keys = admin.setdefault("ssh_authorized_keys", [])
        keys += [key for key in vm.ssh_public_keys if key not in keys]
    if not document.get("ssh_keys"):
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        document["ssh_keys"] = {
            "ed25519_private": private.decode(),
            "ed25519_public": public.decode(),
        }
    return "#cloud-config\n" + str(yaml.safe_dump(document, sort_keys=False))
