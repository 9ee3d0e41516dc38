"""What the agent needs from the cloud it runs in, one implementation per cloud
(``local/agent_cloud.py``, ``aws/agent_cloud.py``; the registry in ``clouds.py`` picks)."""

from __future__ import annotations

from typing import Protocol

from meadowrun_core.seams.cloud import CloudSeams


class AgentCloud(CloudSeams, Protocol):
    """The seams as an instance reaches them, and what only an instance does. Each cloud's
    class is built as ``(home, region)`` by ``clouds.Cloud.open_agent_cloud``."""

    def worker_environment(self) -> dict[str, str]:
        """Variables that tell worker processes how to reach the object store."""
        ...

    def interruption_notice(self) -> float | None:
        """When the cloud will reclaim this instance (epoch seconds), if it said so."""
        ...

    def terminate_self(self, instance_id: str) -> None:
        """Stop paying for this instance once its agent has left the table."""
        ...
