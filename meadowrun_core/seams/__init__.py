"""The small interfaces every cloud backend implements (see docs/architecture.md).

The client and the agent talk to a cloud only through these, so the local cloud exercises the
same code paths as AWS or Azure.
"""

from meadowrun_core.seams.allocation_table import (
    AllocationRecord,
    AllocationTable,
    InstanceRecord,
)
from meadowrun_core.seams.cloud import CloudSeams
from meadowrun_core.seams.instance_provider import InstanceType, Provider
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretStore
from meadowrun_core.seams.task_queue import QueueMessage, TaskQueue

__all__ = [
    "AllocationRecord",
    "AllocationTable",
    "CloudSeams",
    "InstanceRecord",
    "InstanceType",
    "ObjectStore",
    "Provider",
    "QueueMessage",
    "SecretStore",
    "TaskQueue",
]
