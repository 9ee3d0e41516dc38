"""Priority among jobs waiting for room at the launch limit: meadowgrid's raffle, shared by
every client of a cloud through its allocation table.

A job that finds no room enters the raffle (an entry in the table: a ticket, its priority,
and an expiry it keeps pushing back while it waits, so a killed client's entry vanishes).
Before each placement attempt a client reads the live entries and tries only if its own
ticket wins the current round. Each round (``RAFFLE_ROUND_SECONDS``) every entry draws a
key from a hash of its ticket and the round number, ``log(u) / priority`` (Efraimidis and
Spirakis): the largest key wins with probability ``priority / sum of priorities``, and every
client computes the same winner without talking to the others. Redrawing each round keeps
a job that cannot fit the room now (a large one) from holding the others back for long.
A job arriving while others wait draws its key too, so a client whose own job just ended
does not simply take the room it freed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from meadowrun_core.exceptions import BadInputError

RAFFLE_ROUND_SECONDS = 1.0
# An entry its client has not renewed for this long is gone (the client died while waiting).
RAFFLE_ENTRY_SECONDS = 10.0


@dataclass(frozen=True)
class RaffleEntry:
    ticket: str
    priority: float
    expires: float


def check_priority(priority: object) -> float:
    """``priority`` as a positive, finite float; BadInputError otherwise."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int | float)
        or not math.isfinite(priority)
        or priority <= 0
    ):
        raise BadInputError(
            f"priority must be a positive, finite number (the job's weight in the raffle for "
            f"room; default 1.0, 3.0 is drawn three times as often), got {priority!r}"
        )
    return float(priority)


def raffle_key(ticket: str, priority: float, round_number: int) -> float:
    """The entry's key in one round: ``log(u) / priority`` with ``u`` uniform in (0, 1),
    taken from a hash so that every client draws the same."""
    digest = hashlib.sha256(f"{ticket}:{round_number}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64
    return math.log(u) / priority


def raffle_winner(entries: list[RaffleEntry], now: float) -> str | None:
    """The ticket that may take room now: the largest key of the live entries this round."""
    round_number = int(now // RAFFLE_ROUND_SECONDS)
    live = [e for e in entries if e.expires > now]
    if not live:
        return None
    best = max(live, key=lambda e: (raffle_key(e.ticket, e.priority, round_number), e.ticket))
    return best.ticket


def my_turn(entries: list[RaffleEntry], ticket: str, priority: float, now: float) -> bool:
    """Whether the job holding ``ticket`` may try to take room now: no one else waits, or
    its ticket wins this round among those who do."""
    others = [e for e in entries if e.ticket != ticket and e.expires > now]
    if not others:
        return True
    return raffle_winner([*others, RaffleEntry(ticket, priority, math.inf)], now) == ticket
