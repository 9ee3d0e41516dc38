"""The EC2 twin: every instance moto launches becomes a twin host (tests/twin_hosts.py).

moto's server (bound to the twin network's gateway, so hosts can reach it) stays the control
plane. ``Ec2Twin`` polls it and, for each pending or running instance with cloud-config user
data, boots a host of its own: own address, sshd with the user data's keys, cloud-init's
``write_files`` and ``runcmd`` run as root, nothing of ours installed. Its firewall is its
security groups, re-read on every poll: ingress rules by protocol, port range and CIDR, and
rules naming a group admit the addresses of the hosts in that group. When moto stops or
terminates an instance (or it disappears), or the twin closes, its host powers off and its
namespace is deleted.

On the gateway the twin serves what the instances' network offers:

* the instance metadata service (IMDSv2: token, instance id, addresses, placement, spot
  ``instance-action``, the instance profile's role credentials), reached by hosts at
  169.254.169.254 and telling them apart by source address;
* ``/checkip``, which answers the caller's address as AWS's checkip service does, so the
  client learns the address its security-group rule must admit.

``address_map_path`` maps EC2 instance ids to ``ip:22`` of their hosts, for the client
(``MEADOWRUN_EC2_ADDRESS_MAP``): moto's made-up addresses are never connected to.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
import traceback
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.imds_tokens import TOKEN_PATH, ImdsTokens
from tests.twin_hosts import IngressRule, TwinHost, TwinNetwork

_log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
_UP_STATES = frozenset({"pending", "running"})
# Closing takes 1-2 s. In CI it once took 30-50 s, unseen until the close said where it was
# (deleting powered-off hosts' disks in line: now tests/twin_disks.py). Past this it says so
# again, through a warning, which pytest's summary prints for passing tests too.
_SLOW_CLOSE_SECONDS = 8.0


def _warn_slow(what: str, thread: threading.Thread | None) -> None:
    frame = sys._current_frames().get(thread.ident or 0) if thread is not None else None
    stack = "".join(traceback.format_stack(frame)[-8:]) if frame is not None else ""
    warnings.warn(f"{what}\n{stack}", stacklevel=2)


class Ec2Twin:
    def __init__(
        self,
        network: TwinNetwork,
        endpoint_url: str,
        region: str,
        base_dir: Path,
        instance_environment: dict[str, str] | None = None,
    ) -> None:
        self.network = network
        self.endpoint_url = endpoint_url
        self.region = region
        self.base_dir = Path(base_dir)
        # What the instances' image sets for every login (sshd SetEnv): the emulated endpoints.
        self.instance_environment = {
            "AWS_ENDPOINT_URL": endpoint_url,
            **(instance_environment or {}),
        }
        self._ec2: Any = boto3.client(
            "ec2",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}),
        )
        self._lock = threading.Condition()
        self._hosts: dict[str, TwinHost] = {}  # ec2 id -> host, up hosts only
        self._by_ip: dict[str, str] = {}  # host ip -> ec2 id
        self._groups: dict[str, tuple[str, ...]] = {}  # ec2 id -> its security group ids
        self._roles: dict[str, str] = {}  # ec2 id -> instance profile name
        self._interrupt_at: dict[str, datetime.datetime] = {}
        self._tokens: dict[str, ImdsTokens] = {}  # per instance, as real tokens are
        self._seen: set[str] = set()
        self._closed = False
        self._failure: BaseException | None = None
        self._server = ThreadingHTTPServer((network.gateway, 0), _handler(self))
        self._server.daemon_threads = True
        self.metadata_port = int(self._server.server_address[1])
        self._threads: list[threading.Thread] = []

    @property
    def checkip_url(self) -> str:
        return f"http://{self.network.gateway}:{self.metadata_port}/checkip"

    @property
    def address_map_path(self) -> Path:
        return self.base_dir / "address_map.json"

    # --- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._write_address_map()
        for target, name in ((self._server.serve_forever, "imds"), (self._watch, "ec2-twin")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        started = time.monotonic()
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for thread in self._threads[1:]:
            thread.join(timeout=_SLOW_CLOSE_SECONDS)
            if thread.is_alive():  # say what it is stuck in, then give it the rest
                _warn_slow(
                    f"the {thread.name} thread is busy after {_SLOW_CLOSE_SECONDS} s in", thread
                )
                thread.join(timeout=30 - _SLOW_CLOSE_SECONDS)
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            hosts = list(self._hosts.values())
            self._hosts.clear()
        for host in hosts:
            self.network.release(host)
        if time.monotonic() - started > _SLOW_CLOSE_SECONDS:
            _warn_slow(f"closing the EC2 twin took {time.monotonic() - started:.1f} s", None)

    def __enter__(self) -> Ec2Twin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the tests look at ----------------------------------------------------------------
    def host(self, ec2_id: str, timeout: float = 30) -> TwinHost:
        """The host playing ``ec2_id``, once it is up."""
        with self._lock:
            self._lock.wait_for(
                lambda: ec2_id in self._hosts or self._closed or self._failure is not None,
                timeout,
            )
            if ec2_id in self._hosts:
                return self._hosts[ec2_id]
            if self._failure is not None:
                raise RuntimeError("the EC2 twin failed") from self._failure
        raise TimeoutError(f"no twin host came up for {ec2_id} within {timeout} s")

    def hosts(self) -> dict[str, TwinHost]:
        with self._lock:
            return dict(self._hosts)

    def processes(self, ec2_id: str) -> list[int]:
        with self._lock:
            host = self._hosts.get(ec2_id)
        return host.pids() if host is not None else []

    def interrupt(self, ec2_id: str, in_seconds: float) -> None:
        """Post a spot interruption notice on the instance's metadata service."""
        self.host(ec2_id)
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=in_seconds)
        with self._lock:
            self._interrupt_at[ec2_id] = when

    # --- watching moto -------------------------------------------------------------------------
    def _watch(self) -> None:
        failing = False
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self._poll_once()
                failing = False
            except Exception as exc:
                if not failing:
                    _log.warning("polling moto failed: %r", exc)
                failing = True
            with self._lock:
                self._lock.wait_for(lambda: self._closed, _POLL_SECONDS)

    def _poll_once(self) -> None:
        instances: dict[str, dict[str, Any]] = {}
        for page in self._ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    instances[instance["InstanceId"]] = instance
        for ec2_id, instance in instances.items():
            state = instance["State"]["Name"]
            if state in _UP_STATES and ec2_id not in self._seen:
                self._seen.add(ec2_id)
                try:
                    self._boot(instance)
                except Exception as exc:
                    _log.exception("could not boot a twin host for %s", ec2_id)
                    with self._lock:
                        self._failure = exc
                        self._lock.notify_all()
        with self._lock:
            up = dict(self._hosts)
        for ec2_id, host in up.items():
            state = instances.get(ec2_id, {}).get("State", {}).get("Name", "gone")
            if state not in _UP_STATES:
                _log.info("%s is %s in moto: powering its host off", ec2_id, state)
                with self._lock:
                    self._hosts.pop(ec2_id, None)
                    self._by_ip.pop(host.ip, None)
                    self._write_address_map()
                self.network.release(host)
        self._apply_security_groups()

    def _boot(self, instance: dict[str, Any]) -> None:
        ec2_id = instance["InstanceId"]
        attribute = self._ec2.describe_instance_attribute(InstanceId=ec2_id, Attribute="userData")
        value = attribute.get("UserData", {}).get("Value")
        if not value:
            return
        user_data = base64.b64decode(value).decode()
        if not user_data.startswith("#cloud-config"):
            return
        groups = tuple(g["GroupId"] for g in instance.get("SecurityGroups", []))
        profile = instance.get("IamInstanceProfile", {}).get("Arn", "").rsplit("/", 1)[-1]
        host = self.network.new_host(ec2_id, self.base_dir / ec2_id)
        with self._lock:
            self._groups[ec2_id] = groups
            self._roles[ec2_id] = profile
            self._by_ip[host.ip] = ec2_id
        host.boot(
            user_data,
            (self.network.gateway, self.metadata_port),
            self._ingress(groups, self._describe_groups(groups)),
            self.instance_environment,
            hostname=f"ip-{host.ip.replace('.', '-')}",
        )
        with self._lock:
            self._hosts[ec2_id] = host
            self._write_address_map()
            self._lock.notify_all()
        _log.info("twin host for %s up at %s", ec2_id, host.ip)

    def _describe_groups(self, group_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        if not group_ids:
            return []
        return list(self._ec2.describe_security_groups(GroupIds=list(group_ids))["SecurityGroups"])

    def _ingress(
        self, own_groups: tuple[str, ...], groups: list[dict[str, Any]]
    ) -> list[IngressRule]:
        with self._lock:
            members = {
                group: [ip for ip, ec2_id in self._by_ip.items() if group in self._groups[ec2_id]]
                for group in own_groups
            }
        rules = []
        for group in groups:
            for permission in group.get("IpPermissions", []):
                protocol = {"-1": "all"}.get(permission["IpProtocol"], permission["IpProtocol"])
                ports = (permission.get("FromPort", 0), permission.get("ToPort", 65535))
                if protocol == "all" or ports[0] == -1:
                    ports = (0, 65535)
                sources = [r["CidrIp"] for r in permission.get("IpRanges", [])]
                for pair in permission.get("UserIdGroupPairs", []):
                    sources += [f"{ip}/32" for ip in members.get(pair["GroupId"], [])]
                rules += [IngressRule(protocol, cidr, *ports) for cidr in sources]
        return rules

    def _apply_security_groups(self) -> None:
        with self._lock:
            hosts = dict(self._hosts)
            groups = {ec2_id: self._groups[ec2_id] for ec2_id in hosts}
        all_ids = tuple(sorted({g for ids in groups.values() for g in ids}))
        described = {g["GroupId"]: g for g in self._describe_groups(all_ids)}
        for ec2_id, host in hosts.items():
            rules = self._ingress(groups[ec2_id], [described[g] for g in groups[ec2_id]])
            if tuple(rules) != host.ingress:
                _log.info("%s: firewall now %s", ec2_id, rules)
                host.set_ingress(rules)

    def _write_address_map(self) -> None:
        mapping = {ec2_id: f"{host.ip}:22" for ec2_id, host in sorted(self._hosts.items())}
        fd, temp = tempfile.mkstemp(dir=self.base_dir, prefix=".address_map.", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(mapping, file)
        os.replace(temp, self.address_map_path)

    # --- the metadata service ------------------------------------------------------------------
    def metadata_answer(
        self, caller: str, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, str]:
        if path == "/checkip":
            return 200, caller + "\n"
        with self._lock:
            ec2_id = self._by_ip.get(caller)
        if ec2_id is None:
            return 403, ""
        with self._lock:
            tokens = self._tokens.setdefault(ec2_id, ImdsTokens())
        if path == TOKEN_PATH:
            return tokens.issue(method, headers)
        refused = tokens.refuse(method, headers)
        if refused is not None:
            return refused, ""
        with self._lock:
            interrupt_at = self._interrupt_at.get(ec2_id)
            role = self._roles.get(ec2_id, "")
            ip = next((ip for ip, i in self._by_ip.items() if i == ec2_id), "")
        if path.rstrip("/") == "/latest/dynamic/instance-identity/document":
            return 200, json.dumps({"instanceId": ec2_id, "region": self.region, "privateIp": ip})
        item = path.removeprefix("/latest/meta-data/").rstrip("/")
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
        answers = {
            "instance-id": ec2_id,
            "local-ipv4": ip,
            "placement/region": self.region,
            "placement/availability-zone": f"{self.region}a",
            "iam/security-credentials": role,
        }
        if answers.get(item):
            return 200, answers[item]
        if role and item == f"iam/security-credentials/{role}":
            return 200, json.dumps(
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIATWIN" + ec2_id[-8:].upper(),
                    "SecretAccessKey": secrets.token_urlsafe(30),
                    "Token": secrets.token_urlsafe(60),
                    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "LastUpdated": datetime.datetime.now(datetime.UTC).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                }
            )
        if item == "spot/instance-action" and interrupt_at is not None:
            when = interrupt_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            return 200, json.dumps({"action": "terminate", "time": when})
        return 404, ""


def _handler(twin: Ec2Twin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?")[0]
            status, body = twin.metadata_answer(self.client_address[0], self.command, path, headers)
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("metadata: " + format, *args)

    return Handler
