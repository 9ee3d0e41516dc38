"""Measure an agent's memory while two connections stream junk at its port (issue 14, item 1).

    .venv/bin/python bench/bench_junk_flood.py [MB per connection, default 600]

Starts a local cloud in a temporary MEADOWRUN_HOME, runs one job (so an agent listens), then
streams a 2 GiB length prefix followed by zeros over two connections at once, sampling the
agent's RSS; prints the RSS before, the peak, and how much each connection got to send.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time

import psutil


def _stream(host: str, port: int, megabytes: int, sent: list[int]) -> None:
    chunk = b"\0" * (1 << 20)
    total = 0
    with socket.create_connection((host, port)) as sock:
        try:
            sock.sendall(b"\x7f\xff\xff\xff")
            for _ in range(megabytes):
                sock.sendall(chunk)
                total += len(chunk)
        except OSError:
            pass
    sent.append(total)


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    os.environ["MEADOWRUN_HOME"] = tempfile.mkdtemp(prefix="mr-junk-")
    import meadowrun_core as mr
    from meadowrun_core.config import meadowrun_home
    from meadowrun_core.local import admin
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    try:
        mr.run_function("operator.add", args=(1, 2))
        (instance,) = SqliteAllocationTable(meadowrun_home() / "state.db").list_instances()
        assert instance.address and instance.agent_pid
        host, port = instance.address.rsplit(":", 1)
        agent = psutil.Process(instance.agent_pid)
        before = peak = agent.memory_info().rss
        sent: list[int] = []
        threads = [
            threading.Thread(target=_stream, args=(host, int(port), megabytes, sent))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, agent.memory_info().rss)
            time.sleep(0.005)
        time.sleep(0.5)
        peak = max(peak, agent.memory_info().rss)
        print(
            f"agent RSS before {before / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB while 2 "
            f"connections streamed up to {megabytes} MB each; accepted before close: "
            f"{[f'{s / 2**20:.1f} MB' for s in sent]}; still serving: "
            f"{mr.run_function('operator.add', args=(2, 2)) == 4}"
        )
    finally:
        admin.clean()


if __name__ == "__main__":
    main()
