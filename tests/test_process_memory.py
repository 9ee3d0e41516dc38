"""The agent's memory check walks a job's process tree from ``/proc/<pid>/task/*/children``
(agent/process_memory.py) instead of psutil's scan of every process: it must see the same
tree, grandchildren included."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from meadowrun_core.agent.process_memory import _psutil_tree_rss, tree_rss

# a child holding 80 MB, a grandchild holding 120 MB, both alive until killed
_TREE = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c",
    "import time; x = bytearray(120 * 2**20); print('ready', flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE, text=True)
grandchild.stdout.readline()
x = bytearray(80 * 2**20)
print("ready", flush=True)
time.sleep(60)
"""


def test_tree_rss_counts_children_and_grandchildren() -> None:
    tree = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert tree.stdout is not None and tree.stdout.readline().strip() == "ready"
        ours, theirs = tree_rss(tree.pid), _psutil_tree_rss(tree.pid)
        assert ours >= 200 * 2**20  # both bytearrays, in two generations
        assert abs(ours - theirs) < 8 * 2**20  # the same tree as psutil's full scan
    finally:
        for child in psutil.Process(tree.pid).children(recursive=True):
            child.kill()
        tree.kill()
        tree.wait()
    time.sleep(0.05)
    with pytest.raises(psutil.NoSuchProcess):
        tree_rss(tree.pid)
