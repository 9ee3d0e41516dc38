"""The agent bundle cache on the client: reused by content, pruned to the recent few."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meadowrun_core.bootstrap.bundle import KEPT_BUNDLES, agent_bundle, client_arch


def test_bundle_is_reused_and_old_ones_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "bundles"
    cache.mkdir()
    stale = []
    for index in range(KEPT_BUNDLES + 3):  # bundles of earlier versions of the client's code
        old = cache / f"old{index}.tar.gz"
        old.write_bytes(b"x")
        old.with_suffix(".sha256").write_text("0" * 64)
        os.utime(old, (time.time() - 1000 + index, time.time() - 1000 + index))
        stale.append(old)
    killed_packing = cache / "abandoned.tmp"
    killed_packing.write_bytes(b"partial")
    os.utime(killed_packing, (time.time() - 7200, time.time() - 7200))

    roots = [("meadowrun-core", frozenset({"aws"}))]
    bundle = agent_bundle(roots, client_arch(), cache_dir=cache)

    kept = sorted(cache.glob("*.tar.gz"))
    assert len(kept) == KEPT_BUNDLES
    assert bundle.path in kept
    # the newest of the old ones stay, the oldest went with their digests
    assert all(old in kept for old in stale[-(KEPT_BUNDLES - 1) :])
    assert not stale[0].exists() and not stale[0].with_suffix(".sha256").exists()
    assert not killed_packing.exists()
    # asked again, the same content is the same bundle, not packed twice
    again = agent_bundle(roots, client_arch(), cache_dir=cache)
    assert again == bundle
