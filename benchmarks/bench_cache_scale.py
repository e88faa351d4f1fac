"""A cached rerun of a large workspace against what git needs to know the same thing (issue 25).

A pipeline of 3 container stages, each ``cache=pk.inputs("src/**")``, nothing changed since the
last run, over trees of 2,000 files / 20 MB, 20,000 / 200 MB and 100,000 / 500 MB; beside it, on
the same tree: ``git ls-files -s`` (the index, stat-based), ``git status`` (stats every file) and
``git add -A`` on a fresh index (hashes every file), and the same rerun with another checkout of
pipekit (``--baseline``, default /work/main). Every command is its own process; rounds
interleaved, medians (min–max), peak RSS and CPU time (user + system, with its children) from
``wait4``. A row "empty" (a workspace of one file, the same pipeline) is the floor: what a run
costs whatever the workspace (start-up, imports, the engine check, the history), measured in the
same rounds, so that a loaded machine shows in it.

Both pipekit checkouts run with their bytecode cached (``PYTHONPYCACHEPREFIX`` in the benchmark's
folder, ``PYTHONDONTWRITEBYTECODE`` left out), as an installed package runs: the first runs of
each tree write it.

Targets: 100,000 files ≤ 1.0 s wall, and ≤ 2× the 20,000-file time.

    python benchmarks/bench_cache_scale.py [--rounds 3] [--sizes 2000,20000,100000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
MB = {2000: 20, 20000: 200, 100000: 500}
PIPELINE = """import pipekit as pk

IMAGE = "{image}"


@pk.stage(image=IMAGE, cache=pk.inputs("src/**"))
def lint(ctx):
    ctx.sh("true")


@pk.stage(image=IMAGE, cache=pk.inputs("src/**"))
def test(ctx):
    ctx.sh("true")


@pk.stage(image=IMAGE, cache=pk.inputs("src/**"))
def build(ctx):
    ctx.sh("true")
"""


def make_tree(root: Path, files: int, megabytes: int, image: str) -> None:
    """``files`` files of equal size under src/ (100 a folder, 20 folders a package), a pipeline,
    a git repository with all of it committed. Kept between runs of the benchmark."""
    if (root / ".done").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(files)
    size = megabytes * 1_000_000 // files
    blob = os.urandom(size * 2)
    for i in range(files):
        folder = root / "src" / f"pkg{i // 2000:03d}" / f"mod{(i // 100) % 20:02d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        offset = rnd.randrange(size)
        (folder / f"f{i:06d}.py").write_bytes(blob[offset : offset + size])
    (root / "pipeline.py").write_text(PIPELINE.format(image=image))
    git = ["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench"]
    subprocess.run([*git, "init", "-q", "."], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "tree"], cwd=root, check=True)
    (root / ".done").touch()


def make_empty(root: Path, image: str) -> None:
    """The floor's workspace: the same pipeline, one file under src/."""
    if (root / ".done").exists():
        return
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "one.py").write_text("x = 1\n")
    (root / "pipeline.py").write_text(PIPELINE.format(image=image))
    (root / ".done").touch()


def timed(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, before: list[str] | None = None
) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) and CPU seconds (user + system, its children's included) of one process."""
    if before:
        subprocess.run(before, cwd=cwd, check=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd}: {err[-2000:]}")
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


PYCACHE: list[Path] = []


def pipekit_env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE[0] / checkout.resolve().as_posix().strip("/").replace("/", "+"))
    return {**env, "PYTHONPATH": str(checkout)}


def commands(
    root: Path, baseline: Path, checkout: Path = HERE
) -> dict[str, tuple[list[str], dict[str, str] | None, list[str] | None]]:
    pipekit = shutil.which("pipekit") or "pipekit"
    run = [pipekit, "run", "-f", str(root)]
    return {
        "pipekit": (run, pipekit_env(checkout), None),
        "baseline": (run, pipekit_env(baseline), None),
        "git ls-files -s": (["git", "ls-files", "-s"], None, None),
        "git status": (["git", "status", "--porcelain"], None, None),
        "git add -A": (["git", "add", "-A"], None, ["rm", "-f", ".git/index"]),
    }


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.2f}–{max(values):.2f})"


def label(n: int) -> str:
    return "empty (1 file: the floor)" if n == 0 else f"{n:,} files, {MB.get(n, n // 200)} MB"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="2000,20000,100000")
    ap.add_argument("--dir", default="/tmp/pipekit-bench-cache-scale")
    ap.add_argument("--baseline", default="/work/main", help="another pipekit checkout, measured alongside")
    ap.add_argument("--checkout", default=str(HERE), help="the pipekit checkout measured (default: this one)")
    ap.add_argument("--image", default="pipekit-local/busybox:latest")
    args = ap.parse_args()
    sizes = [0, *(int(s) for s in args.sizes.split(","))]
    baseline, checkout = Path(args.baseline), Path(args.checkout)
    PYCACHE.append(Path(args.dir) / "pycache")
    trees = {}
    for n in sizes:
        trees[n] = Path(args.dir) / f"files-{n}"
        if n == 0:
            make_empty(trees[n], args.image)
        else:
            make_tree(trees[n], n, MB.get(n, n // 200), args.image)
        for name in ("pipekit", "baseline"):  # first runs: the stages run, then every file is known
            argv, env, _ = commands(trees[n], baseline, checkout)[name]
            for _ in range(2):
                timed(argv, trees[n], env)
    time.sleep(2.5)  # every file older than the stat cache's racy window: hashed once more, then trusted
    for n in sizes:
        for name in ("pipekit", "baseline"):
            argv, env, _ = commands(trees[n], baseline, checkout)[name]
            timed(argv, trees[n], env)
    names = list(commands(trees[sizes[0]], baseline, checkout))
    walls: dict[tuple[int, str], list[float]] = {}
    rss: dict[tuple[int, str], list[int]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    start_load = os.getloadavg()
    for _ in range(args.rounds):
        for n in sizes:
            for name, (argv, env, before) in commands(trees[n], baseline, checkout).items():
                if n == 0 and name.startswith("git"):
                    continue
                wall, peak, used = timed(argv, trees[n], env, before)
                walls.setdefault((n, name), []).append(wall)
                rss.setdefault((n, name), []).append(peak)
                cpu.setdefault((n, name), []).append(used)
    load = os.getloadavg()
    print(f'Cached rerun, 3 stages with cache=pk.inputs("src/**"), nothing changed; {args.rounds} interleaved rounds,')
    print(
        f"medians (min–max); load average at the start {start_load[0]:.1f}, at the end {load[0]:.1f},"
        f" {load[1]:.1f}, {load[2]:.1f} on {os.cpu_count()} cores."
    )
    print()
    print(
        "| workspace | "
        + " | ".join(f"`{n}`" if n.startswith("git") else n for n in names)
        + " | pipekit CPU (baseline) | pipekit peak RSS (baseline) |"
    )
    print("|---" * (len(names) + 3) + "|")
    for n in sizes:
        cells = [fmt(walls[(n, name)]) if (n, name) in walls else "" for name in names]
        peak = [statistics.median(rss[(n, who)]) / 1024 for who in ("pipekit", "baseline")]
        used = [statistics.median(cpu[(n, who)]) for who in ("pipekit", "baseline")]
        print(
            f"| {label(n)} | " + " | ".join(cells) + f" | {used[0]:.2f} s ({used[1]:.2f} s)"
            f" | {peak[0]:.0f} MiB ({peak[1]:.0f} MiB) |"
        )
    if 20000 in sizes and 100000 in sizes:
        big = statistics.median(walls[(100000, "pipekit")])
        ratio = big / statistics.median(walls[(20000, "pipekit")])
        status = statistics.median(walls[(100000, "git status")])
        print()
        print(f"100,000 files: {big:.2f} s (target ≤ 1.0 s), {ratio:.2f}× the 20,000-file time (target ≤ 2×),")
        print(f"{big / status:.1f}× `git status` on the same tree.")
        for who in ("pipekit", "baseline"):
            floor = statistics.median(walls[(0, who)])
            over = [statistics.median(walls[(n, who)]) - floor for n in (20000, 100000)]
            print(
                f"{who}: the floor (empty) {floor:.2f} s; over it: 20,000 files {over[0]:+.2f} s,"
                f" 100,000 {over[1]:+.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
