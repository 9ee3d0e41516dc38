"""AWS benchmark (issue 4): the allocation path and ``run_map`` task throughput of
``AllocEC2Instance`` against moto's server, as ratios to the local cloud measured in the same run.

    .venv/bin/python -m bench.bench_aws                           # full run, about 2-3 min
    .venv/bin/python -m bench.bench_aws --quick                   # smoke run, under 1 min
    .venv/bin/python -m bench.bench_aws --quiet-wait 20 --markdown docs/performance.md

Every figure is measured first on the local cloud, then on AWS emulated by moto's server over
HTTP on loopback, with each launched EC2 instance played by a loopback SSH "test host"
(tests/ec2_hosts.py), exactly as tests/test_aws_e2e.py sets it up:

1. Allocation path through the ``AllocationTable`` seam: one instance launched and registered,
   then ``allocate_on_existing`` of one job onto it plus ``deallocate``, repeated;
   ``SqliteAllocationTable`` (a temp file) against ``DynamoDbAllocationTable`` on moto.
2. Cold start: ``run_function`` of a no-op from no instance to its result (local: a fresh
   ``MEADOWRUN_HOME``; AWS: a freshly reset moto account and no test host).
3. Warm ``run_function`` round trip (the instance is up and idle).
4. ``run_map`` throughput: no-op tasks, ``num_concurrent_tasks=2``, after an untimed warm-up
   map so that the instances exist.

The same ``Resources(1, 1)`` and the same deployment (``mirror_local`` with
``PreinstalledInterpreter(sys.executable)``, the one the AWS test hosts can run) for both clouds;
``MEADOWRUN_LOCAL_MAX_CPU=2`` for the local one.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import meadowrun_core as mr
from bench.aws_ops import (
    AWS,
    AWS_ENV,
    LOCAL,
    REGION,
    SECTION_HEADING,
    bench_allocation,
    bench_client,
    get_item_ms,
    progress,
)
from bench.aws_report import render_markdown, render_text
from bench.aws_requests import RequestCounter
from bench.harness import Figures
from tests.process_env import environment

# The parts: bench/harness.py (figures, environment, noise meter, milestones),
# bench/aws_requests.py (request counting), bench/aws_ops.py (the measured operations),
# bench/aws_report.py (the table).


# --- the two clouds -----------------------------------------------------------------------------
def measure_local(
    scratch: Path, deployment: mr.Deployment, config: dict[str, Any], quiet_wait: float
) -> Figures:
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    figures = Figures()
    home = scratch / "local-home"
    with environment({"MEADOWRUN_HOME": str(home), "MEADOWRUN_LOCAL_MAX_CPU": "2"}):
        try:
            progress("local: allocation path (SqliteAllocationTable)")
            bench_allocation(
                SqliteAllocationTable(scratch / "seam.db"), config["cycles"], figures, quiet_wait
            )
            progress(f"  p50 {figures.values['alloc_p50_ms']:.2f} ms")
            progress("local: run_function / run_map")
            host = mr.AllocLocalInstance()

            def count() -> int:
                rows = SqliteAllocationTable(home / "state.db").job_history(10_000)
                return len({r["instance_id"] for r in rows})

            bench_client(host, deployment, config, figures, quiet_wait, count)
        except Exception as exc:
            figures.error = f"{type(exc).__name__}: {exc}"
            progress(f"local FAILED: {figures.error}")
        finally:
            ClientRuntime.get().forget_backends()
            admin.clean()
    return figures


def measure_aws(
    scratch: Path, deployment: mr.Deployment, config: dict[str, Any], quiet_wait: float
) -> Figures:
    import boto3
    from moto.server import ThreadedMotoServer

    from meadowrun_core.aws import names
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
    from meadowrun_core.client.runtime import ClientRuntime
    from tests.ec2_hosts import Ec2TestHosts
    from tests.moto_server import reset_moto

    figures = Figures()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    address, port = server.get_host_and_port()
    endpoint = f"http://{address}:{port}"
    env = {**AWS_ENV, "MEADOWRUN_AWS_ENDPOINT_URL": endpoint}
    hosts: Ec2TestHosts | None = None
    requests: RequestCounter | None = None
    with environment({**env, "MEADOWRUN_HOME": str(scratch / "aws-client-home")}):
        try:
            reset_moto(endpoint)
            progress("aws: allocation path (DynamoDbAllocationTable on moto)")
            dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
            seam = DynamoDbAllocationTable(dynamodb, f"bench-alloc-{uuid.uuid4().hex[:8]}")
            seam.create()
            counter = [0]

            def count_request(**_: Any) -> None:
                counter[0] += 1

            dynamodb.meta.events.register("before-call.dynamodb", count_request)
            bench_allocation(seam, config["cycles"], figures, quiet_wait, lambda: counter[0])
            figures.notes.append(
                f"one DynamoDB GetItem on moto, p50: {get_item_ms(seam):.2f} ms (round trip "
                "through boto3 and moto's HTTP server; it sets the seam's cost)"
            )
            progress(f"  p50 {figures.values['alloc_p50_ms']:.2f} ms")

            reset_moto(endpoint)  # the cold start finds an empty account, no instance
            hosts = Ec2TestHosts(endpoint, REGION, scratch / "hosts", env=env)
            hosts.start()
            os.environ["MEADOWRUN_EC2_ADDRESS_MAP"] = str(hosts.address_map_path)
            progress("aws: run_function / run_map")
            host = mr.AllocEC2Instance(
                region_name=REGION, agent_python=sys.executable, ssh_cidr="127.0.0.0/8"
            )
            ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)

            def count() -> int:
                pages = ec2.describe_instances(Filters=[*names.TAG_FILTER])["Reservations"]
                return sum(len(r["Instances"]) for r in pages)

            requests = RequestCounter().start()  # after the harness made its client
            requests.watch_server()
            bench_client(host, deployment, config, figures, quiet_wait, count, requests)
        except Exception as exc:
            figures.error = f"{type(exc).__name__}: {exc}"
            progress(f"aws FAILED: {figures.error}")
        finally:
            if requests is not None:
                requests.unwatch_server()
            ClientRuntime.get().forget_backends()
            # the client's lease thread may renew a forgotten backend's lease once more (it
            # renews the backends it listed before its wait): let it, before moto goes
            time.sleep(float(AWS_ENV["MEADOWRUN_LEASE_SECONDS"]) / 3 + 0.5)
            if hosts is not None:
                hosts.close()
            os.environ.pop("MEADOWRUN_EC2_ADDRESS_MAP", None)
            server.stop()
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="allocate+deallocate cycles")
    parser.add_argument("--warm-calls", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks in the timed map")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 cycles, 10 warm calls, 200 tasks"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this long for other "
        "processes to go quiet (a shared machine)",
    )
    parser.add_argument("--markdown", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.cycles, args.warm_calls, args.tasks = 50, 10, 200
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("meadowrun_core", "tests.ec2_hosts", "asyncssh", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("meadowrun_core.job").setLevel(logging.CRITICAL)  # workers' stderr
    config = {
        "cycles": args.cycles,
        "warm_calls": args.warm_calls,
        "tasks": args.tasks,
        "quick": args.quick,
    }
    from bench.report import machine_description, write_section

    machine = machine_description()  # before the run: "busy before the run"
    from importlib import metadata

    machine["AWS emulation"] = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("moto", "boto3", "asyncssh")
    )
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(sys.executable))
    scratch = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    started = time.monotonic()
    try:
        results = {
            LOCAL: measure_local(scratch, deployment, config, args.quiet_wait),
            AWS: measure_aws(scratch, deployment, config, args.quiet_wait),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(render_text(results, config))
    command = "python -m bench.bench_aws " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        section = render_markdown(results, config, command.strip(), machine)
        write_section(args.markdown, section, heading=SECTION_HEADING)
        progress(f"wrote {SECTION_HEADING!r} in {args.markdown}")
    return 1 if any(f.error for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
