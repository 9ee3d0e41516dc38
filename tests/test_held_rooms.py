"""Rooms held between a blocking caller's back-to-back calls (``agent/held_rooms.py``,
``client/held_rooms.py``): a lone call's room is freed before its result is sent, as any
job's; from the second of back-to-back calls on, the next call of the same shape runs in the
room the last one left, under its job id; a room is given back when its hold runs out, its
connection closes, this client wants room of another shape, or anyone waits for room; a call
whose held room lapsed is placed as usual."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.client import held_rooms
from meadowrun_core.client.runtime import ClientRuntime
from tests.waiting import local_table, wait_until

ONE = mr.Resources(logical_cpu=1, memory_gb=1)


def _allocated(home: Path) -> list[str]:
    return [a.job_id for a in local_table(home).list_allocations()]


def _hold_one_room(home: Path, resources: mr.Resources = ONE) -> str:
    """Two calls back to back: the second's room is held; its job id."""
    for x in (1, 2):
        assert mr.run_function(workloads.double, args=(x,), resources=resources) == 2 * x
    (held,) = _allocated(home)
    return held


@pytest.fixture
def long_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holds of a second (the agent's longest), so that a slow machine still sees them."""
    monkeypatch.setattr(held_rooms, "HOLD_SECONDS", 1.0)
    monkeypatch.setattr(held_rooms, "BACK_TO_BACK_SECONDS", 1.0)
    monkeypatch.setattr(held_rooms, "REUSE_WITHIN_SECONDS", 0.5)
    monkeypatch.setattr(held_rooms, "RAFFLE_CHECK_SECONDS", 0.0)  # read on every call


def test_back_to_back_calls_share_one_room_until_its_hold_runs_out(
    local_cloud: Path, long_holds: None
) -> None:
    assert mr.run_function(workloads.double, args=(1,), resources=ONE) == 2
    assert _allocated(local_cloud) == [], "a lone call's room is freed at once"
    assert mr.run_function(workloads.double, args=(2,), resources=ONE) == 4
    (held,) = _allocated(local_cloud)  # the second in a row: kept for the next call
    for x in range(3, 7):
        assert mr.run_function(workloads.double, args=(x,), resources=ONE) == 2 * x
        assert _allocated(local_cloud) == [held], "each call ran in the same room"
    wait_until(lambda: _allocated(local_cloud) == [], 5, "the hold to run out")
    history = [r for r in local_table(local_cloud).job_history() if r["job_id"] == held]
    assert [r["outcome"] for r in history] == ["succeeded"]  # one row for the chain
    assert mr.run_function(workloads.double, args=(7,), resources=ONE) == 14
    jobs = [r["job_id"] for r in local_table(local_cloud).job_history()]
    assert len(jobs) == 3 and held in jobs, "a lone call once more: a room of its own, freed"


def test_a_call_whose_held_room_lapsed_is_placed_anew(
    local_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held_rooms, "HOLD_SECONDS", 0.01)  # the agent gives it back at once
    monkeypatch.setattr(held_rooms, "BACK_TO_BACK_SECONDS", 60.0)
    monkeypatch.setattr(held_rooms, "REUSE_WITHIN_SECONDS", 60.0)  # this client still tries
    assert mr.run_function(workloads.double, args=(1,), resources=ONE) == 2
    assert mr.run_function(workloads.double, args=(2,), resources=ONE) == 4  # held 10 ms
    table = local_table(local_cloud)
    wait_until(lambda: _allocated(local_cloud) == [], 5, "the agent to give the room back")
    assert len(table.job_history()) == 2
    assert mr.run_function(workloads.double, args=(3,), resources=ONE) == 6  # refused, re-placed
    wait_until(lambda: _allocated(local_cloud) == [], 5, "the third room to be given back")
    assert len(table.job_history()) == 3, "the third call got a room of its own"


def test_a_held_room_is_given_back_for_a_call_of_another_shape(
    local_cloud: Path, long_holds: None
) -> None:
    everything = mr.Resources(logical_cpu=4, memory_gb=1)  # the local cloud's whole limit
    held = _hold_one_room(local_cloud, everything)
    started = time.monotonic()
    assert mr.run_function(workloads.double, args=(3,), resources=ONE) == 6
    # not waiting for the hold: the client freed its own held room before placing this one
    assert time.monotonic() - started < 0.9
    assert held not in _allocated(local_cloud)


def test_a_held_room_is_given_back_while_another_client_waits_for_room(
    local_cloud: Path, long_holds: None
) -> None:
    held = _hold_one_room(local_cloud)
    table = local_table(local_cloud)
    table.enter_raffle("another-clients-job", 1.0, "another-client", time.time() + 0.5)
    assert mr.run_function(workloads.double, args=(3,), resources=ONE) == 6
    assert held in [r["job_id"] for r in table.job_history()], "given back before placing"
    assert held not in _allocated(local_cloud)


def test_a_held_room_is_given_back_when_its_connection_closes(
    local_cloud: Path, long_holds: None
) -> None:
    _hold_one_room(local_cloud)
    closed = time.monotonic()
    ClientRuntime.get().forget_backends()  # closes this client's agent connections
    wait_until(lambda: _allocated(local_cloud) == [], 5, "the agent to free the room")
    assert time.monotonic() - closed < 0.9, "freed when the connection closed, not the hold"


def test_calls_followed_by_a_handle_or_a_key_are_never_held(
    local_cloud: Path, long_holds: None
) -> None:
    for _ in range(2):
        handle = mr.run_function(workloads.double, args=(1,), resources=ONE, wait_for_result=False)
        assert handle.result() == 2
        assert _allocated(local_cloud) == []  # freed before the result was sent, as always
    for key in ("held-a", "held-b"):
        assert mr.run_function(workloads.double, args=(2,), resources=ONE, job_key=key) == 4
        assert _allocated(local_cloud) == []
