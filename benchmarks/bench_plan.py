"""Load, validate and plan (`--dry-run`) a generated 1,000-stage pipeline.

The pipeline has 100 layers of 10 stages; each stage takes the value of one stage of the layer
before (a parameter) and needs another (needs=), so the graph has about 2,000 edges.

    python benchmarks/bench_plan.py [--stages 1000] [--rounds 5]

Prints the median of: the whole `python -m pipekit run --dry-run` command, the same command's
baseline (`python -c "import pipekit"`), and load + validate + plan measured in-process.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipekit as pk
from pipekit._cli import main as cli_main

WIDTH = 10


def generate(n: int) -> str:
    lines = ["import pipekit as pk", ""]
    for i in range(n):
        layer, col = divmod(i, WIDTH)
        if layer == 0:
            lines += ["@pk.stage(image='busybox')", f"def s{i}(ctx):", "    return 1", ""]
            continue
        value = (layer - 1) * WIDTH + col
        need = (layer - 1) * WIDTH + (col + 1) % WIDTH
        lines += [
            f"@pk.stage(image='busybox', needs=['s{need}'])",
            f"def s{i}(ctx, s{value}):",
            f"    return s{value} + 1",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pipeline.py"
        path.write_text(generate(args.stages))
        whole, baseline, inproc, cli = [], [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import pipekit"], check=True)
            baseline.append(time.perf_counter() - t)
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "pipekit", "run", "--dry-run", "--no-image-check", "-f", str(path)],
                check=True,
                capture_output=True,
                text=True,
            )
            whole.append(time.perf_counter() - t)
            assert proc.stdout.count("\n") == args.stages + 1
            t = time.perf_counter()
            plan = pk.plan(pk.load(path))
            inproc.append(time.perf_counter() - t)
            assert len(plan.order) == args.stages
            t = time.perf_counter()
            assert cli_main(["run", "--dry-run", "--no-image-check", "-f", str(path)], out=io.StringIO()) == 0
            cli.append(time.perf_counter() - t)
    med = statistics.median
    print(f"stages: {args.stages}, rounds: {args.rounds}")
    print(f"`python -m pipekit run --dry-run` (whole process): median {med(whole):.3f}s")
    print(f"  baseline `python -c 'import pipekit'`:            median {med(baseline):.3f}s")
    print(f"in-process dry run (load, validate, plan, print):   median {med(cli):.3f}s")
    print(f"in-process load + validate + plan:                  median {med(inproc):.3f}s  (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
