"""What a TAB costs: the installed `pipekit` console script answering bash's completion request
(target: at most 150 ms), against the floor of the same interpreter starting and doing nothing, and
`pipekit --version` (the whole command line imported), interleaved, medians.

    python benchmarks/bench_completion.py [--rounds 21]

The request completes stage names (`pipekit run <TAB>`: pipeline.py's syntax and the history's last
run) and run ids (`pipekit show <TAB>`) in a folder with a pipeline and a recorded run; the
described command tree is in the cache (the first TAB after an install or upgrade builds it, about
as slow as `--version`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINE = """import pipekit as pk
pk.param("registry", default="localhost:5000")
@pk.stage
def lint(ctx):
    ctx.sh("true")
@pk.stage(needs=[lint])
def unit(ctx):
    ctx.sh("true")
"""


def _script() -> str:
    beside = Path(sysconfig.get_path("scripts")) / "pipekit"
    return str(beside) if beside.is_file() else str(shutil.which("pipekit"))


def _timed(argv: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    script = _script()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "pipeline.py").write_text(PIPELINE)
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(Path(folder, ".cache"))}
        subprocess.run([script, "run"], env=env, cwd=folder, capture_output=True, check=True)  # a recorded run
        python = Path(script).read_text().splitlines()[0].removeprefix("#!").strip() or sys.executable
        cases = {
            "floor: the script's Python, nothing imported": ([python, "-c", "pass"], {}),
            "pipekit --version (the whole CLI)": ([script, "--version"], {}),
            "TAB: pipekit run <TAB> (stages)": (
                [script],
                {"_PIPEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "pipekit run ", "COMP_CWORD": "2"},
            ),
            "TAB: pipekit show <TAB> (runs)": (
                [script],
                {"_PIPEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "pipekit show ", "COMP_CWORD": "2"},
            ),
        }
        for argv, extra in cases.values():  # warm: the described tree goes into the cache
            _timed(argv, {**env, **extra}, folder)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved: the machine's load falls on every case alike
            for name, (argv, extra) in cases.items():
                times[name].append(_timed(argv, {**env, **extra}, folder))
    floor = statistics.median(times[next(iter(cases))])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:48} median {median:6.1f} ms (min {min(values):.1f}, max {max(values):.1f}), +{median - floor:.1f}"
        )
    print("target: a TAB within 150 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
