"""The Azure Instance Metadata Service as the agent on a VM uses it: the VM's own identity
(name, resource group, subscription, private address) and Scheduled Events (a Spot VM's
Preempt notice)."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.request
from typing import Any

IMDS = "http://169.254.169.254/metadata"
API_VERSION = "2021-02-01"
EVENTS_API_VERSION = "2020-07-01"


def get(path: str, api_version: str = API_VERSION, timeout: float = 2.0) -> Any:
    """The JSON IMDS answers at ``/metadata/<path>`` (``Metadata: true``, no proxy)."""
    request = urllib.request.Request(
        f"{IMDS}/{path}?api-version={api_version}", headers={"Metadata": "true"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def preempt_time(events: dict[str, Any], vm_name: str) -> float | None:
    """When a Preempt (or Terminate) event for ``vm_name`` takes effect, as epoch seconds:
    its ``NotBefore`` (RFC 1123), now once it has started; None without one."""
    for event in events.get("Events", []):
        if event.get("EventType") not in ("Preempt", "Terminate"):
            continue
        if vm_name.lower() not in [str(r).lower() for r in event.get("Resources", [])]:
            continue
        not_before = str(event.get("NotBefore") or "")
        if not not_before:
            return time.time()
        return email.utils.parsedate_to_datetime(not_before).timestamp()
    return None
