"""Deployment benchmark (issue 3), every figure from one run, side by side.

    .venv/bin/python -m bench.bench_deployment
    .venv/bin/python -m bench.bench_deployment --markdown docs/performance.md

Code mirror: a 50 MB code tree (5,000 files of 10 kB in 50 packages) mirrored with
``Deployment.mirror_local``: the first job, a repeated job with unchanged code, and a job after
one 10 kB file changed: bytes uploaded and wall time, next to a job with no code at all.

Environment: a 20-package requirements file (``PipRequirementsFile``): cold (empty uv cache,
fresh instance: resolve, download, install), cold instance with uv's cache warm, a fresh
instance that unpacks the stored build from the object store, and cached (the next job on the
same instance), next to a job with the caller's own interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import meadowrun_core as mr

REQUIREMENTS = """six
idna
certifi
charset-normalizer
urllib3
requests
attrs
packaging
pyparsing
python-dateutil
pytz
tzdata
toolz
click
markupsafe
jinja2
itsdangerous
blinker
iniconfig
pluggy
"""


def noop() -> int:
    return 1


def _home(root: Path, name: str) -> Path:
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin

    if os.environ.get("MEADOWRUN_HOME"):
        ClientRuntime.get().forget_backends()
        admin.clean()
    home = root / name
    os.environ["MEADOWRUN_HOME"] = str(home)
    return home


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _median(call: Callable[[], Any], n: int) -> float:
    return statistics.median(_timed(call) for _ in range(n))


def _uploaded() -> int:
    from meadowrun_core.client import payload

    return sum(m.bytes_uploaded for m in payload._mirrors.values())


def bench_mirror(root: Path, repeats: int) -> list[tuple[str, str, str]]:
    tree = root / "code"
    for d in range(50):
        pkg = tree / f"benchpkg{d}"
        pkg.mkdir(parents=True)
        for f in range(100):
            (pkg / f"mod{f}.py").write_text(f"X = {d * 100 + f}\n" + "#" * 10_000 + "\n")
    size = sum(p.stat().st_size for p in tree.rglob("*.py"))
    _home(root, "home-mirror")
    no_code = mr.Deployment.mirror_local(include_sys_path=False)
    code = mr.Deployment.mirror_local(include_sys_path=False, additional_sys_paths=[str(tree)])
    mr.run_function(noop, deployment=no_code)  # launch the instance, warm the worker
    base = _median(lambda: mr.run_function(noop, deployment=no_code), repeats)
    before = _uploaded()
    first = _timed(lambda: mr.run_function(noop, deployment=code))
    first_bytes = _uploaded() - before
    before = _uploaded()
    repeat = _median(lambda: mr.run_function(noop, deployment=code), repeats)
    repeat_bytes = _uploaded() - before
    target = tree / "benchpkg7" / "mod42.py"
    target.write_text("X = 'changed'\n" + "#" * 10_000 + "\n")
    before = _uploaded()
    changed = _timed(lambda: mr.run_function(noop, deployment=code))
    changed_bytes = _uploaded() - before
    return [
        ("code tree", f"{size / 1e6:.1f} MB in 5,000 files", ""),
        ("job with no code (warm)", f"{base * 1000:.1f} ms", "reference"),
        ("first job, 50 MB tree", f"{first * 1000:.0f} ms", f"{first_bytes / 1e6:.1f} MB up"),
        (
            "repeated job, unchanged",
            f"{repeat * 1000:.1f} ms (+{(repeat - base) * 1000:.1f} ms)",
            f"{repeat_bytes} bytes up (target 0, at most +20 ms)",
        ),
        (
            "after one 10 kB file changed",
            f"{changed * 1000:.0f} ms",
            f"{changed_bytes / 1e3:.1f} kB up (target < 100 kB)",
        ),
    ]


def bench_environment(root: Path, repeats: int) -> list[tuple[str, str, str]]:
    requirements = root / "requirements.txt"
    requirements.write_text(REQUIREMENTS)
    env = mr.Deployment.mirror_local(
        include_sys_path=False, interpreter=mr.PipRequirementsFile(str(requirements))
    )
    mine = mr.Deployment.mirror_local(include_sys_path=False)
    uv_cache = root / "uv-cache"
    os.environ["UV_CACHE_DIR"] = str(uv_cache)  # empty: the cold build downloads everything
    os.environ["MEADOWRUN_ENV_ARCHIVE"] = "always"
    _home(root, "home-env-cold")
    cold = _timed(lambda: mr.run_function(noop, deployment=env))
    # a fresh cloud (new instance, no resolve cache), uv's cache now warm
    _home(root, "home-env-warm-uv")
    warm_uv = _timed(lambda: mr.run_function(noop, deployment=env))
    # a fresh instance of the same cloud unpacks the stored build: the same home, new instance
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin

    ClientRuntime.get().forget_backends()
    admin.clean()
    os.environ["MEADOWRUN_UV"] = "/bin/false"  # prove nothing is resolved or built
    unpacked = _timed(lambda: mr.run_function(noop, deployment=env))
    del os.environ["MEADOWRUN_UV"]
    mr.run_function(noop, deployment=mine)
    base = _median(lambda: mr.run_function(noop, deployment=mine), repeats)
    cached = _median(lambda: mr.run_function(noop, deployment=env), repeats)
    return [
        ("requirements", "20 packages, unpinned (resolved by uv)", ""),
        ("cold: empty uv cache, new instance", f"{cold:.2f} s", "resolve + download + install"),
        ("new cloud, uv cache warm", f"{warm_uv:.2f} s", "resolve + install from uv's cache"),
        ("new instance, stored build", f"{unpacked:.2f} s", "unpacked from the object store"),
        ("job with the caller's interpreter (warm)", f"{base * 1000:.1f} ms", "reference"),
        (
            "cached environment (warm)",
            f"{cached * 1000:.1f} ms (+{(cached - base) * 1000:.1f} ms)",
            "target at most +50 ms",
        ),
    ]


def render(sections: dict[str, list[tuple[str, str, str]]]) -> str:
    import platform

    out = ["## Deployment (issue 3)\n"]
    out.append(
        f"`.venv/bin/python -m bench.bench_deployment` on {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; local cloud, "
        "every figure from the same run.\n"
    )
    for title, rows in sections.items():
        out.append(f"\n### {title}\n\n| measure | figure | note |\n|---|---|---|")
        out.extend(f"| {a} | {b} | {c} |" for a, b, c in rows)
        out.append("")
    return "\n".join(out) + "\n"


def write_markdown(path: Path, section: str) -> None:
    heading = "## Deployment (issue 3)"
    text = path.read_text() if path.exists() else "# Performance\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    path.write_text("".join(lines[:start]) + section + "\n" + "".join(lines[end:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mr-bench-deploy-"))
    os.environ.setdefault("MEADOWRUN_LOCAL_MAX_CPU", "2")
    try:
        sections = {
            "Code mirror, 50 MB tree": bench_mirror(root, args.repeats),
            "Environment, 20-package requirements file": bench_environment(root, args.repeats),
        }
    finally:
        from meadowrun_core.client.runtime import ClientRuntime
        from meadowrun_core.local import admin

        ClientRuntime.get().forget_backends()
        admin.clean()
        shutil.rmtree(root, ignore_errors=True)
    section = render(sections)
    print(section)
    if args.markdown:
        write_markdown(args.markdown, section)


if __name__ == "__main__":
    main()
