"""The AWS scale model (bench/scale_model.py) checked against moto, then projected.

1. Maps of no-op tasks on ``AllocEC2Instance`` against moto's server (loopback test hosts
   as in bench_aws), every SQS and DynamoDB request counted by operation where moto's
   server receives it (client and agents together); the model's prediction for the same
   shape and measured duration beside it.
2. The same maps on the local cloud give the per-slot and client task rates the projection
   uses.
3. The projection for 1,000,000 tasks on 100 instances: requests, cost, ceilings.

    .venv/bin/python -m bench.bench_scale_model [--tasks 2000,8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import meadowrun_core as mr
from bench import scale_model as model
from bench.aws_ops import AWS_ENV, REGION
from bench.harness import checked_noop_map
from bench.load import background_load
from tests.process_env import environment

SLOTS = 2
RESOURCES = mr.Resources(1, 1)


class CountingMotoServer:
    """moto's server with every request counted by service and operation (SQS and DynamoDB
    name it in ``X-Amz-Target``; other services count by service)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        counter = self

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server import werkzeug_app as w
                from werkzeug.serving import make_server

                app = w.DomainDispatcherApplication(w.create_backend_app)

                def counted(environ: dict[str, Any], start: Callable[..., Any]) -> Any:
                    counter.count(environ)
                    return app(environ, start)

                self._server = make_server(
                    "127.0.0.1", 0, counted, True, request_handler=w.MotoRequestHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self.server = Server(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        return f"http://{host}:{port}"

    def count(self, environ: dict[str, Any]) -> None:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            service, _, operation = target.partition(".")
            name = ("sqs." if service.startswith("AmazonSQS") else "dynamodb.") + operation
        else:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            name = auth.split("/")[3] if auth.count("/") >= 4 else "other"
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def stop(self) -> None:
        self.server.stop()


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def _run_map(host: mr.Host, deployment: mr.Deployment, tasks: int) -> float:
    began = time.perf_counter()
    checked_noop_map(host, deployment, tasks, RESOURCES, SLOTS)
    return time.perf_counter() - began


def on_moto(scratch: Path, deployment: mr.Deployment, sizes: Iterable[int]) -> list[str]:
    """The model against moto's counts; returns Markdown lines."""
    import boto3

    from meadowrun_core.aws import names
    from meadowrun_core.client.runtime import ClientRuntime
    from tests.ec2_hosts import Ec2TestHosts

    server = CountingMotoServer()
    endpoint = server.start()
    env = {**AWS_ENV, "MEADOWRUN_AWS_ENDPOINT_URL": endpoint}
    lines = [
        "| map | operation | model | moto | moto / model |",
        "|---|---|---:|---:|---:|",
    ]
    hosts = None
    with environment({**env, "MEADOWRUN_HOME": str(scratch / "aws-home")}):
        try:
            hosts = Ec2TestHosts(endpoint, REGION, scratch / "hosts", env=env)
            hosts.start()
            os.environ["MEADOWRUN_EC2_ADDRESS_MAP"] = str(hosts.address_map_path)
            host = mr.AllocEC2Instance(
                region_name=REGION, agent_python=sys.executable, ssh_cidr="127.0.0.0/8"
            )
            ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
            _run_map(host, deployment, 20)  # launches the instances, untimed
            pages = ec2.describe_instances(Filters=[*names.TAG_FILTER])["Reservations"]
            instances = sum(len(r["Instances"]) for r in pages)
            for tasks in sizes:
                before = server.snapshot()
                seconds = _run_map(host, deployment, tasks)
                moto = _delta(server.snapshot(), before)
                shape = model.MapShape(
                    tasks,
                    instances,
                    max(1, SLOTS // instances),
                    seconds,
                    visibility_timeout=float(env["MEADOWRUN_VISIBILITY_TIMEOUT"]),
                    reconcile_interval=float(env["MEADOWRUN_RECONCILE_INTERVAL"]),
                    lease_seconds=float(env["MEADOWRUN_LEASE_SECONDS"]),
                )
                label = f"{tasks:,} tasks, {instances} instance(s), {seconds:.1f} s"
                for op, predicted in model.sqs_requests(shape).items():
                    got = moto.get(f"sqs.{op}", 0)
                    ratio = f"{got / predicted:.2f}" if predicted else "-"
                    lines.append(f"| {label} | sqs.{op} | {predicted:,.0f} | {got:,} | {ratio} |")
                dynamo = {k: v for k, v in moto.items() if k.startswith("dynamodb.")}
                predicted = sum(model.dynamodb_requests(shape).values())
                table = sum(dynamo.values())
                lines.append(
                    f"| {label} | dynamodb (all: {dynamo}) | {predicted:,.0f} | {table:,} | "
                    f"{table / predicted:.2f} |"
                )
                others = {k: v for k, v in moto.items() if not k.startswith(("sqs.", "dynamo"))}
                lines.append(f"| {label} | not modelled (test hosts' polling) | - | {others} | - |")
        finally:
            ClientRuntime.get().forget_backends()
            time.sleep(float(AWS_ENV["MEADOWRUN_LEASE_SECONDS"]) / 3 + 0.5)
            if hosts is not None:
                hosts.close()
            os.environ.pop("MEADOWRUN_EC2_ADDRESS_MAP", None)
            server.stop()
    return lines


def local_rate(scratch: Path, deployment: mr.Deployment, tasks: int) -> float:
    """No-op tasks per second of a map on the local cloud with SLOTS workers."""
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin

    with environment(
        {"MEADOWRUN_HOME": str(scratch / "local-home"), "MEADOWRUN_LOCAL_MAX_CPU": str(SLOTS)}
    ):
        try:
            host = mr.AllocLocalInstance()
            _run_map(host, deployment, 200)
            return tasks / _run_map(host, deployment, tasks)
        finally:
            ClientRuntime.get().forget_backends()
            admin.clean()


def projection(rate: float, round_trip: float, launch: float) -> list[str]:
    tasks, instances, slots = 1_000_000, 100, 2
    per_slot = rate / SLOTS
    ceilings = model.ceilings(
        model.MapShape(tasks, instances, slots, 1.0), per_slot, rate, round_trip, launch
    )
    lines = [
        f"Projection: {tasks:,} no-op tasks on {instances} instances of {slots} slots "
        f"(SQS round trip {round_trip * 1000:.0f} ms and boot-to-registered {launch:.0f} s "
        f"assumed; per-slot and client rates from the local cloud in this run: "
        f"{rate:,.0f} tasks/s on {SLOTS} slots)",
        "",
        "| part | ceiling |",
        "|---|---:|",
    ]
    for part, value in ceilings.items():
        unit = "s" if part.startswith("fleet") else "tasks/s"
        lines.append(f"| {part} | {value:,.0f} {unit} |")
    steady = min(v for k, v in ceilings.items() if not k.startswith("fleet"))
    seconds = tasks / steady
    shape = model.MapShape(tasks, instances, slots, seconds)
    sqs = model.sqs_requests(shape)
    dyn = model.dynamodb_requests(shape)
    price = model.cost(shape)
    lines += [
        "",
        f"At the binding steady ceiling ({steady:,.0f} tasks/s) the map takes {seconds:,.0f} s "
        f"once the fleet is up; requests: SQS {sum(sqs.values()):,.0f} "
        f"({', '.join(f'{k} {v:,.0f}' for k, v in sqs.items())}), DynamoDB "
        f"{sum(dyn.values()):,.0f}; cost ${price['sqs']:.4f} SQS + ${price['dynamodb']:.4f} "
        f"DynamoDB = ${sum(price.values()):.4f} per map, "
        f"${sum(price.values()) / tasks * 1e6:.4f} per million tasks.",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2000,8000", help="map sizes checked on moto")
    parser.add_argument("--round-trip-ms", type=float, default=20.0)
    parser.add_argument("--launch-seconds", type=float, default=35.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("meadowrun_core", "tests.ec2_hosts", "asyncssh", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("meadowrun_core.job").setLevel(logging.CRITICAL)
    load = background_load()
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(sys.executable))
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        sizes = [int(s) for s in args.tasks.split(",")]
        checked = on_moto(scratch, deployment, sizes)
        rate = local_rate(scratch, deployment, 10_000)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(checked))
    print()
    print("\n".join(projection(rate, args.round_trip_ms / 1000, args.launch_seconds)))
    print(f"\nmachine before the run: {load}; after: {background_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
