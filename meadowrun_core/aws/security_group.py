"""meadowrun's security group: SSH from the clients' own addresses, and instances to each other.

Least exposure: port 22 is open only to the address of a client that launched (as AWS's
checkip service sees it, i.e. its public address) or to a CIDR the user gives
(``AllocEC2Instance(ssh_cidr=...)``); a client from a new address adds its own rule on its
first launch. Everything else a client needs on an instance (the agent, a Dask scheduler and
its dashboard) goes through that SSH connection. Instances in the group reach each other on
every port (Dask workers to their scheduler), as a group that names itself allows. A rule
open to the whole internet, which earlier versions made, is removed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.request
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.exceptions import BadInputError, MeadowrunError

log = logging.getLogger(__name__)

CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_ENV = "MEADOWRUN_CHECKIP_URL"  # another "what is my address" service (a twin's)
_OPEN_TO_ALL = "0.0.0.0/0"


def client_cidr(ssh_cidr: str | None) -> str:
    """The CIDR allowed to SSH in: ``ssh_cidr`` if given, else this client's own address."""
    if ssh_cidr is not None:
        try:
            return str(ipaddress.ip_network(ssh_cidr, strict=False))
        except ValueError:
            raise BadInputError(
                f"AllocEC2Instance(ssh_cidr={ssh_cidr!r}) is not a CIDR; give one such as "
                "'203.0.113.7/32' or '10.0.0.0/16'"
            ) from None
    url = os.environ.get(CHECKIP_ENV) or CHECKIP_URL
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read(100).decode().strip()
        return f"{ipaddress.ip_address(text)}/32"
    except (OSError, ValueError) as exc:
        raise MeadowrunError(
            f"could not learn this client's public address from {url} ({exc}); give the "
            "addresses that may SSH to instances with AllocEC2Instance(ssh_cidr=...)"
        ) from exc


_NO_DEFAULT_VPC = (
    "this region has no default VPC; meadowrun launches instances there "
    "(create one with `aws ec2 create-default-vpc`)"
)


def find_security_group(ec2: Any) -> str | None:
    group = _describe_group(ec2)
    return str(group["GroupId"]) if group else None


def _describe_group(ec2: Any) -> dict[str, Any] | None:
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP]}, *names.TAG_FILTER]
    )["SecurityGroups"]
    return dict(groups[0]) if groups else None


def _create_security_group(ec2: Any) -> str:
    """In the default VPC (where instances launch): EC2 picks it when no VpcId is given."""
    try:
        response = ec2.create_security_group(
            GroupName=names.SECURITY_GROUP,
            Description="meadowrun instances: SSH from clients",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": names.TAGS}],
        )
    except ClientError as exc:
        if error_code(exc) == "VPCIdNotSpecified":
            raise MeadowrunError(_NO_DEFAULT_VPC) from exc
        if error_code(exc) != "InvalidGroup.Duplicate":
            raise
        racing = find_security_group(ec2)  # another client (or launch) created it just now
        if racing is not None:
            return racing
        raise MeadowrunError(
            f"the default VPC has a security group named {names.SECURITY_GROUP} without the "
            f"tag {names.TAG_KEY}={names.TAG_VALUE}; meadowrun did not create it and will not "
            "use it: delete or rename it, then install again"
        ) from exc
    return str(response["GroupId"])


def ensure_security_group(
    region: str, ssh_cidr: str, likely_missing: bool = False
) -> tuple[str, bool]:
    """meadowrun's group in the default VPC admitting SSH from ``ssh_cidr`` and traffic among
    its members; its id and whether it was created. Reads the group once and changes only
    what is missing (each call is a request); ``likely_missing`` (an account set up just
    now) creates it without reading first."""
    ec2 = aws_client("ec2", region)
    group = None if likely_missing else _describe_group(ec2)
    created = group is None
    if group is None:
        group = {"GroupId": _create_security_group(ec2), "IpPermissions": []}
    group_id = str(group["GroupId"])
    permissions = group.get("IpPermissions", [])
    missing = []
    if not any(
        p.get("FromPort") == 22 and any(r.get("CidrIp") == ssh_cidr for r in p.get("IpRanges", []))
        for p in permissions
    ):
        missing.append(
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": ssh_cidr, "Description": "meadowrun SSH from a client"}],
            }
        )
    if not any(
        p.get("IpProtocol") == "-1"
        and any(g.get("GroupId") == group_id for g in p.get("UserIdGroupPairs", []))
        for p in permissions
    ):
        missing.append(
            {
                "IpProtocol": "-1",
                "UserIdGroupPairs": [
                    {"GroupId": group_id, "Description": "meadowrun instances to each other"}
                ],
            }
        )
    if missing:
        try:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
        except ClientError as exc:  # another client added one of them meanwhile
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise
            for permission in missing:
                _authorize(ec2, group_id, permission)
    if ssh_cidr != _OPEN_TO_ALL and any(
        p.get("FromPort") == 22
        and any(r.get("CidrIp") == _OPEN_TO_ALL for r in p.get("IpRanges", []))
        for p in permissions
    ):
        _revoke_open_ssh(ec2, group_id)
    return group_id, created


def _authorize(ec2: Any, group_id: str, permission: dict[str, Any]) -> None:
    try:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
    except ClientError as exc:
        if error_code(exc) != "InvalidPermission.Duplicate":
            raise


def _revoke_open_ssh(ec2: Any, group_id: str) -> None:
    log.warning("removing the rule that admitted SSH from anywhere to %s", group_id)
    ec2.revoke_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": _OPEN_TO_ALL}],
            }
        ],
    )
