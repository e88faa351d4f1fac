"""20 trivial container stages in a diamond of parallel chains: pipekit against a hand-written floor.

    source -> 3 chains of 6 stages -> sink            (20 stages, each runs `true` in a container)

The floor is the shortest docker-SDK thread pool doing the same work with the same scheduling
(a stage starts when its dependencies are done, `--jobs` at a time): `containers.run(..., remove=True)`.
Both run alternately in one process, several rounds, and the medians are compared.

    python benchmarks/bench_diamond.py [--rounds 5] [--jobs 4] [--image pipekit-local/busybox:latest]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import docker

import pipekit as pk
from pipekit._backends.docker.backend import DockerBackend

CHAINS, LENGTH = 3, 6


def dag() -> dict[str, list[str]]:
    """stage -> the stages it depends on."""
    deps: dict[str, list[str]] = {"source": []}
    for c in range(CHAINS):
        for i in range(LENGTH):
            deps[f"c{c}_{i}"] = ["source"] if i == 0 else [f"c{c}_{i - 1}"]
    deps["sink"] = [f"c{c}_{LENGTH - 1}" for c in range(CHAINS)]
    return deps


def pipekit_pipeline(image: str) -> pk.Pipeline:
    p = pk.Pipeline(name="diamond", image=image, path=str(Path(__file__).resolve()))
    for name, needs in dag().items():
        p.stage(name=name, needs=needs)(lambda ctx: ctx.sh("true"))
    return p


def run_pipekit(client: docker.DockerClient, image: str, jobs: int) -> float:
    p = pipekit_pipeline(image)
    start = time.perf_counter()
    result = pk.run(p, backend=DockerBackend(client), jobs=jobs, log_format="json", log_file=io.StringIO())
    elapsed = time.perf_counter() - start
    assert result.status == "succeeded", result.stages
    return elapsed


def run_floor(client: docker.DockerClient, image: str, jobs: int) -> float:
    deps = dag()
    waiting = {n: set(d) for n, d in deps.items()}
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        running = {}
        ready = [n for n, d in waiting.items() if not d]
        while ready or running:
            while ready and len(running) < jobs:
                n = ready.pop(0)
                running[pool.submit(client.containers.run, image, ["sh", "-c", "true"], remove=True)] = n
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()
                finished = running.pop(f)
                for n, d in waiting.items():
                    if finished in d:
                        d.discard(finished)
                        if not d:
                            ready.append(n)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--image", default="pipekit-local/busybox:latest")
    args = ap.parse_args()
    client = docker.from_env()
    client.images.get(args.image)  # build it first: scripts/local-images.sh
    run_floor(client, args.image, args.jobs)  # warm-up
    pipekit_times, floor_times = [], []
    for _ in range(args.rounds):
        floor_times.append(run_floor(client, args.image, args.jobs))
        pipekit_times.append(run_pipekit(client, args.image, args.jobs))
    fm, pm = statistics.median(floor_times), statistics.median(pipekit_times)
    print(f"stages: {len(dag())}, jobs: {args.jobs}, rounds: {args.rounds}")
    print(f"hand-written floor: median {fm:.2f}s  ({', '.join(f'{t:.2f}' for t in floor_times)})")
    print(f"pipekit:            median {pm:.2f}s  ({', '.join(f'{t:.2f}' for t in pipekit_times)})")
    print(f"ratio pipekit/floor: {pm / fm:.3f}  (target <= 1.15)")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
