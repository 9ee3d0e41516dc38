"""Boot to agent on the EC2 twin: how long a stock instance takes to become a meadowrun
instance, phase by phase (needs root, like the twin tests).

    sudo .venv/bin/python -m bench.bench_twin_boot --runs 3

Each run starts from an empty moto account (so the agent bundle is uploaded again) and times a
cold ``run_function``: packing the agent bundle (cached on disk after the first run), the
launch up to the host's boot, cloud-init's bootstrap (download, check, unpack), and the agent
starting and registering. Real EC2 adds its own boot (about 25 to 30 s to SSH) before
cloud-init runs; everything after that is what this measures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from moto.server import ThreadedMotoServer

import meadowrun_core as mr
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON, BOOT_FINISHED
from meadowrun_core.client.runtime import ClientRuntime
from tests import twin_workloads as work
from tests.ec2_twin import Ec2Twin
from tests.moto_server import reset_moto
from tests.twin_hosts import TwinNetwork

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "aws"
_LISTENING = re.compile(r"^(\S+ \S+) INFO meadowrun_core.agent: instance \S+ listening")


def _one_run(network: TwinNetwork, scratch: Path) -> dict[str, float]:
    server = ThreadedMotoServer(ip_address=network.gateway, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    reset_moto(endpoint)
    os.environ.update(
        MEADOWRUN_AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MEADOWRUN_AWS_PRICE_FIXTURE=str(FIXTURES),
        MEADOWRUN_HOME=str(scratch / "home"),
    )
    twin = Ec2Twin(network, endpoint, "us-east-1", scratch / "twin")
    twin.start()
    os.environ["MEADOWRUN_EC2_ADDRESS_MAP"] = str(twin.address_map_path)
    os.environ["MEADOWRUN_CHECKIP_URL"] = twin.checkip_url
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(AGENT_PYTHON))
    try:
        began = time.time()
        mr.run_function(work.square, args=(2,), host=mr.AllocEC2Instance(), deployment=deployment)
        ended = time.time()
        twin_host = next(iter(twin.hosts().values()))
        booted = twin_host.booted_at
        finished = twin_host.path(BOOT_FINISHED).stat().st_mtime
        log = next(twin_host.path("/home/meadowrun/.meadowrun").glob("agent-*.log")).read_text()
        stamp = next(m.group(1) for m in map(_LISTENING.match, log.splitlines()) if m)
        listening = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return {
            "client until the host boots (bundle, upload, launch)": booted - began,
            "bootstrap (cloud-init: download, check, unpack)": finished - booted,
            "agent start and registration": listening - finished,
            "boot to agent registered": listening - booted,
            "cold run_function in all": ended - began,
        }
    finally:
        ClientRuntime.get().forget_backends()
        twin.close()
        reset_moto(endpoint)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tag = os.getpid()
    network = TwinNetwork(str(tag), subnet=f"192.168.{100 + tag % 150}.0/24")
    runs = []
    try:
        for index in range(args.runs):
            with tempfile.TemporaryDirectory() as scratch:
                runs.append(_one_run(network, Path(scratch)))
            print(f"run {index + 1}: " + ", ".join(f"{v:.2f}" for v in runs[-1].values()))
    finally:
        network.close()
    print(f"\n| phase (median of {len(runs)} runs, seconds) | median | min | max |")
    print("|---|---:|---:|---:|")
    for phase in runs[0]:
        values = [run[phase] for run in runs]
        print(
            f"| {phase} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )
    print(f"\ncommand: {' '.join([os.path.basename(sys.executable), *sys.argv])}")


if __name__ == "__main__":
    main()
