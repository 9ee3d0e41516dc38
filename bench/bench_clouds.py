"""The three clouds side by side (issue 13): the allocation path, cold start and ``run_map``
throughput on the local cloud, on AWS (moto's server + the EC2 twin) and on Azure (the Azure
twin + Azurite + twin hosts), in one run, with the requests each operation makes.

    sudo .venv/bin/python -m bench.bench_clouds                  # about 3-4 min
    sudo .venv/bin/python -m bench.bench_clouds --quick          # smoke run
    sudo .venv/bin/python -m bench.bench_clouds --markdown docs/performance.md

Needs root, like the twin tests: the twin network and its hosts (network namespaces) are made
by this run and removed at its end. Each cloud is set up exactly as the tests set it up
(``aws_twin_cloud`` in tests/aws_twin.py, ``azure_twin_cloud`` in tests/azure_cloud.py): every
instance or VM a twin host with its own address, sshd and firewall that boots the agent from
the object store. The emulators and hosts run on this machine and share its CPUs: their
latency is theirs, not a real cloud's.

Per cloud, through the client API (bench/clouds_ops.py): the cold start of a no-op
``run_function`` on an empty account (the time until its job is placed on a new instance is
the allocation path with a launch), warm calls (the time until the job is placed on the
running instance, and the round trip), ``run_map`` of no-op tasks with 2 at once after an
untimed warm-up map, then a new client of the now set-up cloud with no instance running.
Requests are counted per operation on the client and at the emulators
(bench/cloud_requests.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import meadowrun_core as mr
from bench.cloud_requests import AwsRequests, AzureRequests
from bench.clouds_ops import Cloud, measure, progress, twin_boot_phases
from bench.clouds_report import (
    AWS,
    AZURE,
    CLOUDS,
    LOCAL,
    SECTION_HEADING,
    render_markdown,
    render_text,
)
from bench.harness import Figures
from tests.process_env import environment

if TYPE_CHECKING:
    from tests.twin_hosts import TwinNetwork


def _forget_client_state(home: Path) -> None:
    from meadowrun_core.client import payload
    from meadowrun_core.client.runtime import ClientRuntime

    ClientRuntime.get().forget_backends()
    payload._mirrors.clear()
    os.environ["MEADOWRUN_HOME"] = str(home)


@contextlib.contextmanager
def local_cloud(scratch: Path, network: TwinNetwork) -> Iterator[Cloud]:
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin

    home = scratch / "local-home"
    with environment({"MEADOWRUN_HOME": str(home), "MEADOWRUN_LOCAL_MAX_CPU": "2"}):

        def as_a_new_client() -> None:
            admin.clean()  # every instance stopped; the cloud's state stays
            _forget_client_state(home)

        deployment = mr.Deployment.mirror_local(
            interpreter=mr.PreinstalledInterpreter(sys.executable)
        )
        try:
            yield Cloud(LOCAL, mr.AllocLocalInstance(), deployment, None, as_a_new_client)
        finally:
            ClientRuntime.get().forget_backends()
            admin.clean()


@contextlib.contextmanager
def aws_cloud(scratch: Path, network: TwinNetwork) -> Iterator[Cloud]:
    from meadowrun_core.aws.uninstall import clean
    from tests.aws_twin import DEPLOYMENT, REGION, aws_twin_cloud

    with aws_twin_cloud(network, scratch) as (twin, env), environment(env):
        polls = [0]

        def polled(**_: object) -> None:
            polls[0] += 1

        twin.twin._ec2.meta.events.register("before-call", polled)
        requests = AwsRequests().start(twin.server)

        def as_a_new_client() -> None:
            clean(REGION)  # terminates every instance; table, bucket, secrets stay
            _forget_client_state(scratch / "client-home-2")

        try:
            yield Cloud(
                AWS,
                twin.host(),
                DEPLOYMENT,
                requests,
                as_a_new_client,
                lambda: polls[0],
                lambda: twin_boot_phases(list(twin.twin.hosts().values()), twin.registered_at),
            )
        finally:
            requests.stop()
            _let_the_lease_thread_finish()


@contextlib.contextmanager
def azure_cloud(scratch: Path, network: TwinNetwork) -> Iterator[Cloud]:
    from meadowrun_core.azure.account import default_credential, open_data_plane
    from meadowrun_core.azure.arm import Arm
    from meadowrun_core.azure.settings import resolve_target
    from meadowrun_core.azure.uninstall import _delete_all_vms
    from tests.azure_cloud import DEPLOYMENT, UNSET_ENVIRONMENT, azure_twin_cloud

    for name in UNSET_ENVIRONMENT:
        os.environ.pop(name, None)
    log = scratch / "azurite-debug.log"
    with (
        azure_twin_cloud(network, scratch, azurite_debug_log=log) as (twin, env),
        environment(env),
    ):
        urls = {
            s: env[f"MEADOWRUN_AZURE_STORAGE_{s.upper()}_URL"] for s in ("table", "queue", "blob")
        }
        requests = AzureRequests(twin.twin, urls, log).start()
        host = twin.host()

        def as_a_new_client() -> None:
            credential = default_credential()
            target = resolve_target(host)
            plane = open_data_plane(credential, create=False)
            _delete_all_vms(Arm(credential, target.subscription_id), target, plane)
            _forget_client_state(scratch / "client-home-2")

        try:
            yield Cloud(
                AZURE,
                host,
                DEPLOYMENT,
                requests,
                as_a_new_client,
                boot_phases=lambda: twin_boot_phases(
                    list(twin.hosts.hosts().values()), twin.registered_at
                ),
            )
        finally:
            requests.stop()
            _let_the_lease_thread_finish()


def _let_the_lease_thread_finish() -> None:
    """The client's lease thread may renew a forgotten backend's lease once more (it renews
    the backends it listed before its wait): let it, before the emulators go."""
    from meadowrun_core.client.runtime import ClientRuntime

    ClientRuntime.get().forget_backends()
    time.sleep(3 / 3 + 0.5)  # MEADOWRUN_LEASE_SECONDS=3 in both twins' environments


SETUPS = {LOCAL: local_cloud, AWS: aws_cloud, AZURE: azure_cloud}


def measure_cloud(
    name: str, scratch: Path, network: TwinNetwork, config: dict[str, object], quiet_wait: float
) -> Figures:
    figures = Figures()
    progress(f"{name}: setting up")
    (scratch / name).mkdir()
    try:
        with SETUPS[name](scratch / name, network) as cloud:
            measure(cloud, config, figures, quiet_wait)
    except Exception as exc:
        figures.error = f"{type(exc).__name__}: {exc}"
        progress(f"{name} FAILED: {figures.error}")
        logging.getLogger(__name__).debug("failure", exc_info=True)
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--warm-calls", type=int, default=20)
    parser.add_argument(
        "--tasks", default="200,1000", help="no-op tasks of the timed maps, comma-separated"
    )
    parser.add_argument("--clouds", default=",".join(CLOUDS), help="any of local,aws,azure")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 warm calls, 200 tasks")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this long for other processes to go quiet",
    )
    parser.add_argument("--markdown", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.warm_calls, args.tasks = 5, "200"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("meadowrun_core", "tests", "asyncssh", "botocore", "werkzeug", "azure"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("meadowrun_core.job").setLevel(logging.CRITICAL)  # workers' stderr
    if os.geteuid() != 0:
        print("bench_clouds needs root (network namespaces for the twin hosts)", file=sys.stderr)
        return 2
    config: dict[str, object] = {
        "warm_calls": args.warm_calls,
        "map_tasks": [int(t) for t in args.tasks.split(",")],
    }
    from importlib import metadata

    from bench.report import machine_description, write_section
    from tests.twin_hosts import TwinNetwork

    machine = machine_description()
    machine["emulators"] = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("moto", "boto3", "azure-core", "asyncssh")
    )
    tag = os.getpid()
    network = TwinNetwork(tag=str(tag), subnet=f"192.168.{100 + tag % 150}.0/24")
    scratch = Path(tempfile.mkdtemp(prefix="bench-clouds-"))
    started = time.monotonic()
    wanted = args.clouds.split(",")
    try:
        results = {
            name: measure_cloud(name, scratch, network, config, args.quiet_wait)
            if name in wanted
            else Figures(notes=["not measured in this run"])
            for name in CLOUDS
        }
    finally:
        network.close()
        shutil.rmtree(scratch, ignore_errors=True)
    from bench.load import background_load

    machine["busy after the run (other processes)"] = background_load()
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(render_text(results, config))
    command = "python -m bench.bench_clouds " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        section = render_markdown(results, config, command.strip(), machine)
        write_section(args.markdown, section, heading=SECTION_HEADING)
        progress(f"wrote {SECTION_HEADING!r} in {args.markdown}")
    return 1 if any(f.error for n, f in results.items() if n in wanted) else 0


if __name__ == "__main__":
    sys.exit(main())
