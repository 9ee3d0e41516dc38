"""Network security groups in the Azure twin's ARM part, and the firewall they make of a twin
host (tests/twin_hosts.py).

Shapes follow the Network REST reference and the examples in ``Azure/azure-rest-api-specs``
(``specification/network/resource-manager/Microsoft.Network/stable/.../examples``):

* Network Security Groups - Create Or Update, Get, List, Delete
  (``NetworkSecurityGroupCreateWithRule.json``, ``NetworkSecurityGroupGet.json``,
  ``NetworkSecurityGroupList.json``, ``NetworkSecurityGroupDelete.json``): PUT answers 201
  (200 when it replaced one) with ``provisioningState: Succeeded`` at once, so the SDK's poller
  is done on its first response; every group carries Azure's six ``defaultSecurityRules``
  (``AllowVnetInBound`` 65000, ``AllowAzureLoadBalancerInBound`` 65001, ``DenyAllInBound``
  65500, and their outbound three); DELETE answers 200, 204 when there is none, and 400
  ``InUseNetworkSecurityGroupCannotBeDeleted`` while a VM's NIC uses it;
* Security Rules - Create Or Update, Get, Delete (``NetworkSecurityRuleCreate.json``,
  ``NetworkSecurityRuleGet.json``, ``NetworkSecurityRuleDelete.json``);
* rule checks as "Network security groups" (learn.microsoft.com/azure/virtual-network/
  network-security-groups-overview) states them: priority 100-4096 (400
  ``SecurityRuleInvalidPriority``), one rule per priority and direction (400
  ``SecurityRuleConflict``), ``protocol`` Tcp/Udp/Icmp/Esp/Ah/*, ``access`` Allow/Deny,
  ``direction`` Inbound/Outbound.

``ingress_rules`` turns a group into a host's firewall as the overview evaluates it: inbound
rules by priority, the first match decides (Deny becomes a DROP ahead of lower-priority
Allows, so nothing is approximated), then the default rules. Address prefixes: a CIDR or
address as is, ``*``/``Any`` everything, ``VirtualNetwork`` the twin subnet without its gateway
(the other VMs: the gateway plays the internet, the test process being a laptop outside the
VNet), ``Internet`` the gateway (the only address outside the VNet that reaches the hosts),
other service tags (``AzureLoadBalancer``...) nothing. No group: the defaults only (inbound
from the VNet allowed, from the internet denied). Outbound rules are stored, not enforced.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tests.azure_twin_http import Request, Response, error, no_group, not_found
from tests.twin_hosts import IngressRule

_NSG = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.Network/networkSecurityGroups(?:/(?P<nsg>[^/]+)"
    r"(?:/securityRules/(?P<rule>[^/]+))?)?",
    re.I,
)
_KIND = "Microsoft.Network/networkSecurityGroups"
_PROTOCOLS = {"tcp": ["tcp"], "udp": ["udp"], "icmp": ["icmp"], "esp": [], "ah": []}
_DEFAULTS = [  # name, description, source, destination, access, priority, direction
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", "VirtualNetwork",
     "VirtualNetwork", "Allow", 65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer",
     "AzureLoadBalancer", "*", "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET",
     "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", "*",
     "Internet", "Allow", 65001, "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
]  # fmt: skip


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _rule(
    nsg_id: str, name: str, props: Mapping[str, Any], default: bool = False
) -> dict[str, Any]:
    kind = "defaultSecurityRules" if default else "securityRules"
    return {
        "name": name,
        "id": f"{nsg_id}/{kind}/{name}",
        "etag": _etag(),
        "type": f"{_KIND}/{kind}",
        "properties": {**props, "provisioningState": "Succeeded"},
    }


def _default_rules(nsg_id: str) -> list[dict[str, Any]]:
    return [
        _rule(
            nsg_id,
            name,
            {
                "description": description, "protocol": "*", "sourcePortRange": "*",
                "destinationPortRange": "*", "sourceAddressPrefix": source,
                "destinationAddressPrefix": destination, "access": access,
                "priority": priority, "direction": direction,
            },
            default=True,
        )
        for name, description, source, destination, access, priority, direction in _DEFAULTS
    ]  # fmt: skip


def nsg_ids(vm: Mapping[str, Any]) -> list[str]:
    """Ids of the groups the NICs of ``vm`` (an ARM VM resource or its PUT body) name."""
    profile = vm.get("properties", {}).get("networkProfile") or {}
    found = []
    for config in profile.get("networkInterfaceConfigurations") or []:
        group = (config.get("properties") or {}).get("networkSecurityGroup") or {}
        if group.get("id"):
            found.append(str(group["id"]))
    return found


def missing_reference(resource_id: str, nic_id: str) -> Response:
    """Network's 400 ``InvalidResourceReference`` for a NIC naming a resource that is not
    there (a security group, a subnet)."""
    return error(
        400,
        "InvalidResourceReference",
        f"Resource {resource_id} referenced by resource {nic_id} was not found. Please make "
        "sure that the referenced resource exists, and that both resources are in the same "
        "region.",
    )


class NsgTwin:
    """The groups of one subscription; ``on_change`` callbacks run after each PUT or DELETE."""

    def __init__(
        self,
        resource_groups: Mapping[str, str],
        vms: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.resource_groups = resource_groups  # lower-cased name -> location
        self._vms = vms  # the live VMs' resources, for "in use"
        self.on_change: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._groups: dict[str, dict[str, Any]] = {}  # lower-cased id -> resource

    def get(self, nsg_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._groups.get(nsg_id.lower())

    def list_under(self, prefix: str) -> list[dict[str, Any]]:
        """The groups whose lower-cased id starts with ``prefix`` (a resource group's)."""
        with self._lock:
            return [g for key, g in sorted(self._groups.items()) if key.startswith(prefix)]

    def missing_reference(self, vm: Mapping[str, Any], nic_id: str) -> Response | None:
        """400 ``InvalidResourceReference`` when ``vm`` (a PUT body) names a group that does
        not exist, as a NIC naming one does."""
        for nsg_id in nsg_ids(vm):
            if self.get(nsg_id) is None:
                return missing_reference(nsg_id, nic_id)
        return None

    # --- the REST API ----------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        m = _NSG.fullmatch(request.path)
        if m is None:
            return None
        if m["rg"].lower() not in self.resource_groups:
            return no_group(m["rg"])
        nsg_id = request.path if m["rule"] is None else request.path.rsplit("/", 2)[0]
        method, name, rule = request.method, m["nsg"], m["rule"]
        if name is None:
            if method != "GET":
                return error(405, "MethodNotAllowed", f"{method} on a list")
            prefix = request.path.lower() + "/"
            with self._lock:
                found = [g for key, g in sorted(self._groups.items()) if key.startswith(prefix)]
            return Response(200, {"value": found})
        if method == "PUT":
            body = request.json() or {}
            answer = self._put_rule(nsg_id, rule, body) if rule else self._put(nsg_id, body)
        elif method == "GET":
            answer = self._get(nsg_id, m["rg"], name, rule)
        elif method == "DELETE":
            answer = self._delete(nsg_id, rule)
        else:
            return error(405, "MethodNotAllowed", f"The twin does not serve {method} here.")
        if method != "GET" and answer.status in (200, 201):
            for callback in self.on_change:
                callback()
        return answer

    def _get(self, nsg_id: str, rg: str, name: str, rule: str | None) -> Response:
        group = self.get(nsg_id)
        if group is None:
            return not_found(_KIND, name, rg)
        if rule is None:
            return Response(200, group)
        for found in group["properties"]["securityRules"]:
            if found["name"].lower() == rule.lower():
                return Response(200, found)
        return not_found(f"{_KIND}/{name}/securityRules", rule, rg)

    def _put(self, nsg_id: str, body: Mapping[str, Any]) -> Response:
        if not body.get("location"):
            return error(400, "LocationRequired", "The location property is required.")
        rules = [
            _rule(nsg_id, str(r["name"]), r.get("properties") or {})
            for r in (body.get("properties") or {}).get("securityRules") or []
        ]
        invalid = _check(rules)
        if invalid is not None:
            return invalid
        with self._lock:
            replaced = nsg_id.lower() in self._groups
            old = self._groups.get(nsg_id.lower(), {}).get("properties", {})
            self._groups[nsg_id.lower()] = {
                "name": nsg_id.rsplit("/", 1)[1],
                "id": nsg_id,
                "etag": _etag(),
                "type": _KIND,
                "location": body["location"],
                "tags": dict(body.get("tags") or {}),
                "properties": {
                    "provisioningState": "Succeeded",
                    "resourceGuid": old.get("resourceGuid", str(uuid.uuid4())),
                    "securityRules": rules,
                    "defaultSecurityRules": _default_rules(nsg_id),
                },
            }
            return Response(200 if replaced else 201, self._groups[nsg_id.lower()])

    def _put_rule(self, nsg_id: str, name: str, body: Mapping[str, Any]) -> Response:
        new = _rule(nsg_id, name, body.get("properties") or {})
        with self._lock:
            group = self._groups.get(nsg_id.lower())
            if group is None:
                rg = nsg_id.split("/")[4]
                return not_found(_KIND, nsg_id.rsplit("/", 1)[1], rg)
            rules = group["properties"]["securityRules"]
            kept = [r for r in rules if r["name"].lower() != name.lower()]
            invalid = _check([*kept, new])
            if invalid is not None:
                return invalid
            group["properties"]["securityRules"] = [*kept, new]
            group["etag"] = _etag()
            return Response(200 if len(kept) < len(rules) else 201, new)

    def _delete(self, nsg_id: str, rule: str | None) -> Response:
        users = [vm["id"] for vm in self._vms() if nsg_id.lower() in map(str.lower, nsg_ids(vm))]
        with self._lock:
            group = self._groups.get(nsg_id.lower())
            if group is None:
                return Response(204)
            if rule is not None:
                rules = group["properties"]["securityRules"]
                kept = [r for r in rules if r["name"].lower() != rule.lower()]
                group["properties"]["securityRules"] = kept
                return Response(200 if len(kept) < len(rules) else 204)
            if users:
                return error(
                    400,
                    "InUseNetworkSecurityGroupCannotBeDeleted",
                    f"Network security group {nsg_id} cannot be deleted because it is in use "
                    f"by the following resources: {', '.join(users)}.",
                )
            del self._groups[nsg_id.lower()]
        return Response(200)


def _check(rules: list[dict[str, Any]]) -> Response | None:
    """The first rule error of ``rules``, None when they are fine."""
    seen: dict[tuple[str, int], str] = {}
    for rule in rules:
        name, props = rule["name"], rule["properties"]
        priority = props.get("priority")
        if not isinstance(priority, int) or not 100 <= priority <= 4096:
            return error(
                400,
                "SecurityRuleInvalidPriority",
                f"Security rule {name} has invalid Priority. Value provided: {priority} "
                "Allowed range 100-4096.",
            )
        direction = str(props.get("direction"))
        if (
            direction not in ("Inbound", "Outbound")
            or props.get("access") not in ("Allow", "Deny")
            or str(props.get("protocol", "")).lower() not in (*_PROTOCOLS, "*")
        ):
            return error(
                400,
                "SecurityRuleParameterContainsUnsupportedValue",
                f"Security rule {name}: direction, access or protocol has an unsupported value.",
            )
        other = seen.setdefault((direction, priority), name)
        if other != name:
            return error(
                400,
                "SecurityRuleConflict",
                f"Security rule {name} conflicts with rule {other}. Rules cannot have the same "
                "Priority and Direction. To learn more, see aka.ms/nsgrules.",
            )
    return None


# --- the firewall a group makes ---------------------------------------------------------------
def ingress_rules(
    group: Mapping[str, Any] | None, vnet: Iterable[str], internet: Iterable[str]
) -> list[IngressRule]:
    """A host's firewall from its NIC's ``group`` (None: Azure's defaults only)."""
    tags = {"virtualnetwork": list(vnet), "internet": list(internet)}
    everywhere = ["0.0.0.0/0"]
    props = (group or {}).get("properties") or {}
    custom = sorted(props.get("securityRules") or [], key=lambda r: r["properties"]["priority"])
    defaults = props.get("defaultSecurityRules") or _default_rules("")
    found: list[IngressRule] = []
    for rule in [*custom, *defaults]:
        p = rule["properties"]
        if p.get("direction") != "Inbound":
            continue
        action = "ACCEPT" if p.get("access") == "Allow" else "DROP"
        sources: list[str] = []
        for prefix in _many(p, "sourceAddressPrefix"):
            if prefix.lower() in ("*", "any"):
                sources += everywhere
            elif re.fullmatch(r"[0-9.]+(/\d+)?", prefix):
                sources.append(prefix)
            else:
                sources += tags.get(prefix.lower(), [])
        ports = [_port_range(text) for text in _many(p, "destinationPortRange")]
        protocol = str(p.get("protocol", "*")).lower()
        if protocol == "*":
            protocols = ["all"] if ports == [(0, 65535)] else ["tcp", "udp"]
        else:
            protocols = _PROTOCOLS[protocol]
        for source in sources:
            for proto in protocols:
                for low, high in [(0, 65535)] if proto in ("all", "icmp") else ports:
                    found.append(IngressRule(proto, source, low, high, action))
    return found


def _many(props: Mapping[str, Any], key: str) -> list[str]:
    """``key`` and ``key + "es"`` (the plural form Azure also takes) together."""
    single = props.get(key)
    return [str(v) for v in ([single] if single else []) + list(props.get(key + "es") or [])]


def _port_range(text: str) -> tuple[int, int]:
    if text.strip() == "*":
        return 0, 65535
    low, _, high = text.partition("-")
    return int(low), int(high or low)
