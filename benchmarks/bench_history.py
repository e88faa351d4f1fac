"""Run history benchmarks.

1. A fully cached re-run of the 20-stage diamond (benchmarks/bench_diamond.py) against its
   uncached run: how many containers the re-run starts, and the ratio of the times.
   Target: no container, under 10% of the uncached time.
2. What recording a run costs per stage: a pipeline of trivial stages on the fake backend, with
   and without the SQLite history, alternately. Target: under 5 ms per stage.

    python benchmarks/bench_history.py [--rounds 5] [--image pipekit-local/busybox:latest]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

import pipekit as pk
from pipekit._backends.docker.backend import DockerBackend
from pipekit.testing import FakeBackend

sys.path.insert(0, str(Path(__file__).parent))
from bench_diamond import dag  # noqa: E402


class CountingDocker(DockerBackend):
    def __init__(self, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.containers = 0

    def prepare(self, spec):  # type: ignore[no-untyped-def]
        if spec.image:
            self.containers += 1
        return super().prepare(spec)


def cached_pipeline(image: str, folder: Path) -> pk.Pipeline:
    p = pk.Pipeline(name="diamond-cached", image=image, path=str(folder / "pipeline.py"))
    for name, needs in dag().items():
        p.stage(name=name, needs=needs, cache=pk.inputs())(lambda ctx: ctx.sh("true") and None)
    return p


def run_recorded(backend: object, p: pk.Pipeline, folder: Path, *, record: bool, jobs: int = 4) -> float:
    start = time.perf_counter()
    result = pk.run(p, backend=backend, jobs=jobs, log_format="json", log_file=io.StringIO(), record=record)
    elapsed = time.perf_counter() - start
    assert result.status == "succeeded", result.stages
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image", default="pipekit-local/busybox:latest")
    ap.add_argument("--stages", type=int, default=200, help="stages of the recording-cost pipeline")
    args = ap.parse_args()
    med = statistics.median

    client = docker.from_env()
    client.images.get(args.image)
    uncached, cached, started = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            backend = CountingDocker(client)
            p = cached_pipeline(args.image, Path(d))
            uncached.append(run_recorded(backend, p, Path(d), record=True))
            before = backend.containers
            cached.append(run_recorded(backend, p, Path(d), record=True))
            started.append(backend.containers - before)
    client.close()
    print(f"cached re-run of the {len(dag())}-stage diamond, {args.rounds} rounds:")
    print(f"  uncached run:        median {med(uncached):.3f}s")
    print(f"  fully cached re-run: median {med(cached):.3f}s, containers started: {max(started)}")
    print(f"  ratio cached/uncached: {med(cached) / med(uncached):.3f}  (target < 0.10, no container)")

    plain, recorded = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            p = pk.Pipeline(name="many", path=str(Path(d) / "pipeline.py"))
            for i in range(args.stages):
                p.stage(name=f"s{i}", needs=[f"s{i - 1}"] if i % 10 else [])(lambda ctx: {"n": 1})
            plain.append(run_recorded(FakeBackend(), p, Path(d), record=False, jobs=1))
            recorded.append(run_recorded(FakeBackend(), p, Path(d), record=True, jobs=1))
    per_stage_ms = (med(recorded) - med(plain)) / args.stages * 1000
    print(f"recording cost, {args.stages} stages on the fake backend, {args.rounds} rounds:")
    print(f"  without history: median {med(plain):.3f}s;  with history: median {med(recorded):.3f}s")
    print(f"  recording adds {per_stage_ms:.2f} ms per stage  (target < 5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
