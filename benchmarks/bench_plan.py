"""Load, validate and plan generated pipelines: how planning grows with the number of stages.

Layered DAGs of 10 stages a layer, each stage depending on 1 to 3 stages of the layer before (one
as a parameter, the others with needs=), written out as one function per stage; and a matrix stage
of N instances with one stage after it.

    python benchmarks/bench_plan.py [--stages 1000,10000,20000] [--rounds 3]

Prints, for each size, the median of load + validate + plan in-process (targets: 10,000 stages in
<= 1.5 s, twice the stages in no more than 2.2x the time), and for the first size the whole
`python -m pipekit run --dry-run` process against `python -c "import pipekit"`.
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

from pipekit._cli.main import main as cli_main

WIDTH = 10


def generate(n: int) -> str:
    lines = ["import pipekit as pk", ""]
    for i in range(n):
        layer, col = divmod(i, WIDTH)
        if layer == 0:
            lines += ["@pk.stage(image='busybox')", f"def s{i}(ctx):", "    return 1", ""]
            continue
        value = (layer - 1) * WIDTH + col
        needs = [f"s{(layer - 1) * WIDTH + (col + k) % WIDTH}" for k in range(1, 1 + i % 3)]
        lines += [
            f"@pk.stage(image='busybox', needs={needs!r})",
            f"def s{i}(ctx, s{value}):",
            f"    return s{value} + 1",
            "",
        ]
    return "\n".join(lines)


def generate_matrix(n: int) -> str:
    side = int(n**0.5)
    rest = n // side
    return (
        "import pipekit as pk\n\n"
        f"@pk.stage(image='busybox:{{a}}', matrix={{'a': list(range({side})), 'b': list(range({rest}))}})\n"
        "def test(ctx):\n    return 1\n\n"
        "@pk.stage(image='busybox')\n"
        "def report(ctx, test):\n    return len(test)\n"
    )


_TIMER = """
import sys, time
import pipekit as pk
warm = pk.Pipeline(name="warm-up")
warm.stage(name="a")(lambda ctx: None)
pk.plan(warm)  # networkx imported before anything is timed
t = time.perf_counter()
plan = pk.plan(pk.load(sys.argv[1]))
print(time.perf_counter() - t, len(plan.order))
"""


def _in_process(path: Path) -> float:
    """Load + validate + plan, timed inside a fresh process (so no round inherits another's heap)."""
    out = subprocess.run([sys.executable, "-c", _TIMER, str(path)], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", default="1000,10000,20000")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(table([int(n) for n in args.stages.split(",")], args.rounds))
    return 0


def table(sizes: list[int], rounds: int) -> str:
    """Markdown: load + validate + plan per size, and the whole dry-run process for the first."""
    lines: list[str] = []
    med = statistics.median
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for kind, make in (("layered DAG", generate), ("matrix", generate_matrix)):
            for n in sizes:
                files[(kind, n)] = Path(d) / f"{kind[0]}{n}.py"
                files[(kind, n)].write_text(make(n))
        times: dict[tuple[str, int], list[float]] = {key: [] for key in files}
        for _ in range(rounds):  # interleaved: every size in every round
            for key, path in files.items():
                times[key].append(_in_process(path))
        results = {key: med(t) for key, t in times.items()}
        lines.append(
            "| pipeline | stages | load + validate + plan (median, min–max) | time / time of half the stages |"
        )
        lines.append("| --- | --- | --- | --- |")
        for (kind, n), t in results.items():
            half = results.get((kind, n // 2))
            ratio = f"{t / half:.2f}" if half else "-"
            spread = f"{min(times[(kind, n)]):.3f}–{max(times[(kind, n)]):.3f}"
            lines.append(f"| {kind} | {n:,} | {t:.3f} s ({spread}) | {ratio} |")
        path = Path(d) / "pipeline.py"
        path.write_text(generate(sizes[0]))
        whole, baseline, cli = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import pipekit"], check=True)
            baseline.append(time.perf_counter() - t)
            t = time.perf_counter()
            argv = ["run", "--dry-run", "--no-image-check", "-f", str(path)]
            proc = subprocess.run([sys.executable, "-m", "pipekit", *argv], check=True, capture_output=True, text=True)
            whole.append(time.perf_counter() - t)
            assert proc.stdout.count("\n") == sizes[0] + 1
            t = time.perf_counter()
            assert cli_main(argv, out=io.StringIO()) == 0
            cli.append(time.perf_counter() - t)
    lines.append(f"\n{sizes[0]:,} stages: `python -m pipekit run --dry-run` (whole process) median {med(whole):.3f}s;")
    lines.append(f"  baseline `python -c 'import pipekit'` {med(baseline):.3f}s; in-process dry run {med(cli):.3f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
