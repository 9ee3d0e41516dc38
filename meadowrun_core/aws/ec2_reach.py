"""Finding meadowrun's EC2 instances to SSH to (the connections and forwards themselves:
``remote.ssh_reach``).

Tests (and any emulator) set ``MEADOWRUN_EC2_ADDRESS_MAP`` to a JSON file mapping EC2
instance ids to ``host:port`` of test hosts, because emulated instances have made-up IPs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meadowrun_core.aws import names
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.remote.ssh_reach import InstanceReach

ADDRESS_MAP_ENV = "MEADOWRUN_EC2_ADDRESS_MAP"


class Ec2Reach(InstanceReach):
    """Mixed into ``Ec2Provider``, which sets these up and knows the client's key."""

    host: AllocEC2Instance
    _ec2: Any
    _ec2_ids: dict[str, str]
    _host_keys: dict[str, str]
    cloud_noun = "EC2 instance"

    @property
    def reach_timeout(self) -> float:
        return self.host.launch_timeout

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

    def _lookup_address(self, cloud_id: str) -> tuple[str, int] | None:
        mapped = os.environ.get(ADDRESS_MAP_ENV)
        if mapped:  # an emulator's instances: test hosts stand in for them
            try:
                entry = json.loads(Path(mapped).read_text()).get(cloud_id)
            except (OSError, ValueError):
                return None
            if entry is None:
                return None
            host, port = str(entry).rsplit(":", 1)
            return host, int(port)
        reservations = self._ec2.describe_instances(InstanceIds=[cloud_id])["Reservations"]
        instance = reservations[0]["Instances"][0]
        if instance["State"]["Name"] != "running":
            return None
        field = "PrivateIpAddress" if self.host.use_private_ip else "PublicIpAddress"
        ip = instance.get(field)
        return (str(ip), 22) if ip else None
