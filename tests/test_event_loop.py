"""The client's background loop and the agent run on uvloop where it is installed
(``meadowrun_core/event_loop.py``); ``MEADOWRUN_EVENT_LOOP=asyncio`` picks asyncio's loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvloop
import workloads

import meadowrun_core as mr
from meadowrun_core import event_loop
from meadowrun_core.client.runtime import ClientRuntime
from tests.waiting import wait_until


def _agent_logs(home: Path) -> str:
    return "".join(p.read_text() for p in (home / "instances").glob("*/agent.log"))


def test_client_and_agent_run_on_uvloop(local_cloud: Path) -> None:
    assert mr.run_function(workloads.double, args=(4,)) == 8
    assert isinstance(ClientRuntime.get().loop, uvloop.Loop)
    wait_until(lambda: "listening" in _agent_logs(local_cloud), 10, "the agent's first log line")
    assert "(uvloop event loop)" in _agent_logs(local_cloud)


def test_asyncio_loop_on_request(local_cloud: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEADOWRUN_EVENT_LOOP", "asyncio")
    loop = event_loop.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert mr.run_function(workloads.double, args=(5,)) == 10  # an agent started with it
    wait_until(lambda: "listening" in _agent_logs(local_cloud), 10, "the agent's first log line")
    assert "(asyncio event loop)" in _agent_logs(local_cloud)


def test_unknown_event_loop_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEADOWRUN_EVENT_LOOP", "tornado")
    with pytest.raises(ValueError, match=r"MEADOWRUN_EVENT_LOOP='tornado'.*asyncio"):
        event_loop.new_event_loop()
