"""The cost of going through Swarm: the same pipelines on one engine and on a three-node swarm.

Both run on this machine: the main engine, and the swarm of tests/swarm_lab.py (three engines in
network namespaces of their own, started here and removed at the end). This measures what Swarm
adds per stage (a service, its scheduling, the workspace copied in and out, exec through the
node's engine), not a speed-up: the three nodes share the same two cores.

    python benchmarks/bench_swarm.py [--rounds 5] [--no-write] [--baseline /work/main] [--baseline-rounds 1]

Workloads, in interleaved rounds (engine, swarm, engine, swarm, ...), medians with min/max:
  diamond: the 20-stage diamond of bench_diamond.py (source, 3 chains of 6, sink), -j4, `true`
  chain:   5 stages one after another, -j1, `true`: (swarm - engine) / 5 is the per-stage overhead
  chain 200 MB, one 200 MB: the chain, and one stage, with a workspace of 20,000 files (200 MB):
           (swarm - engine) / 5 is the per-stage overhead with it, the first ship of the workspace
           to a node included; the difference between the two, over 4, is what each stage after
           the first costs
The one engine shares the folder (a bind mount). ``--baseline`` runs the swarm's rows with another
checkout too (a process of its own per run, ``--baseline-rounds`` times), interleaved.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

import bench_diamond  # noqa: E402

import pipekit as pk  # noqa: E402

IMAGE = "pipekit-local/busybox:latest"
PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- swarm:start -->", "<!-- swarm:end -->"


#: the pipelines' folder: a small one (a README), as a checkout of a small project would be
FOLDER = Path("/tmp/pipekit-bench-swarm")
#: a realistic checkout: 20,000 files of 10 kB in 200 folders (issue 25)
BIG = Path("/tmp/pipekit-bench-swarm-200mb")
BIG_FILES, BIG_SIZE = 20_000, 10_000
SWARM = "3-node swarm"


def make_big() -> None:
    marker = BIG / ".made"
    if marker.exists():
        return
    BIG.mkdir(exist_ok=True)
    for i in range(BIG_FILES):
        folder = BIG / "src" / f"d{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.txt").write_bytes(os.urandom(BIG_SIZE))
    marker.write_text("")


def workloads(image: str) -> dict[str, tuple[pk.Pipeline, int]]:
    diamond = bench_diamond.pipekit_pipeline(image)
    diamond.path = str(FOLDER / "pipeline.py")
    return {
        "diamond": (diamond, 4),
        "chain": (chain(image), 1),
        "chain 200 MB": (chain(image, folder=BIG), 1),
        "one 200 MB": (chain(image, 1, folder=BIG), 1),
    }


def chain(image: str, length: int = 5, folder: Path = FOLDER) -> pk.Pipeline:
    p = pk.Pipeline(name="chain", image=image, path=str(folder / "pipeline.py"))
    for i in range(length):
        p.stage(name=f"s{i}", needs=[f"s{i - 1}"] if i else [])(lambda ctx: ctx.sh("true"))
    return p


#: (workload, backend) -> per run, the median time between the ends of consecutive stages after the first
GAPS: dict[tuple[str, str], list[float]] = {}


def timed(pipeline: pk.Pipeline, backend: object, jobs: int, key: tuple[str, str] | None = None) -> float:
    log = io.StringIO()
    start = time.perf_counter()
    result = pk.run(pipeline, backend=backend, jobs=jobs, log_format="json", log_file=log)
    elapsed = time.perf_counter() - start
    assert result.status == "succeeded", result.stages
    ends = sorted(
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in map(json.loads, log.getvalue().splitlines())
        if e.get("event") == "stage finished"
    )
    if key is not None and len(ends) > 2:
        GAPS.setdefault(key, []).append(statistics.median(b - a for a, b in zip(ends, ends[1:])))
    return elapsed


def backends(manager: str) -> dict[str, object]:
    import docker

    from pipekit._backends.docker.backend import DockerBackend
    from pipekit._backends.swarm.backend import SwarmBackend

    return {
        "one engine": DockerBackend(docker.from_env()),
        SWARM: SwarmBackend(docker.DockerClient(base_url=manager), host=manager),
    }


def in_baseline(baseline: Path, workload: str, manager: str) -> float:
    """One run of ``workload`` on the swarm with the code of ``baseline``, in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(baseline)}
    argv = [sys.executable, __file__, "--one", workload, "--manager", manager]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=3600).stdout
    return float(out.split()[-1])


def measure(
    rounds: int, manager: str, baseline: Path | None = None, baseline_rounds: int = 0
) -> dict[tuple[str, str], list[float]]:
    made = backends(manager)
    FOLDER.mkdir(exist_ok=True)
    (FOLDER / "README.md").write_text("a small project\n" * 100)
    make_big()
    loads = workloads(IMAGE)
    times: dict[tuple[str, str], list[float]] = {}
    for workload in ("diamond", "chain"):  # warm-up: images, connections
        for backend in made.values():
            pipeline, jobs = loads[workload]
            timed(pipeline, backend, jobs)
    for r in range(max(rounds, baseline_rounds if baseline else 0)):
        for workload, (pipeline, jobs) in loads.items():
            for name, backend in made.items():
                if r < rounds:
                    times.setdefault((workload, name), []).append(timed(pipeline, backend, jobs, (workload, name)))
            if baseline is not None and r < baseline_rounds:
                times.setdefault((workload, "baseline"), []).append(in_baseline(baseline, workload, manager))
            print(f"round {r + 1}: {workload} {[round(v[-1], 2) for k, v in times.items() if k[0] == workload]}")
    return times


LABELS = {
    "diamond": "20-stage diamond, -j4",
    "chain": "5-stage chain, -j1",
    "chain 200 MB": "5-stage chain, -j1, 20,000 files / 200 MB",
    "one 200 MB": "1 stage, 20,000 files / 200 MB",
}


def table(times: dict[tuple[str, str], list[float]], rounds: int, baseline_rounds: int = 0) -> str:
    def med(key: tuple[str, str]) -> float:
        return statistics.median(times[key])

    def cell(key: tuple[str, str]) -> str:
        t = times.get(key)
        return f"{med(key):.2f} s ({min(t):.2f}–{max(t):.2f})" if t else "–"

    rows = [
        "| workload | one engine | 3-node swarm | swarm / engine | baseline swarm |",
        "| --- | --- | --- | --- | --- |",
    ]
    for workload, label in LABELS.items():
        ratio = med((workload, SWARM)) / med((workload, "one engine"))
        rows.append(
            f"| {label} | {cell((workload, 'one engine'))} | {cell((workload, SWARM))} | {ratio:.2f}× |"
            f" {cell((workload, 'baseline'))} |"
        )

    def overheads(name: str) -> tuple[float, float]:
        """Per stage with the 200 MB workspace: over the whole chain, and for each stage after the first."""
        engine5, engine1 = med(("chain 200 MB", "one engine")), med(("one 200 MB", "one engine"))
        swarm5, swarm1 = med(("chain 200 MB", name)), med(("one 200 MB", name))
        return (swarm5 - engine5) / 5, ((swarm5 - swarm1) - (engine5 - engine1)) / 4

    per_stage = (med(("chain", SWARM)) - med(("chain", "one engine"))) / 5
    per_diamond = (med(("diamond", SWARM)) - med(("diamond", "one engine"))) / 20
    big, big_after = overheads(SWARM)
    gap_swarm, gap_engine = (statistics.median(GAPS[("chain 200 MB", n)]) for n in (SWARM, "one engine"))
    gap = gap_swarm - gap_engine
    lines = [
        f"Per-stage overhead of Swarm on this machine: **{per_stage:.2f} s** for a stage on the critical"
        f" path (chain), {per_diamond:.2f} s of wall time per stage in the diamond (4 at once)."
        f" With a 200 MB workspace (20,000 files): **{big:.2f} s** per stage over the 5-stage chain (the"
        f" first ship of the workspace to the node included), **{big_after:.2f} s** for each stage after"
        f" the first (the two chains' difference), **{gap:.2f} s** between the ends of consecutive stages"
        f" after the first (swarm − engine, within each run: {gap_swarm:.2f} s − {gap_engine:.2f} s)."
        f" Medians of {rounds} interleaved rounds"
        " (min–max in brackets).",
    ]
    if ("chain 200 MB", "baseline") in times:
        b_big, b_after = overheads("baseline")
        lines.append(
            f"Baseline (another checkout, {baseline_rounds} round(s), same rounds): {b_big:.2f} s per stage with"
            f" the 200 MB workspace, {b_after:.2f} s for each stage after the first."
        )
    return "\n".join([*rows, "", *lines])


def write(text: str) -> None:
    page = PAGE.read_text()
    head, _, rest = page.partition(START)
    _, _, tail = rest.partition(END)
    PAGE.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def one(workload: str, manager: str) -> int:
    """``--one``: a single run on the swarm, its time printed (the baseline's process)."""
    pipeline, jobs = workloads(IMAGE)[workload]
    print(f"{timed(pipeline, backends(manager)[SWARM], jobs):.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout of the code to compare with")
    ap.add_argument("--baseline-rounds", type=int, default=1)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--manager", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.manager)
    from swarm_lab import SwarmLab

    lab = SwarmLab()
    lab.up()
    try:
        lab.load(IMAGE)
        times = measure(args.rounds, lab.manager.host, args.baseline, args.baseline_rounds)
    finally:
        lab.down()
    import run_all

    text = f"Ran on {run_all.machine()}\n\n" + table(times, args.rounds, args.baseline_rounds if args.baseline else 0)
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
