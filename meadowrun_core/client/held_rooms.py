"""The client's side of rooms held between back-to-back calls (``agent/held_rooms.py``).

A blocking function call (``run_function`` waiting for its result, no job key) sent within
``BACK_TO_BACK_SECONDS`` of the end of this client's last call of the same shape (backend,
resources and description: a caller's loop, not a lone call) asks its agent to keep the
call's room ``HOLD_SECONDS`` after it ends. The next call of that shape from this client runs
there under the same job id, without a placement; this client uses a held room for
``REUSE_WITHIN_SECONDS`` only, so its run frame reaches the agent before the hold runs out
(else the agent refuses with ``hold_lapsed`` and the call is placed as usual). Held rooms
are given back (freed here, in the allocation table) as soon as this client wants room of
another shape, a job of this process waits for room, or any client waits in the raffle:
holding never keeps room from anyone who asked for it.

So far only the local cloud holds rooms: there a placement and a deallocation are SQLite
transactions on the warm round trip; a cloud's table is a network service, where the model
of requests per operation (docs/performance.md) would change with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meadowrun_core.backend import Backend
from meadowrun_core.client.connection import AgentConnection
from meadowrun_core.resources import Resources

if TYPE_CHECKING:  # (allocation.py gives rooms back before it places: it imports this)
    from meadowrun_core.client.allocation import Placement

HOLD_SECONDS = 0.05  # how long the agent keeps a finished call's room
BACK_TO_BACK_SECONDS = 0.05  # a call sent this soon after the last one's end asks for it
# how often a client reusing held rooms reads the raffle for clients waiting for room (a
# read of the table each call would be a twentieth of the round trip)
RAFFLE_CHECK_SECONDS = 0.02
REUSE_WITHIN_SECONDS = 0.025  # how long after the final frame this client still uses it

# what a room fits: calls of the same description (one job-history row covers them all)
Shape = tuple[object, str]


def shape_of(resources: Resources, description: str) -> Shape:
    try:
        hash(resources)
    except TypeError:  # (custom resources are a dict)
        return repr(resources), description
    return resources, description


@dataclass(frozen=True)
class _Held:
    placement: Placement
    connection: AgentConnection
    until: float  # time.monotonic() past which this client no longer sends a call there
    outcome: str


# by backend key, then shape: every held room of this client (the client's event loop only)
_held: dict[str, dict[Shape, list[_Held]]] = {}
# by backend key and shape: when this client's last call of that shape ended
_last_end: dict[tuple[str, Shape], float] = {}
# by backend key: when the raffle was last read and found empty
_raffle_empty_at: dict[str, float] = {}


def may_hold(backend: Backend) -> bool:
    return backend.instances_are_this_machine


def back_to_back(backend: Backend, shape: Shape) -> bool:
    """Whether a call now follows this client's last call of its shape closely enough that
    its room is worth holding for the next one."""
    ended = _last_end.get((backend.key, shape))
    return ended is not None and time.monotonic() - ended < BACK_TO_BACK_SECONDS


def ended(backend: Backend, shape: Shape) -> None:
    """A call of this shape has just ended (its final frame arrived)."""
    if len(_last_end) > 1000:  # (shapes come and go: keep the memory bounded)
        _last_end.clear()
    _last_end[(backend.key, shape)] = time.monotonic()


def keep(
    backend: Backend,
    shape: Shape,
    placement: Placement,
    connection: AgentConnection,
    outcome: str,
    others_wait: bool,
) -> None:
    """Remember a room the agent held after a call (its final frame said ``held``), or give
    it back at once when ``others_wait`` (a job of this process waits for room)."""
    held = _Held(placement, connection, time.monotonic() + REUSE_WITHIN_SECONDS, outcome)
    if others_wait:
        _give_back(backend, held)
        return
    _held.setdefault(backend.key, {}).setdefault(shape, []).append(held)


def take(backend: Backend, shape: Shape) -> Placement | None:
    """A room held for a call of this shape, if one is still good. One past its reuse window
    is freed here (its hold may be running out), one whose connection closed was freed by
    its agent, and all are given back if anyone waits for room."""
    rooms = _held.get(backend.key, {}).get(shape)
    now = time.monotonic()
    while rooms:
        held = rooms.pop()
        if held.connection.closed:
            continue  # the agent freed it when the connection closed
        if held.until < now:  # its hold may be running out: free it here, now
            _give_back(backend, held)
            continue
        if _others_wait(backend, now):  # no holding on to room someone waits for
            _give_back(backend, held)
            give_back_all(backend)
            return None
        return held.placement
    return None


def _others_wait(backend: Backend, now: float) -> bool:
    """Whether a job of any client waits in the raffle (read at most every
    ``RAFFLE_CHECK_SECONDS``)."""
    if now - _raffle_empty_at.get(backend.key, -1.0) < RAFFLE_CHECK_SECONDS:
        return False
    if backend.table.raffle_entries():
        return True
    _raffle_empty_at[backend.key] = now
    return False


def give_back_all(backend: Backend) -> None:
    """Free every room this client holds on ``backend`` (before it places anything else)."""
    for rooms in _held.pop(backend.key, {}).values():
        for held in rooms:
            if not held.connection.closed:  # (else the agent freed it when it closed)
                _give_back(backend, held)


def _give_back(backend: Backend, held: _Held) -> None:
    # freed in the table here, so this client's next placement sees the room at once; the
    # agent's own release later finds it gone, and a reuse run is never sent for it
    backend.table.deallocate(held.placement.job_id, held.outcome)
