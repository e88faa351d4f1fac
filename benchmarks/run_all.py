"""Every performance figure of docs/performance.md, side by side, in one command.

    python benchmarks/run_all.py [--rounds 5] [--quick] [--no-write]
    python benchmarks/bench_peers.py --install-luigi   # once, to include Luigi

Runs, on this machine and in this order: the 20-stage chains (workloads A and B) for the
hand-written docker-SDK floor, pipekit, bash, make -j4 and Luigi (when benchmarks/.peers has it),
interleaved; a stage printing a lot (50 MB of lines, one 10 MB line, and 5 MB for the memory
comparison); planning 1,000 to 20,000 stages and a matrix; and the import cost. Then it writes the
tables, with the machine they ran on, between the markers of docs/performance.md (``--no-write``
prints them only). Needs the engine and the local images (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_logs  # noqa: E402
import bench_peers  # noqa: E402
import bench_plan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- run_all:start -->", "<!-- run_all:end -->"
TARGETS = """Targets (issue 14): A ≤ 1.05× the floor, B ≤ 0.75×, start → first create ≤ the floor's + 0.10 s,
last remove → exit ≤ the floor's + 0.05 s, peak RSS ≤ 50 MiB; logs at ≥ 0.5× the floor's speed with
flat memory; 10,000 stages planned in ≤ 1.5 s, 2× the stages in ≤ 2.2× the time."""


def machine() -> str:
    import docker

    client = docker.from_env()
    try:
        engine = client.version().get("Version", "?")
    finally:
        client.close()
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return (
        f"{datetime.date.today().isoformat()}, commit {commit.stdout.strip() or '?'}: {cpus} cores, {mem:.0f} GiB,"
        f" {platform.platform()}, Docker {engine}, Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, smaller outputs: to try the script")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    parts = [f"Measured {machine()}.", "", TARGETS]
    tools = ["floor", "pipekit", "bash", "make", "luigi"]
    parts += ["", "### 20 container stages", bench_peers.compare(rounds, ["A", "B"], tools)]
    parts += [
        "",
        "### The live view costs nothing",
        "",
        "The same 20 stages with pipekit's console output, plain and as the live view (both to a file):",
        bench_peers.compare(rounds, ["A"], ["floor", "pipekit-plain", "pipekit-live"]),
    ]
    mb = 10 if args.quick else 50
    parts += [
        "",
        "### A stage that prints a lot",
        "",
        bench_logs.table(mb, max(3, rounds - 2), ["console", "json", "live"], ["lines", "long-line"]),
    ]
    sizes = [1000, 5000, 10000] if args.quick else [1000, 10000, 20000]
    parts += ["", "### Planning", "", bench_plan.table(sizes, rounds)]
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        page = PAGE.read_text()
        head, rest = page.split(START, 1)
        _old, tail = rest.split(END, 1)
        PAGE.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"\nwritten to {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
