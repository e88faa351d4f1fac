"""The cost of going through Swarm: the same pipelines on one engine and on a three-node swarm.

Both run on this machine: the main engine, and the swarm of tests/swarm_lab.py (three engines in
network namespaces of their own, started here and removed at the end). This measures what Swarm
adds per stage (a service, its scheduling, the workspace copied in and out, exec through the
node's engine), not a speed-up: the three nodes share the same two cores.

    python benchmarks/bench_swarm.py [--rounds 5] [--no-write]

Workloads, in interleaved rounds (engine, swarm, engine, swarm, ...), medians with min/max:
  diamond: the 20-stage diamond of bench_diamond.py (source, 3 chains of 6, sink), -j4, `true`
  chain:   5 stages one after another, -j1, `true`: (swarm - engine) / 5 is the per-stage overhead
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
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


def chain(image: str, length: int = 5) -> pk.Pipeline:
    p = pk.Pipeline(name="chain", image=image, path=str(FOLDER / "pipeline.py"))
    for i in range(length):
        p.stage(name=f"s{i}", needs=[f"s{i - 1}"] if i else [])(lambda ctx: ctx.sh("true"))
    return p


def timed(pipeline: pk.Pipeline, backend: object, jobs: int) -> float:
    start = time.perf_counter()
    result = pk.run(pipeline, backend=backend, jobs=jobs, log_format="json", log_file=io.StringIO())
    elapsed = time.perf_counter() - start
    assert result.status == "succeeded", result.stages
    return elapsed


def backends(manager: str) -> dict[str, object]:
    import docker

    from pipekit._backends.docker.backend import DockerBackend
    from pipekit._backends.swarm.backend import SwarmBackend

    return {
        "one engine": DockerBackend(docker.from_env()),
        "3-node swarm": SwarmBackend(docker.DockerClient(base_url=manager), host=manager),
    }


def measure(rounds: int, manager: str) -> dict[tuple[str, str], list[float]]:
    made = backends(manager)
    FOLDER.mkdir(exist_ok=True)
    (FOLDER / "README.md").write_text("a small project\n" * 100)
    diamond = bench_diamond.pipekit_pipeline(IMAGE)
    diamond.path = str(FOLDER / "pipeline.py")
    workloads = {"diamond": (diamond, 4), "chain": (chain(IMAGE), 1)}
    times: dict[tuple[str, str], list[float]] = {}
    for pipeline, jobs in workloads.values():  # warm-up: images, connections
        for backend in made.values():
            timed(pipeline, backend, jobs)
    for _ in range(rounds):
        for workload, (pipeline, jobs) in workloads.items():
            for name, backend in made.items():
                times.setdefault((workload, name), []).append(timed(pipeline, backend, jobs))
    return times


def table(times: dict[tuple[str, str], list[float]], rounds: int) -> str:
    def med(key: tuple[str, str]) -> float:
        return statistics.median(times[key])

    rows = [
        "| workload | one engine | 3-node swarm | swarm / engine |",
        "| --- | --- | --- | --- |",
    ]
    for workload, label in (("diamond", "20-stage diamond, -j4"), ("chain", "5-stage chain, -j1")):
        cells = []
        for backend in ("one engine", "3-node swarm"):
            t = times[(workload, backend)]
            cells.append(f"{med((workload, backend)):.2f} s ({min(t):.2f}–{max(t):.2f})")
        ratio = med((workload, "3-node swarm")) / med((workload, "one engine"))
        rows.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f}× |")
    per_stage = (med(("chain", "3-node swarm")) - med(("chain", "one engine"))) / 5
    per_diamond = (med(("diamond", "3-node swarm")) - med(("diamond", "one engine"))) / 20
    return "\n".join(
        [
            *rows,
            "",
            f"Per-stage overhead of Swarm on this machine: **{per_stage:.2f} s** for a stage on the critical"
            f" path (chain), {per_diamond:.2f} s of wall time per stage in the diamond (4 at once)."
            f" Medians of {rounds} interleaved rounds (min–max in brackets).",
        ]
    )


def write(text: str) -> None:
    page = PAGE.read_text()
    head, _, rest = page.partition(START)
    _, _, tail = rest.partition(END)
    PAGE.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from swarm_lab import SwarmLab

    lab = SwarmLab()
    lab.up()
    try:
        lab.load(IMAGE)
        times = measure(args.rounds, lab.manager.host)
    finally:
        lab.down()
    import run_all

    text = f"Ran on {run_all.machine()}\n\n" + table(times, args.rounds)
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
