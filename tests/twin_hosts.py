"""Twin hosts: machines of their own for the cloud twins, built from network namespaces.

A ``TwinNetwork`` is a private subnet (a Linux bridge in the root namespace, its first address
the "gateway" where the tests' emulators listen). A ``TwinHost`` plays one cloud instance on
it, taking none of the shortcuts a real account never offers:

* its own network namespace and address, reached over a veth pair on the bridge, with no
  default route: it reaches the subnet (the emulated cloud endpoints on the gateway and the
  other hosts) and nothing else, as an instance in a private subnet would;
* a firewall (iptables inside the namespace): ingress dropped unless a rule admits it, rules
  given by the caller (a cloud twin turns security-group rules into them);
* its own mount namespace: an empty ``/home``, ``/root``, ``/opt``, ``/tmp``, ``/var``,
  ``/run`` and ``/etc/ssh`` (its "disk", ``disk_dir``), the project's checkout and virtual
  environment hidden, so nothing of ours is installed: only the image's ``python3``;
* a real OpenSSH ``sshd`` with the host key and users from its cloud-config user data;
* cloud-init's work done as cloud-init does it (tests/twin_cloud_init.py): ``ssh_keys``,
  ``users`` (with ``ssh_authorized_keys``), ``write_files``, then ``runcmd`` as root, as one
  shell script with a timeout, its output in ``/var/log/cloud-init-output.log``;
* the instance metadata address 169.254.169.254:80 redirected (DNAT) to the metadata server
  the cloud twin runs on the gateway, which tells hosts apart by their source address.

Powering off kills every process in the namespace and deletes it. Needs root, ``ip``,
``iptables``, ``unshare`` and ``/usr/sbin/sshd``: without them the twin fails (never skips).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.twin_cloud_init import (
    ACCOUNT_FILES,
    PRIVATE_DIRS,
    SSHD,
    disk_path,
    lay_disk,
)
from tests.twin_disks import SHREDDER

_log = logging.getLogger(__name__)

METADATA_IP = "169.254.169.254"


def require_twin_tools() -> None:
    """Fail (never skip) when this machine cannot build twin hosts."""
    missing = [
        tool
        for tool in ("ip", "iptables-restore", "unshare", "nsenter")
        if shutil.which(tool) is None
    ]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)} (scripts/test installs them)")
    if os.geteuid() != 0:
        problems.append("not root (network namespaces need root)")
    if problems:
        raise RuntimeError("the cloud twins cannot run here: " + "; ".join(problems))


def run(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, input=input, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.decode().strip()}"
        )
    return result.stdout.decode()


@dataclass(frozen=True)
class IngressRule:
    """Admit ``protocol`` ("tcp", "udp", "icmp" or "all") from ``cidr`` to the port range
    (``action`` "DROP": refuse it; the first rule that matches decides, as in an Azure NSG)."""

    protocol: str
    cidr: str
    from_port: int = 0
    to_port: int = 65535
    action: str = "ACCEPT"


@contextlib.contextmanager
def claimed_subnet(first: int) -> Iterator[str]:
    """A 192.168.x.0/24 (x in 100-249, tried from ``100 + first % 150`` on) that no other
    process on this machine holds while this one does (a lock file each, released when the
    process ends, killed or not): test processes running side by side (pytest-xdist) never
    build bridges on one subnet."""
    for step in range(150):
        octet = 100 + (first + step) % 150
        lock = open(f"/tmp/meadowrun-twin-subnet-{octet}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            yield f"192.168.{octet}.0/24"
        finally:
            lock.close()
        return
    raise RuntimeError("every twin subnet 192.168.100-249.0/24 is held by another process")


class TwinNetwork:
    """A bridge with a private /24; ``gateway`` is the root namespace's address on it."""

    def __init__(self, tag: str, subnet: str = "192.168.213.0/24") -> None:
        require_twin_tools()
        self.tag = tag  # short: it goes into interface and namespace names
        self.subnet = ipaddress.IPv4Network(subnet)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._free = [str(ip) for ip in hosts[9:]]
        self.bridge = f"mrbr{tag}"
        self._hosts: dict[str, TwinHost] = {}
        self._counter = 0
        remove_stale(tag)
        # A fixed address: a bridge left to itself takes its lowest port's, and changes it when
        # that host powers off, leaving the others' ARP entries for the gateway stale for
        # seconds (their requests to the gateway stall meanwhile).
        octets = self.subnet.network_address.packed
        mac = f"02:6d:72:{octets[1]:02x}:{octets[2]:02x}:01"
        run("ip", "link", "add", self.bridge, "address", mac, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def new_host(self, name: str, disk_dir: Path) -> TwinHost:
        self._counter += 1
        host = TwinHost(self, f"mrt{self.tag}-{self._counter}", self._free.pop(0), disk_dir, name)
        self._hosts[host.namespace] = host
        return host

    def bare_host(self, name: str, disk_dir: Path) -> TwinHost:
        """A plain machine on the subnet (own address, no firewall, no boot): a stranger."""
        host = self.new_host(name, disk_dir)
        host._plug_in()
        host.powered = True
        return host

    def release(self, host: TwinHost) -> None:
        host.power_off()
        if self._hosts.pop(host.namespace, None) is not None:
            self._free.append(host.ip)

    def close(self) -> None:
        for host in list(self._hosts.values()):
            self.release(host)
        run("ip", "link", "del", self.bridge, check=False)
        SHREDDER.wait()


def remove_stale(tag: str) -> None:
    """Namespaces and bridges that earlier runs left behind: this tag's, and those of any
    run whose process is gone (tags are creator pids), so their addresses cannot clash."""

    def stale(other: str) -> bool:
        return other == tag or (other.isdigit() and not os.path.exists(f"/proc/{other}"))

    for line in run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("mrt") and "-" in name and stale(name[3:].split("-")[0]):
            _kill_namespace(name)
    for line in run("ip", "-o", "link", "show", "type", "bridge", check=False).splitlines():
        name = line.split(":")[1].strip() if ":" in line else ""
        if name.startswith("mrbr") and stale(name[4:]):
            run("ip", "link", "del", name, check=False)


def _namespace_pids(namespace: str) -> list[int]:
    out = run("ip", "netns", "pids", namespace, check=False)
    return [int(pid) for pid in out.split()]


def _kill_namespace(namespace: str) -> None:
    for _ in range(10):
        pids = _namespace_pids(namespace)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    run("ip", "netns", "del", namespace, check=False)


class TwinHost:
    """One instance: see the module docstring. ``boot`` takes its cloud-config user data."""

    def __init__(
        self, network: TwinNetwork, namespace: str, ip: str, disk_dir: Path, name: str
    ) -> None:
        self.network = network
        self.namespace = namespace
        self.ip = ip
        self.disk_dir = disk_dir
        self.name = name
        self._init: subprocess.Popen[bytes] | None = None
        self._veth = f"v{namespace.removeprefix('mrt')}"[:15]
        self.ingress: tuple[IngressRule, ...] = ()
        self._metadata: tuple[str, int] | None = None
        self.powered = False
        self._power_lock = threading.Lock()
        self.booted_at = 0.0  # time.time() when its first process started

    # --- disk ----------------------------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """Where a path of the host's own filesystem lies on its disk (private dirs only)."""
        return disk_path(self.disk_dir, inside, self.name)

    def cloud_init_log(self) -> str:
        log = self.path("/var/log/cloud-init-output.log")
        return log.read_text(errors="replace") if log.exists() else ""

    # --- life ----------------------------------------------------------------------------------
    def boot(
        self,
        user_data: str,
        metadata: tuple[str, int],
        ingress: Sequence[IngressRule],
        environment: dict[str, str],
        hostname: str,
    ) -> None:
        """Plug in, apply the firewall, lay the disk as cloud-init would, start sshd and runcmd."""
        document = yaml.safe_load(user_data)
        if not isinstance(document, dict):
            raise ValueError(f"{self.name}: user data is not a cloud-config document")
        self._metadata = metadata
        self._plug_in()
        self.set_ingress(ingress)
        lay_disk(self.disk_dir, document, environment)
        self.booted_at = time.time()
        self._start_init(hostname)
        self.powered = True

    def _plug_in(self) -> None:
        ns, veth = self.namespace, self._veth
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", f"{veth}h", "type", "veth", "peer", "name", f"{veth}i")
        run("ip", "link", "set", f"{veth}i", "netns", ns)
        run("ip", "link", "set", f"{veth}h", "master", self.network.bridge, "up")
        prefix = self.network.subnet.prefixlen
        for argv in (
            ("ip", "link", "set", f"{veth}i", "name", "eth0"),
            ("ip", "addr", "add", f"{self.ip}/{prefix}", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
            ("ip", "route", "add", f"{METADATA_IP}/32", "dev", "eth0"),
        ):
            run("ip", "netns", "exec", ns, *argv)

    def set_ingress(self, rules: Iterable[IngressRule]) -> None:
        """Replace the firewall: default drop, loopback and replies allowed, then ``rules``."""
        self.ingress = tuple(rules)
        assert self._metadata is not None
        meta_ip, meta_port = self._metadata
        lines = [
            "*filter",
            ":INPUT DROP [0:0]",
            ":FORWARD DROP [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        ]
        for rule in self.ingress:
            if rule.protocol in ("all", "icmp"):
                protocol = "" if rule.protocol == "all" else "-p icmp "
                lines.append(f"-A INPUT {protocol}-s {rule.cidr} -j {rule.action}")
            else:
                lines.append(
                    f"-A INPUT -p {rule.protocol} -s {rule.cidr} "
                    f"--dport {rule.from_port}:{rule.to_port} -j {rule.action}"
                )
        lines += [
            "COMMIT",
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            f"-A OUTPUT -d {METADATA_IP}/32 -p tcp --dport 80 "
            f"-j DNAT --to-destination {meta_ip}:{meta_port}",
            "COMMIT",
            "",
        ]
        run(
            "ip", "netns", "exec", self.namespace, "iptables-restore",
            input="\n".join(lines).encode(),
        )  # fmt: skip

    def _start_init(self, hostname: str) -> None:
        """The host's first process: private mounts, then sshd and cloud-init's runcmd."""
        disk = self.disk_dir
        hidden: list[Path] = []
        for path in sorted({_checkout_root(), Path(os.path.realpath(_venv_root()))}):
            if not any(path.is_relative_to(outer) for outer in hidden):
                hidden.append(path)
        # The disk is bound at /mnt first: binding /tmp or /var may hide where it lies.
        mounts = [f"mount --bind {shlex.quote(str(disk))} /mnt"]
        mounts += [f"mount --bind /mnt/accounts/{name} /etc/{name}" for name in ACCOUNT_FILES]
        mounts += [f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(p))}" for p in hidden]
        for private in sorted(PRIVATE_DIRS, key=lambda p: p.count("/")):
            mounts.append(f"mount --bind /mnt/{private} /{private}")
        mounts.append("umount -l /mnt")
        setup = " && ".join(
            [*mounts, f"hostname {shlex.quote(hostname)}", "exec /bin/sh /run/twin-init"]
        )
        self._init = subprocess.Popen(
            [
                "ip", "netns", "exec", self.namespace,
                "unshare", "--mount", "--uts", "--propagation", "private",
                "/bin/sh", "-c", setup,
            ],
            stdin=subprocess.DEVNULL,
            stdout=open(disk / "init.log", "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip

    def pids(self) -> list[int]:
        """Every process running on the host."""
        return _namespace_pids(self.namespace) if self.powered else []

    def run_inside(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on the host (its network, and its mounts once booted), as root."""
        if self._init is None:
            command = ["ip", "netns", "exec", self.namespace, *argv]
        else:
            command = ["nsenter", "-t", str(self._init.pid), "-n", "-m", "-u", "--", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def power_off(self) -> None:
        """Kill every process and drop the disk; ``powered`` turns False once both are done."""
        with self._power_lock:
            if not self.powered:
                return
            _kill_namespace(self.namespace)
            if self._init is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._init.wait(timeout=5)
            self._delete_disk()
            self.powered = False
        _log.info("twin host %s (%s) powered off", self.name, self.ip)

    def _delete_disk(self) -> None:
        """Drop the disk as EC2 drops a root volume at termination, keeping only the logs.

        ``/var`` (cloud-init's and the bootstrap's logs, a few KB) stays for a failing test to
        print, as a real account keeps the console output a while; the rest (the agent's venv,
        job environments: ~450 MB a host) would pile up over a test run until the disk is full.
        It leaves the disk at once and is deleted in the background (tests/twin_disks.py).
        """
        if not self.disk_dir.exists():
            return
        gone = [e for e in self.disk_dir.iterdir() if e.name not in _KEPT_AFTER_POWER_OFF]
        SHREDDER.discard(self.disk_dir, [*gone, self.disk_dir / "var" / "tmp"])


_KEPT_AFTER_POWER_OFF = frozenset({"init.log", "var"})


def _checkout_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _venv_root() -> str:
    import sys

    return sys.prefix
