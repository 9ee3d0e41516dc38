"""Rooms held between a blocking caller's back-to-back function calls.

A function call's run frame may ask (``hold``) that its room stay allocated a moment after
it ends; the agent then skips the deallocation and the final frame says ``held``. The same
connection's next call of the same shape runs in that room (``reuse``, the same job id) with
no placement by the client and no allocation lookup or deallocation here: about a fifth of
a warm round trip's CPU. A room not taken again within its hold, or whose connection
closes, is freed as the call's end would have freed it; to every other client it looks like
a call that ran that much longer. The client gives a room back itself when it needs room of
another shape, or someone waits for room (``client/held_rooms.py``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from meadowrun_core.agent.running_job import ClientConnection, RunningJob
from meadowrun_core.agent.state import AgentState

log = logging.getLogger("meadowrun_core.agent")

# The longest hold a run frame may ask for.
MAX_HOLD_SECONDS = 1.0


@dataclass(eq=False)
class HeldRoom:
    """A finished call's room, kept for its connection's next call."""

    connection: ClientConnection
    memory_gb: float  # what the room holds: the next call's memory limit
    outcome: str  # the last call's status: the job history's outcome when it is freed
    timer: asyncio.TimerHandle


def hold(state: AgentState, job: RunningJob, seconds: float, outcome: str) -> None:
    """Keep a finished call's room for the connection that ran it for up to ``seconds``,
    then free it."""
    seconds = min(max(seconds, 0.0), MAX_HOLD_SECONDS)
    timer = asyncio.get_running_loop().call_later(seconds, release, state, job.job_id)
    state.held[job.job_id] = HeldRoom(job.subscribers[0], job.memory_gb, outcome, timer)


def take(state: AgentState, job_id: str, conn: ClientConnection) -> HeldRoom | None:
    """Claim the room held for ``job_id`` for a new call from ``conn``; None when it was
    freed meanwhile (or is held for another connection)."""
    room = state.held.get(job_id)
    if room is None or room.connection is not conn:
        return None
    del state.held[job_id]
    room.timer.cancel()
    return room


def release(state: AgentState, job_id: str) -> None:
    """Free a held room now (its hold ran out, its client went, or the table needs it)."""
    room = state.held.pop(job_id, None)
    if room is None:
        return
    room.timer.cancel()
    try:
        state.table.deallocate(job_id, room.outcome)
    except Exception:  # (a timer callback: the reconciler frees what is left)
        log.exception("could not free the held room of job %s", job_id)


def release_connection(state: AgentState, conn: ClientConnection) -> None:
    """Free every room held for a connection that closed: nobody will take them."""
    for job_id in [j for j, room in state.held.items() if room.connection is conn]:
        release(state, job_id)
