"""What pipekit costs a Python process before it does anything: `import pipekit`, and the pytest
plugin in a pytest session that does not use it (target: under 30 ms).

    python benchmarks/bench_import.py [--rounds 15]

Each figure is the median (min, max) of fresh interpreters, measured with -X importtime, so the
interpreter's own start-up is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys


def cumulative_us(code: str, module: str) -> int:
    """The cumulative import time of ``module`` when ``code`` runs in a fresh interpreter."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True).stderr
    rows = [line for line in err.splitlines() if line.rstrip().endswith(f"| {module}")]
    return int(rows[-1].split("|")[1]) if rows else 0


def measure(code: str, module: str, rounds: int) -> str:
    values = [cumulative_us(code, module) / 1000 for _ in range(rounds)]
    return f"median {statistics.median(values):.1f} ms (min {min(values):.1f}, max {max(values):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(f"import pipekit:                               {measure('import pipekit', 'pipekit', args.rounds)}")
    plugin = measure("import pytest, pipekit.pytest_plugin", "pipekit.pytest_plugin", args.rounds)
    print(f"pytest plugin (pipekit + plugin, pytest loaded): {plugin}  (target < 30 ms)")
    planned = measure(
        "import pipekit as pk\np = pk.Pipeline(name='x')\np.stage(name='a')(lambda ctx: None)\npk.plan(p)",
        "networkx",
        args.rounds,
    )
    print(f"networkx, imported when a pipeline is first planned: {planned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
