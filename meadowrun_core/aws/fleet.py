"""Planning the cheapest fleet for some workers, exactly, and ranking launches by it.

Ranking types by price per placed worker and repeating for the workers left never weighs
the leftover: 16 workers of 8 CPU / 64 GB got r5b.metal (12 workers) plus 4 x r5n.2xlarge
where 2 x r5b.16xlarge is cheaper. The cheapest fleet is an unbounded covering knapsack:
choose instance counts so that the instances hold at least ``workers`` workers at the least
price per hour. ``cheapest_fleets`` solves it exactly with a dynamic program over
worker counts (``O(workers x distinct capacities)``, milliseconds for hundreds of workers).

``rank_for_fleet`` orders every choice by the price of the cheapest fleet that starts with
it. The first choice is the first instance of an optimal fleet; the client launches it and
asks again for the workers left, and what is left of an optimal fleet is optimal for them,
so the launches add up to the optimum. The whole list stays, so a capacity error still
falls back to the next choice, which is the first instance of the best fleet through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meadowrun_core.aws.instance_selection import Choice, rank_key

# Prices are compared after rounding to this many decimal places (float sums drift).
_DIGITS = 9


@dataclass(frozen=True)
class Fleet:
    """Instances to launch: ``(choice, count)`` pairs and their price per hour."""

    instances: tuple[tuple[Choice, int], ...]
    price_per_hour: float

    @property
    def workers(self) -> int:
        return sum(c.workers_per_instance * n for c, n in self.instances)

    def describe(self) -> str:
        parts = [f"{n} x {c.offer.name} {c.market}" for c, n in self.instances]
        return f"{' + '.join(parts)} (${self.price_per_hour:.4f}/h)"


def _capacity(choice: Choice, workers: int) -> int:
    return min(choice.workers_per_instance, workers)


def _by_capacity(choices: Sequence[Choice], workers: int) -> list[tuple[int, Choice]]:
    """The best choice per capacity, dropping capacities a larger, no dearer one beats."""
    best: dict[int, Choice] = {}
    for choice in choices:
        k = _capacity(choice, workers)
        if k >= 1 and (k not in best or rank_key(choice) < rank_key(best[k])):
            best[k] = choice
    kept: list[tuple[int, Choice]] = []
    cheapest_above = float("inf")
    for k in sorted(best, reverse=True):
        price = round(best[k].price_per_hour, _DIGITS)
        if price < cheapest_above:
            kept.append((k, best[k]))
            cheapest_above = price
    return kept


@dataclass(frozen=True)
class FleetTable:
    """For every ``m`` up to the workers wanted: ``prices[m]``, the least price per hour of
    instances holding at least ``m`` workers (``inf`` when none can); ``counts[m]``, how
    many instances that fleet has (fewer wins a tie); ``first[m]``, one of them."""

    prices: list[float]
    counts: list[int]
    first: list[Choice | None]


def cheapest_fleets(choices: Sequence[Choice], workers: int) -> FleetTable:
    """The dynamic program: each ``m`` takes the best of one instance plus the best fleet
    for what that instance leaves."""
    items = _by_capacity(choices, workers)
    inf = float("inf")
    prices = [0.0] + [inf] * workers
    counts = [0] + [0] * workers
    first: list[Choice | None] = [None] * (workers + 1)
    if not items:
        return FleetTable(prices, counts, first)
    # Past (k_b - 1) x the largest capacity, some cheapest fleet holds the type that is
    # cheapest per worker, b (any k_b others contain a subset holding a multiple of k_b
    # workers, which copies of b hold for no more): the table then steps by b alone.
    k_b, b = min(items, key=lambda item: (item[1].price_per_hour / item[0], -item[0]))
    settled = (k_b - 1) * max(k for k, _ in items)
    for m in range(1, workers + 1):
        if m > settled:
            rest = m - k_b
            prices[m] = round(b.price_per_hour + prices[rest], _DIGITS)
            counts[m], first[m] = counts[rest] + 1, b
            continue
        best = (inf, 0)
        for k, choice in items:
            rest = m - k if m > k else 0
            key = (round(choice.price_per_hour + prices[rest], _DIGITS), counts[rest] + 1)
            if key < best:
                best = key
                first[m] = choice
        prices[m], counts[m] = best
    return FleetTable(prices, counts, first)


def plan_fleet(choices: Sequence[Choice], workers: int) -> Fleet:
    """The cheapest fleet for ``workers`` workers (empty when no choice holds one)."""
    table = cheapest_fleets(choices, workers)
    counts: dict[Choice, int] = {}
    m = workers
    while m > 0 and table.first[m] is not None:
        choice = table.first[m]
        assert choice is not None
        counts[choice] = counts.get(choice, 0) + 1
        m -= min(_capacity(choice, workers), m)
    if m > 0:
        return Fleet((), 0.0)
    ordered = sorted(counts.items(), key=lambda item: rank_key(item[0]))
    return Fleet(tuple(ordered), table.prices[workers])


def rank_for_fleet(choices: Sequence[Choice], workers: int) -> list[Choice]:
    """Every choice, ordered by the price of the cheapest fleet for ``workers`` that
    starts with it; ties go to fewer instances, then by ``rank_key`` (cheaper per worker,
    larger, safer)."""
    table = cheapest_fleets(choices, workers)

    def key(choice: Choice) -> tuple[float, int, tuple[float, int, int, str, str]]:
        rest = max(0, workers - _capacity(choice, workers))
        price = round(choice.price_per_hour + table.prices[rest], _DIGITS)
        return (price, 1 + table.counts[rest], rank_key(choice))

    return sorted(choices, key=key)
