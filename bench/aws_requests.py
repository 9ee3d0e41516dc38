"""AWS requests per operation for bench_aws and bench_clouds: counted on this process's boto3
clients (the client's), and everything moto's server answered (client, agents, test hosts),
beside issue 12's targets and Meadowrun 0.2.16's design.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

SERVED = "(served)"
LEASE = "lease:"
LEASE_THREAD = "meadowrun-lease"  # meadowrun_core.client.runtime's lease thread


class RequestCounter(logging.Handler):
    """AWS requests sent by this process's boto3 clients created after ``start`` (those of
    the AWS backend), by service and operation; and every request moto's server answered
    (the client's, the agents' and the test hosts'), from its request log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: dict[str, int] = {}
        self.served = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.served += 1  # werkzeug logs one record per request

    def watch_server(self) -> None:
        server_log = logging.getLogger("werkzeug")
        server_log.setLevel(logging.INFO)
        server_log.propagate = False
        server_log.addHandler(self)

    def unwatch_server(self) -> None:
        server_log = logging.getLogger("werkzeug")
        server_log.removeHandler(self)
        server_log.setLevel(logging.ERROR)

    def start(self) -> RequestCounter:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", self._count)
        return self

    def _count(self, event_name: str = "", **_: Any) -> None:
        operation = event_name.removeprefix("before-call.")
        if threading.current_thread().name == LEASE_THREAD:
            # the client's lease: one PutItem every lease/3 seconds while it lives, whatever
            # it does, so counted apart from the requests that an operation makes
            operation = LEASE + operation
        self.counts[operation] = self.counts.get(operation, 0) + 1

    def total(self) -> int:
        return sum(n for op, n in self.counts.items() if not op.startswith(LEASE))

    def snapshot(self) -> dict[str, int]:
        return {**self.counts, SERVED: self.served}

    def since(self, before: dict[str, int], top: int = 40) -> str:
        delta = {op: n - before.get(op, 0) for op, n in self.counts.items()}
        leases = sum(n for op, n in delta.items() if op.startswith(LEASE))
        delta = {op: n for op, n in delta.items() if n > 0 and not op.startswith(LEASE)}
        common = sorted(delta.items(), key=lambda item: -item[1])[:top]
        return (
            f"{sum(delta.values())} (most: "
            + ", ".join(f"{op} {n}" for op, n in common)
            + f"), and apart from them {leases} lease renewal(s) of the client's lease "
            f"thread; moto answered {self.served - before[SERVED]} in all meanwhile "
            "(client, agents, test hosts)"
        )

    def sent_since(self, before: dict[str, int]) -> int:
        return self.total() - sum(
            n for op, n in before.items() if op != SERVED and not op.startswith(LEASE)
        )


# Issue 12's targets, and what Meadowrun 0.2.16's design needs for the same work, computed
# from that design (its code is not run here): one SQS message per task (SendMessageBatch of
# 10), each task received and deleted on its own, each result written to S3 and found by
# listing the bucket (at least one ListObjectsV2 per second of the map; not counted).
TARGETS = {"warm": 3.0, "cold": 30.0, "map": 20.0}
MEADOWRUN_0_2_16 = {
    # DynamoDB scan of the instance table + conditional update; function and arguments
    # pickled into the SSH command (no S3); the result read back over SSH
    "warm": "2 (Scan + UpdateItem)",
    # the above, plus the code as one zip in S3 (HeadObject + PutObject), RunInstances and
    # the instance registering (PutItem), before its own boot-time requests
    "cold": "6 (Scan, UpdateItem, HeadObject, PutObject, RunInstances, PutItem)",
    # 100 SendMessageBatch + 1,000 ReceiveMessage + 1,000 DeleteMessage + 1,000 PutObject
    # (results) + S3 listing while polling
    "map": "3,100 + S3 polling",
}


def request_targets(values: dict[str, float], tasks: int) -> list[str]:
    """Requests per operation next to the targets and Meadowrun 0.2.16's design."""
    rows = [
        ("warm run_function", values.get("requests one warm run_function"), "warm", 1),
        ("cold start (131-file tree, empty account)", values.get("requests cold start"), "cold", 1),
        (
            "cold start (131-file tree, a new client of a set-up account)",
            values.get("requests cold start, account set up"),
            "cold",
            1,
        ),
        (
            "run_map, per 1,000 tasks (client)",
            values.get("requests the timed run_map"),
            "map",
            1000,
        ),
        (
            "run_map, per 1,000 tasks (client + agents + test hosts)",
            values.get("served the timed run_map"),
            "map",
            1000,
        ),
    ]
    lines = ["requests per operation (target; Meadowrun 0.2.16's design):"]
    for what, value, key, scale in rows:
        if value is None:
            continue
        figure = value * scale
        verdict = "meets" if figure <= TARGETS[key] else "misses"
        lines.append(
            f"  {what}: {figure:.1f} ({verdict} <= {TARGETS[key]:g}; "
            f"Meadowrun 0.2.16: {MEADOWRUN_0_2_16[key]})"
        )
    return ["\n".join(lines)] if len(lines) > 1 else []
