"""Benchmarks of meadowrun-core against its peers: not tests.

Run them with ``python -m bench.bench_core``.
"""
