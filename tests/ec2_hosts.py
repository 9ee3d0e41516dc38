"""Real SSH test hosts on loopback that play the EC2 instances moto launches.

moto's EC2 "launches" instances that never boot (their UserData never runs) and hands out
made-up 10.x/54.x addresses that nothing listens on. ``Ec2TestHosts`` watches moto and, for
every pending/running instance whose UserData is a meadowrun cloud-config
(``meadowrun_core.bootstrap.cloud_init``), boots a stand-in on its own loopback address 127.0.0.N:

* an SSH server (asyncssh) with the host key from the UserData, accepting only the
  authorized key and user from the UserData, running exec requests with ``/bin/sh -c`` in the
  host's home directory (its "disk", ``base_dir/<instance id>/home``) and allowing direct
  TCP/IP forwarding to the instance's own loopback (127.0.0.1 / localhost);
* a small IMDSv2 emulator (token, instance id, placement, spot interruption notice), whose
  address every process on the host finds in ``AWS_EC2_METADATA_SERVICE_ENDPOINT``.

Every process a host starts carries ``MEADOWRUN_TEST_HOST=<instance id>`` in its environment,
so the host finds them again even after they detach (setsid/nohup). When moto reports the
instance stopping, stopped, shutting down or terminated (or it disappears), or when the harness
closes, the host powers off: its servers stop, its connections drop and all of its processes
are killed. ``address_map_path`` holds ``{instance_id: "127.0.0.N:PORT"}`` for the hosts that
are up, rewritten atomically whenever one starts or goes.

This module is the hosts' lifecycle (watching moto, booting and powering off, the address
map); the parts of a host live beside it: tests/ec2_host_ssh.py (the SSH server and its
sessions), tests/ec2_host_imds.py (the IMDS emulator), tests/ec2_host_processes.py (finding and
killing a host's processes) and tests/ec2_host_record.py (the record they all share).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh
import boto3
import psutil
from botocore.config import Config

from meadowrun_core.bootstrap.cloud_init import InstanceBoot, parse_user_data
from tests.ec2_host_imds import serve_imds
from tests.ec2_host_processes import MARKER, find_marked, kill_marked
from tests.ec2_host_record import Host
from tests.ec2_host_ssh import HostSshServer, run_session

_log = logging.getLogger(__name__)

_POLL_SECONDS = 0.1
_FIRST_ADDRESS = ipaddress.IPv4Address("127.0.0.10")
_UP_STATES = frozenset({"pending", "running"})
_REBOOTABLE_STATES = frozenset({"stopping", "stopped"})  # a later start boots it again


class Ec2TestHosts:
    """Plays moto's EC2 instances with SSH servers on loopback; see the module docstring."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        base_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._base_dir = Path(base_dir)
        self._env = dict(env or {})
        self._lock = threading.Condition()
        self._hosts: dict[str, Host] = {}  # guarded by _lock; up hosts only
        self._ever_hosted: set[str] = set()  # guarded by _lock
        self._seen: set[str] = set()  # loop thread only
        self._next_ip = 0  # loop thread only
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ec2: Any = None

    # --- public API ----------------------------------------------------------------------------
    @property
    def address_map_path(self) -> Path:
        return self._base_dir / "address_map.json"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Ec2TestHosts already started")
        self._base_dir.mkdir(parents=True, exist_ok=True)
        self._ec2 = boto3.client(
            "ec2",
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}),
        )
        self._write_address_map()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="ec2-test-hosts", daemon=True
        )
        self._thread.start()
        ready.wait()

    def close(self) -> None:
        """Power off every host: stop its servers and kill every process it started."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is not None and loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=30)
            if thread.is_alive():
                _log.warning("the test hosts' loop did not stop within 30 s")
        # Whatever the loop managed, make sure nothing any host started survives it.
        with self._lock:
            ever_hosted = set(self._ever_hosted)
            self._hosts.clear()
        for instance_id in ever_hosted:
            kill_marked(instance_id)
        if self._thread is not None:
            self._write_address_map()

    def __enter__(self) -> Ec2TestHosts:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def address(self, instance_id: str, timeout: float = 10) -> str:
        """Wait until the instance's host is up; its SSH address, "127.0.0.N:PORT"."""
        return self._wait_for_host(instance_id, timeout).address

    def interrupt(self, instance_id: str, in_seconds: float) -> None:
        """Post a spot interruption notice on the host's IMDS: terminate in ``in_seconds``."""
        host = self._wait_for_host(instance_id, 10)
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=in_seconds)
        with self._lock:
            host.interrupt_at = when
        _log.info("spot interruption notice for %s: terminate at %s", instance_id, when)

    def processes(self, instance_id: str) -> list[psutil.Process]:
        """The live processes the instance's host started (found by environment marker)."""
        return find_marked(instance_id)

    def home(self, instance_id: str) -> Path:
        """The host's home directory: its "disk" (it outlives the host)."""
        return self._base_dir / instance_id / "home"

    # --- waiting -------------------------------------------------------------------------------
    def _wait_for_host(self, instance_id: str, timeout: float) -> Host:
        with self._lock:
            self._lock.wait_for(
                lambda: instance_id in self._hosts or self._closed or self._failure is not None,
                timeout,
            )
            host = self._hosts.get(instance_id)
            if host is not None:
                return host
            if self._failure is not None:
                raise RuntimeError("the test hosts' loop failed") from self._failure
            if self._closed:
                raise RuntimeError("Ec2TestHosts is closed")
        raise TimeoutError(f"no test host came up for {instance_id} within {timeout} s")

    # --- the loop ------------------------------------------------------------------------------
    def _run_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._stop = asyncio.Event()
            ready.set()
            loop.run_until_complete(self._main(self._stop))
        except BaseException as exc:
            _log.exception("the test hosts' loop failed")
            with self._lock:
                self._failure = exc
                self._lock.notify_all()
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                _cancel_remaining(loop)
            loop.close()

    async def _main(self, stop: asyncio.Event) -> None:
        failing = False
        try:
            while not stop.is_set():
                try:
                    await self._poll_once()
                except Exception as exc:
                    # Hosts stay as they are while moto cannot say. Log a streak of failures
                    # once (moto stopping before close() would otherwise log 10 a second).
                    if failing:
                        _log.debug("polling moto for instances failed again: %r", exc)
                    else:
                        _log.warning("polling moto for instances failed", exc_info=True)
                    failing = True
                else:
                    if failing:
                        _log.info("polling moto for instances works again")
                    failing = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _POLL_SECONDS)
        finally:
            with self._lock:
                instance_ids = list(self._hosts)
            for instance_id in instance_ids:
                await self._power_off(instance_id)

    def _describe_states(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for page in self._ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    states[instance["InstanceId"]] = instance["State"]["Name"]
        return states

    async def _poll_once(self) -> None:
        states = await asyncio.to_thread(self._describe_states)
        for instance_id, state in states.items():
            if state in _UP_STATES and instance_id not in self._seen:
                self._seen.add(instance_id)
                try:
                    await self._boot(instance_id)
                except Exception:
                    _log.exception("could not boot a test host for %s", instance_id)
            elif state in _REBOOTABLE_STATES:
                self._seen.discard(instance_id)
        with self._lock:
            up = list(self._hosts)
        for instance_id in up:
            if states.get(instance_id) not in _UP_STATES:
                _log.info(
                    "%s is %s in moto: powering its host off",
                    instance_id,
                    states.get(instance_id, "gone"),
                )
                await self._power_off(instance_id)

    async def _boot(self, instance_id: str) -> None:
        attribute = await asyncio.to_thread(
            self._ec2.describe_instance_attribute, InstanceId=instance_id, Attribute="userData"
        )
        value = attribute.get("UserData", {}).get("Value")
        if not value:
            _log.debug("%s has no user data: not a meadowrun instance, ignored", instance_id)
            return
        try:
            boot = parse_user_data(value)
        except Exception as exc:
            _log.debug("%s's user data is not meadowrun's (%r): ignored", instance_id, exc)
            return
        await self._start_host(instance_id, boot)

    # --- a host --------------------------------------------------------------------------------
    async def _start_host(self, instance_id: str, boot: InstanceBoot) -> None:
        ip = str(_FIRST_ADDRESS + self._next_ip)
        self._next_ip += 1
        home = self.home(instance_id)
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)
        host = Host(instance_id=instance_id, ip=ip, home=home, boot=boot)
        with self._lock:
            self._ever_hosted.add(instance_id)
        try:
            host.imds_server = await asyncio.start_server(
                lambda reader, writer: serve_imds(host, self._region, self._lock, reader, writer),
                ip,
                0,
            )
            host.imds_port = host.imds_server.sockets[0].getsockname()[1]
            host.ssh_server = await asyncssh.create_server(
                lambda: HostSshServer(host),
                ip,
                0,
                server_host_keys=[asyncssh.import_private_key(boot.host_private_key)],
                authorized_client_keys=asyncssh.import_authorized_keys(boot.authorized_key),
                process_factory=lambda process: run_session(host, self._host_env(host), process),
                encoding=None,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
            )
            host.ssh_port = host.ssh_server.get_port()
        except BaseException:
            await _stop_servers(host)
            raise
        with self._lock:  # in the map before address() returns it
            self._hosts[instance_id] = host
            self._write_address_map()
            self._lock.notify_all()
        _log.info(
            "test host for %s up: ssh %s, imds %s:%d", instance_id, host.address, ip, host.imds_port
        )

    async def _power_off(self, instance_id: str) -> None:
        with self._lock:
            host = self._hosts.pop(instance_id, None)
            if host is None:
                return
            self._write_address_map()
        await _stop_servers(host)
        killed = await asyncio.to_thread(kill_marked, instance_id)
        _log.info("test host for %s powered off (%d processes killed)", instance_id, killed)

    def _host_env(self, host: Host) -> dict[str, str]:
        return {
            **os.environ,
            **self._env,
            "HOME": str(host.home),
            MARKER: host.instance_id,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{host.ip}:{host.imds_port}/",
        }

    # --- the address map -----------------------------------------------------------------------
    def _write_address_map(self) -> None:
        with self._lock:  # an RLock: callers may hold it already
            mapping = {iid: host.address for iid, host in sorted(self._hosts.items())}
            fd, temp = tempfile.mkstemp(dir=self._base_dir, prefix=".address_map.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as file:
                    json.dump(mapping, file, indent=1)
                os.replace(temp, self.address_map_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise


async def _stop_servers(host: Host) -> None:
    if host.ssh_server is not None:
        host.ssh_server.close()
    if host.imds_server is not None:
        host.imds_server.close()
    for conn in list(host.connections):
        conn.abort()  # like the power going: no goodbye
    host.connections.clear()
    with contextlib.suppress(Exception):
        if host.ssh_server is not None:
            await asyncio.wait_for(host.ssh_server.wait_closed(), 5)
    with contextlib.suppress(Exception):
        if host.imds_server is not None:
            await asyncio.wait_for(host.imds_server.wait_closed(), 5)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
