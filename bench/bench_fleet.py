"""Fleet cost against the optimum: meadowrun's instance choice over a grid of workloads.

For every workload (CPU per worker, memory per worker, workers, market) on the us-east-1
price snapshot, four fleets are priced:

- ``planner``: what ``Ec2Provider.choices`` launches now: the first of
  ``rank_for_fleet(choose_instance_types(...))``, again for the workers left, until all
  are placed (the allocation loop of ``client/allocation.py``);
- ``per-worker``: the rule before (the first of ``choose_instance_types``: cheapest per
  placed worker, repeated for the workers left);
- ``0.2.16``: Meadowrun 0.2.16's rule as its source describes it (cheapest per worker,
  ties within $0.005/h and 1% eviction, round robin over the tied types);
- ``optimum``: an exact integer program solved by HiGHS (``scipy.optimize.milp``, gap 0):
  minimise the sum of price x count over every (type, market) choice such that the
  instances hold at least the workers wanted.

Type data comes from moto's EC2 (in process), prices and interruption buckets from
``../shared/data/aws`` through ``FixturePriceSource``: the real code path of the client.

    .venv/bin/python -m bench.bench_fleet [--markdown docs/performance.md]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from bench.load import background_load
from bench.report import code_version
from meadowrun_core.aws.fleet import rank_for_fleet
from meadowrun_core.aws.instance_selection import Choice, choose_instance_types
from meadowrun_core.aws.instance_types import Ec2Offer, fetch_instance_types, price_offers
from meadowrun_core.aws.pricing import FixturePriceSource
from meadowrun_core.resources import Resources
from meadowrun_core.seams.offer_fit import workers_per_instance as fits

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO.parent / "shared" / "data" / "aws"
REGION = "us-east-1"
HEADING = "## Fleet cost against the optimum (issue 18)"
CPUS = (0.5, 1, 2, 4, 8, 16)
MEMORY = (1, 2, 4, 8, 16, 32, 64)
MARKETS = {"spot 20%": 20.0, "on-demand": 0.0}

Fleet = list[tuple[Choice, int]]


def snapshot_offers(directory: Path = SNAPSHOT) -> list[Ec2Offer]:
    """Priced offers: hardware from moto's EC2 (in process), prices from the snapshot."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    import boto3
    import moto

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(directory / f"{REGION}-prices-skypilot-v3.csv", f"{tmp}/{REGION}-prices.csv")
        shutil.copy(directory / "spot-advisor-data.json", tmp)
        prices = FixturePriceSource(tmp).prices(REGION)
    with moto.mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        return price_offers(fetch_instance_types(ec2, prices.on_demand), prices)


def _price(fleet: Fleet) -> float:
    return sum(c.price_per_hour * n for c, n in fleet)


def _loop(offers: Sequence[Ec2Offer], resources: Resources, workers: int, planned: bool) -> Fleet:
    """The allocation loop: launch the first choice, ask again for the workers left."""
    fleet: Fleet = []
    left = workers
    while left > 0:
        choices = choose_instance_types(offers, resources, left, REGION)
        first = rank_for_fleet(choices, left)[0] if planned else choices[0]
        fleet.append((first, 1))
        left -= first.workers_per_instance
    return fleet


def planner(offers: Sequence[Ec2Offer], resources: Resources, workers: int) -> Fleet:
    return _loop(offers, resources, workers, planned=True)


def per_worker(offers: Sequence[Ec2Offer], resources: Resources, workers: int) -> Fleet:
    return _loop(offers, resources, workers, planned=False)


def meadowrun_0216(offers: Sequence[Ec2Offer], resources: Resources, workers: int) -> Fleet:
    """Meadowrun 0.2.16's ``choose_instance_types_for_job``, restated (on-demand counts as
    0% eviction; spot as its Advisor bucket)."""

    @dataclass
    class Kind:
        choice: Choice
        full: int
        current: int
        count: int = 0

        @property
        def per_worker(self) -> float:
            return self.choice.price_per_hour / self.current

        @property
        def eviction(self) -> float:
            bucket = self.choice.offer.interruption_bucket
            return 0.0 if self.choice.market == "on-demand" else float(bucket or 100)

    kinds = []
    for c in choose_instance_types(offers, resources, 10**6, REGION):
        full = fits(c.offer, resources, 10**6)
        kinds.append(Kind(c, full, full))
    left = workers
    while left > 0:
        for k in kinds:
            if k.full > left:
                k.current = left
        cheapest = min(k.per_worker for k in kinds)
        best = [k for k in kinds if k.per_worker - cheapest < 0.005]
        safest = min(k.eviction for k in best)
        best = sorted((k for k in best if k.eviction - safest < 1), key=lambda k: -k.full)
        best[0].count += 1
        left -= best[0].current
        i = 0
        while True:
            best = [k for k in best if k.current <= left]
            if not best:
                break
            i = (i + 1) % len(best)
            best[i].count += 1
            left -= best[i].current
    return [(k.choice, k.count) for k in kinds if k.count]


def optimum(offers: Sequence[Ec2Offer], resources: Resources, workers: int) -> Fleet:
    """The exact integer program, solved by HiGHS with no optimality gap."""
    choices = choose_instance_types(offers, resources, workers, REGION)
    prices = np.array([c.price_per_hour for c in choices])
    held = np.array([[float(c.workers_per_instance) for c in choices]])
    most = np.array([math.ceil(workers / c.workers_per_instance) for c in choices], dtype=float)
    result = milp(
        prices,
        constraints=LinearConstraint(held, lb=workers, ub=np.inf),
        integrality=np.ones(len(choices)),
        bounds=Bounds(0, most),
        options={"mip_rel_gap": 0.0, "presolve": True},
    )
    if not result.success:
        raise RuntimeError(f"the integer program failed: {result.message}")
    return [(c, round(n)) for c, n in zip(choices, result.x, strict=True) if round(n) > 0]


def describe(fleet: Fleet) -> str:
    merged: dict[str, int] = {}
    for c, n in fleet:
        key = f"{c.offer.name} {c.market}"
        merged[key] = merged.get(key, 0) + n
    parts = [f"{n} x {k}" if n > 1 else k for k, n in merged.items()]
    return f"{' + '.join(parts)} (${_price(fleet):.3f}/h)"


@dataclass
class Outcome:
    ratios: dict[str, list[float]]
    worst: dict[str, tuple[float, str]]
    plan_ms: list[float]
    ip_ms: list[float]


RULES: dict[str, Callable[[Sequence[Ec2Offer], Resources, int], Fleet]] = {
    "planner": planner,
    "per-worker": per_worker,
    "0.2.16": meadowrun_0216,
}


def run_grid(
    offers: Sequence[Ec2Offer], cpus: Sequence[float], memory: Sequence[float], most: int
) -> Outcome:
    outcome = Outcome({r: [] for r in RULES}, {}, [], [])
    for market, rate in MARKETS.items():
        for cpu in cpus:
            for gb in memory:
                resources = Resources(logical_cpu=cpu, memory_gb=gb, max_eviction_rate=rate)
                for workers in range(1, most + 1):
                    start = time.perf_counter()
                    best_fleet = optimum(offers, resources, workers)
                    best = _price(best_fleet)
                    outcome.ip_ms.append((time.perf_counter() - start) * 1000)
                    for name, rule in RULES.items():
                        start = time.perf_counter()
                        fleet = rule(offers, resources, workers)
                        if name == "planner":
                            outcome.plan_ms.append((time.perf_counter() - start) * 1000)
                        assert sum(c.workers_per_instance * n for c, n in fleet) >= workers
                        ratio = _price(fleet) / best
                        outcome.ratios[name].append(ratio)
                        if ratio > outcome.worst.get(name, (0.0, ""))[0]:
                            outcome.worst[name] = (
                                ratio,
                                f"{workers} x ({cpu:g} CPU, {gb:g} GB), {market}: "
                                f"{describe(fleet)} vs {describe(best_fleet)}",
                            )
    return outcome


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(
    outcome: Outcome, offers: int, most: int, example: str, argv: Sequence[str], load: str
) -> str:
    n = len(outcome.ratios["planner"])
    lines = [
        HEADING,
        "",
        f"`{' '.join(['.venv/bin/python -m bench.bench_fleet', *argv])}`: {n:,} workloads "
        f"(CPU per worker {', '.join(f'{c:g}' for c in CPUS)}; memory "
        f"{', '.join(f'{m:g}' for m in MEMORY)} GB; 1 to {most} workers; spot within 20% and "
        f"on-demand) on the us-east-1 snapshot in `../shared/data/aws/` ({offers} types that "
        "moto's EC2 offers in the region), every fleet priced against the exact integer "
        "program's optimum (HiGHS through `scipy.optimize.milp`, gap 0) in the same run.",
        "",
        "| rule | worst / optimum | geometric mean | at the optimum | worst workload |",
        "|---|---:|---:|---:|---|",
    ]
    for name, ratios in outcome.ratios.items():
        gmean = math.exp(statistics.fmean(math.log(r) for r in ratios))
        exact = sum(r <= 1 + 1e-9 for r in ratios) / len(ratios)
        worst, where = outcome.worst[name]
        where = where if worst > 1 + 1e-9 else "-"
        lines.append(f"| {name} | {worst:.4f}x | {gmean:.5f}x | {exact:.1%} | {where} |")
    lines += [
        "",
        f"- the issue's example, 16 workers of 8 CPU / 64 GB, spot within 20%: {example}",
        "- time to plan one workload (all launches), p50 "
        f"{_percentile(outcome.plan_ms, 0.5):.1f} ms, "
        f"p99 {_percentile(outcome.plan_ms, 0.99):.1f} ms; the integer program p50 "
        f"{_percentile(outcome.ip_ms, 0.5):.1f} ms (a shared 2-core machine: {load})",
        f"- meadowrun-core code: {code_version()}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64, help="1 to this many workers")
    parser.add_argument("--markdown", type=Path, help="replace this section in the file")
    args = parser.parse_args(argv)
    load = background_load()
    offers = snapshot_offers()
    example_resources = Resources(logical_cpu=8, memory_gb=64, max_eviction_rate=20)
    example = (
        f"planner {describe(planner(offers, example_resources, 16))}; per-worker "
        f"{describe(per_worker(offers, example_resources, 16))}; optimum "
        f"{describe(optimum(offers, example_resources, 16))}"
    )
    outcome = run_grid(offers, CPUS, MEMORY, args.workers)
    text = render(
        outcome, len(offers), args.workers, example, sys.argv[1:] if argv is None else argv, load
    )
    print(text)
    if args.markdown:
        _write_section(args.markdown, text)
    return 0


def _write_section(path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section, leaving the others untouched."""
    text = path.read_text()
    start = text.find(HEADING)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(HEADING))
    rest = "" if end < 0 else text[end:]
    path.write_text(text[:start] + section.rstrip("\n") + "\n" + rest)


if __name__ == "__main__":
    sys.exit(main())
