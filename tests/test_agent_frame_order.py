"""Frames the agent reads back to back act in the order the client sent them: a stop or a
cancel that arrives in the same segment as its job's run frame reaches the job (a map's
last slot can start just as the map ends: the client sends its run frame, then at once its
stop). On the real local cloud, over the agent's own protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path

import workloads
from waiting import wait_until

import meadowrun_core as mr
from meadowrun_core import frames
from meadowrun_core.client.allocation import allocate
from meadowrun_core.client.connection import AgentConnection
from meadowrun_core.client.payload import prepare_deployment
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.protocol import encode_frame

RESOURCES = mr.Resources(logical_cpu=1, memory_gb=0.5)


async def _send_run_and(host: mr.AllocLocalInstance, kind: str) -> tuple[frames.Final, str]:
    """Allocate a map slot whose map has already ended (its queues are gone), send its run
    frame and, in the same write, a ``kind`` frame (stop or cancel); the slot's final event."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    (placement,) = await allocate(backend, RESOURCES, 1, runtime.client_id, "frame order")
    run: frames.Run = {  # type: ignore[typeddict-item]
        "type": "run",
        "job_id": placement.job_id,
        "kind": "map",
        "deployment": prepare_deployment(backend, mr.Deployment()).to_json(),
        "map": {
            "request_queue": "mr-ended-requests",  # never created: the map is over
            "result_queue": "mr-ended-results",
            "function_key": "0" * 64,
            "max_attempts": 1,
        },
    }
    second: frames.ClientFrame = (
        frames.Stop(type="stop", job_id=placement.job_id, reason="map job ended")
        if kind == "stop"
        else frames.Cancel(type="cancel", job_id=placement.job_id, reason="cancelled by test")
    )
    reader, writer = await backend.open_agent_stream(placement.instance)
    conn = AgentConnection(reader, writer, backend.signer)
    events = conn.register(placement.job_id)
    # one write: the agent reads both frames from one segment, without waiting in between
    writer.write(encode_frame(backend.signer, run) + encode_frame(backend.signer, second))
    try:
        while True:
            event, _ = await asyncio.wait_for(events.get(), 30)
            if event["type"] == "final":
                return event, placement.job_id
    finally:
        conn.close()


def _allocations(home: Path) -> list[str]:
    return [a.job_id for a in SqliteAllocationTable(home / "state.db").list_allocations()]


def test_a_stop_right_after_the_run_frame_ends_the_slot(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance()
    assert mr.run_function(workloads.double, args=(1,), host=host, resources=RESOURCES) == 2
    final, job_id = asyncio.run(_send_run_and(host, "stop"))
    assert final["status"] == "stopped", final
    wait_until(lambda: job_id not in _allocations(local_cloud), timeout=10, what="room freed")


def test_a_cancel_right_after_the_run_frame_cancels_the_job(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance()
    assert mr.run_function(workloads.double, args=(1,), host=host, resources=RESOURCES) == 2
    final, job_id = asyncio.run(_send_run_and(host, "cancel"))
    assert final["status"] == "cancelled", final
    assert final.get("message") == "cancelled by test"
    wait_until(lambda: job_id not in _allocations(local_cloud), timeout=10, what="room freed")
