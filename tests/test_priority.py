"""Priority: meadowgrid's raffle among jobs waiting for room at the launch limit."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.seams.raffle import RaffleEntry, my_turn, raffle_winner
from tests.waiting import local_table, wait_until


def _binomial_tail_below(n: int, p: float, k: int) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("priority", [0, -1.0, float("nan"), float("inf"), "high", True, None])
def test_a_bad_priority_is_refused_before_anything_launches(
    local_cloud: Path, priority: Any
) -> None:
    with pytest.raises(mr.BadInputError, match="priority must be a positive, finite number"):
        mr.run_function(workloads.double, args=(1,), priority=priority)
    with pytest.raises(mr.BadInputError, match="priority must be a positive, finite number"):
        mr.run_command(["true"], priority=priority)
    with pytest.raises(mr.BadInputError, match="priority must be a positive, finite number"):
        mr.run_map(workloads.double, [1, 2], priority=priority)
    assert local_table(local_cloud).list_instances() == []


def test_the_draw_is_proportional_to_priority() -> None:
    """Over many rounds, each live entry wins in proportion to its priority; expired entries
    never win; a lone waiter always may try."""
    entries = [RaffleEntry("a", 1.0, math.inf), RaffleEntry("b", 3.0, math.inf)]
    rounds = 4000
    wins = sum(raffle_winner(entries, float(r)) == "b" for r in range(rounds))
    # 3000 expected, standard deviation 27: 5 deviations either way
    assert 2863 <= wins <= 3137, wins
    gone = [RaffleEntry("a", 1.0, 5.0), RaffleEntry("b", 1e-6, math.inf)]
    assert all(raffle_winner(gone, float(r)) == "b" for r in range(6, 50))
    assert my_turn([], "t", 1.0, 0.0)
    assert my_turn([RaffleEntry("t", 1.0, math.inf)], "t", 1.0, 0.0)


def test_waiting_jobs_get_room_in_proportion_to_priority(local_cloud: Path) -> None:
    """One slot (a 1-CPU launch limit). In each trial a job holds it while a priority-1 and
    a priority-9 job wait; when it is let go, the next to start is the raffle's pick: the
    priority-9 job should win 90% of trials. 40 trials: at most 27 wins happens with
    probability < 1e-4 when priorities count, and 99% of the time when they are ignored."""
    host = mr.AllocLocalInstance(max_cpu=1)
    resources = mr.Resources(logical_cpu=1, memory_gb=0.5)
    table = local_table(local_cloud)
    assert mr.run_function(workloads.double, args=(1,), host=host, resources=resources) == 2
    trials, high_wins = 40, 0
    for trial in range(trials):
        release = local_cloud / f"release-{trial}"
        starts: dict[str, float] = {}
        errors: list[BaseException] = []

        def run(
            name: str,
            priority: float,
            path: Path,
            starts: dict[str, float] = starts,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                starts[name] = mr.run_function(
                    workloads.start_time_after_waiting_for,
                    args=(str(path),),
                    host=host,
                    resources=resources,
                    priority=priority,
                )
            except BaseException as exc:
                errors.append(exc)

        holder = threading.Thread(target=run, args=("holder", 1.0, release))
        holder.start()
        wait_until(lambda: len(table.list_allocations()) == 1, 30, "the holder to get the slot")
        go = local_cloud / f"go-{trial}"
        go.touch()  # the waiters' own jobs do not wait
        waiters = [
            threading.Thread(target=run, args=("low", 1.0, go)),
            threading.Thread(target=run, args=("high", 9.0, go)),
        ]
        for thread in waiters:
            thread.start()
        wait_until(lambda: len(table.raffle_entries()) == 2, 30, "both to wait in the raffle")
        release.touch()
        for thread in [holder, *waiters]:
            thread.join(timeout=60)
        assert errors == [] and len(starts) == 3, errors
        high_wins += starts["high"] < starts["low"]
    # the bound's error rates, as the docstring says
    assert _binomial_tail_below(trials, 0.9, 27) < 1e-4
    assert 1 - _binomial_tail_below(trials, 0.5, 27) < 0.01
    assert high_wins >= 28, f"priority 9 won {high_wins} of {trials} trials (expected ~36)"
    assert table.raffle_entries() == []  # every entry left with its job


def test_a_dead_waiters_entry_expires_and_blocks_no_one(local_cloud: Path) -> None:
    """An entry its client stopped renewing (the client was killed) lapses: a job arriving
    later is not held back by it beyond its expiry."""
    host = mr.AllocLocalInstance(max_cpu=1)
    assert mr.run_function(workloads.double, args=(2,), host=host) == 4
    table = local_table(local_cloud)
    # a waiter with overwhelming priority whose client died a moment ago
    table.enter_raffle("dead-client-ticket", 1e9, "dead-client", time.time() + 1.0)
    started = time.monotonic()
    assert mr.run_function(workloads.double, args=(3,), host=host, priority=1.0) == 6
    assert time.monotonic() - started < 15
    assert [e.ticket for e in table.raffle_entries()] == []
