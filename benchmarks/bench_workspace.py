"""What copy mode costs with a realistic workspace (issue 25): a 5-stage chain of `true`,
``--workspace copy`` against ``--workspace mount`` on this machine's engine, for this checkout
and for a baseline checkout (the main branch before the workspace travelled by difference).

    python benchmarks/bench_workspace.py [--rounds 3] [--baseline /work/main] [--baseline-rounds 1]
                                         [--quick] [--rows 10 GiB,20,000] [--no-write]

Each run is the installed ``pipekit`` console script in its own process (``PYTHONPATH`` picks the
checkout), so that its peak RSS (``wait4``) is the whole run's. Rounds are interleaved (every
workspace, mode and checkout once, then again), medians. The baseline's copy mode takes minutes
per run on the large workspaces: it runs ``--baseline-rounds`` times (1 by default) and the
2 GiB row is measured for this checkout only.

Workspaces: empty (the pipeline file alone); 2,000 files of 10 kB (20 MB); 20,000 files of 10 kB
(200 MB); 200 files (2 MB) with one 1 GiB, 2 GiB, 10 GiB sparse file (the engine's untar writes it
in full: 10 GiB of its disk while the base exists; the benchmark removes its bases at the end); and
"changes 10 files": the 20,000-file workspace where every stage rewrites 10 of its files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- workspace:start -->", "<!-- workspace:end -->"
IMAGE = "pipekit-local/busybox:latest"
BASE = Path("/tmp/pipekit-bench-workspace")
STAGES = 5

PIPELINE = """
import os
import pipekit as pk

pipeline = pk.Pipeline(name="bench", image="busybox")
COMMAND = os.environ.get("BENCH_COMMAND", "true")
for i in range(5):
    pipeline.stage(name=f"s{i}", needs=[f"s{i - 1}"] if i else [])(lambda ctx: ctx.sh(COMMAND))
"""
TEN_FILES = "for i in 0 1 2 3 4 5 6 7 8 9; do echo $$-$i-$(date +%N) > d0000/f$i; done"

#: row -> (folder, files, bytes per file, sparse file size, command)
ROWS: dict[str, tuple[str, int, int, int, str]] = {
    "empty": ("empty", 0, 0, 0, "true"),
    "2,000 files, 20 MB": ("small", 2000, 10_000, 0, "true"),
    "20,000 files, 200 MB": ("large", 20000, 10_000, 0, "true"),
    "20,000 files, 200 MB, each stage changes 10 files": ("large", 20000, 10_000, 0, TEN_FILES),
    "200 files, 2 MB + one 1 GiB sparse file": ("sparse1", 200, 10_000, 1 << 30, "true"),
    "200 files, 2 MB + one 2 GiB sparse file": ("sparse2", 200, 10_000, 2 << 30, "true"),
    "200 files, 2 MB + one 10 GiB sparse file": ("sparse10", 200, 10_000, 10 << 30, "true"),
}
#: rows whose baseline copy is not run (minutes per run, and the engine's disk written in full)
NO_BASELINE = ("2 GiB", "10 GiB")
#: rows whose "new base" run is made once, whatever the rounds (the engine writes the file in full)
ONCE = ("10 GiB",)
QUICK = ("empty", "2,000 files, 20 MB", "20,000 files, 200 MB", "20,000 files, 200 MB, each stage changes 10 files")


def make_folder(name: str, files: int, size: int, sparse: int) -> Path:
    folder = BASE / name
    if (folder / "pipeline.py").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = folder / f"d{i // 100:04d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i % 100}").write_bytes(os.urandom(size))
    if sparse:
        with open(folder / "big.img", "wb") as f:
            f.truncate(sparse)
            f.seek(sparse // 2)
            f.write(b"data in the middle")
    (folder / "pipeline.py").write_text(PIPELINE)
    return folder


def drop_bases(folder: Path) -> None:
    """Remove the base copies of ``folder`` that copy mode keeps in the engine (and this machine's
    records of them): the next copy-mode run makes and ships a new one."""
    import docker

    client = docker.from_env()
    path = f"{os.uname().nodename}:{os.path.realpath(folder)}"
    listing = (client.api.volumes(filters={"label": "io.pipekit.workspace-base"}) or {}).get("Volumes") or []
    names = [v["Name"] for v in listing if (v.get("Labels") or {}).get("io.pipekit.workspace-base.path") == path]
    bases = [n for n in names if not n.endswith("-ok")]
    for name in [n for n in names if n.endswith("-ok")] + [f"{n}-fs" for n in bases] + bases:
        try:
            client.api.remove_volume(name)
        except docker.errors.NotFound:
            pass  # (an unpacked base has no NAME-fs)
    shutil.rmtree(folder / ".pipekit" / "bases", ignore_errors=True)
    client.close()


def run_once(code: Path, folder: Path, mode: str, command: str) -> tuple[float, float, float | None, float]:
    """Wall seconds, peak RSS in MiB, the first ship's MB/s (copy mode, when logged), and the mean
    duration of the stages after the first (s1-s4: what a stage costs once the base is there)."""
    env = {**os.environ, "PYTHONPATH": str(code), "BENCH_COMMAND": command}
    exe = shutil.which("pipekit")
    assert exe is not None, "the pipekit console script is not installed"
    args = [exe, "run", "--workspace", mode, "--image-map", f"busybox={IMAGE}", "--log-format", "json", "-v"]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{code} {mode} in {folder} failed:\n{text[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, _ship_rate(text), _later_stages(text)


def _later_stages(text: str) -> float:
    durations = []
    for line in text.splitlines():
        if '"stage finished"' not in line:
            continue
        event = json.loads(line[line.index("{") :])
        if event.get("stage") != "s0":
            durations.append(float(event["duration_s"]))
    return sum(durations) / max(len(durations), 1)


def _ship_rate(text: str) -> float | None:
    for line in text.splitlines():
        if "base_bytes" not in line:
            continue
        try:
            event = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if event.get("base_s"):
            return float(event["base_bytes"]) / float(event["base_s"]) / 1e6
    return None


def measure(
    rows: list[str], rounds: int, baseline: Path | None, baseline_rounds: int, dump: Path | None = None
) -> dict[tuple[str, str], list]:
    results: dict[tuple[str, str], list] = {}
    codes = {"this": ROOT}
    if baseline is not None:
        codes["baseline"] = baseline
    folders = {row: make_folder(*ROWS[row][:4]) for row in rows}
    run_once(ROOT, folders[rows[0]], "copy", "true")  # warm-up: image, engine
    try:
        for r in range(max(rounds, baseline_rounds)):
            for row in rows:
                for label, code in codes.items():
                    if (label == "baseline" and (r >= baseline_rounds or any(w in row for w in NO_BASELINE))) or (
                        label == "this" and r >= rounds
                    ):
                        continue
                    _round(results, row, label, code, folders[row], r)
            if dump is not None:  # (what is measured so far, should the rest not finish)
                dump.write_text(json.dumps({" | ".join(k): v for k, v in results.items()}))
    finally:
        for folder in folders.values():
            drop_bases(folder)  # (the engine keeps bases across runs: a 10 GiB one takes 10 GiB of its disk)
    print()
    return results


def _round(results: dict[tuple[str, str], list], row: str, label: str, code: Path, folder: Path, r: int) -> None:
    """One round of a row for one checkout: mount; this checkout's copy mode twice, the first with
    no base in the engine (what the first run of a folder pays), the second with the base the first
    left; the baseline's copy mode once (it makes its base at each run)."""
    command = ROWS[row][4]
    runs = ["mount", "copy new", "copy"] if label == "this" else ["mount", "copy"]
    if label == "this" and r and any(w in row for w in ONCE):
        runs.remove("copy new")
    for what in runs:
        if what == "copy new":
            drop_bases(folder)
        results.setdefault((row, f"{label} {what}"), []).append(run_once(code, folder, what.split()[0], command))
        print(".", end="", flush=True)


def table(results: dict[tuple[str, str], list], rows: list[str], rounds: int, baseline_rounds: int) -> str:
    def med(row: str, what: str, i: int = 0) -> float | None:
        values = [v[i] for v in results.get((row, what), []) if v[i] is not None]
        return statistics.median(values) if values else None

    def cell(value: float | None, unit: str = " s", digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}{unit}"

    def extra(row: str, copy: str, mount: str) -> float | None:
        c, m = med(row, copy), med(row, mount)
        return None if c is None or m is None else (c - m) / STAGES

    lines = [
        "| workspace | mount | copy, first run (new base) | first ship | copy, next runs (base kept) |"
        " extra per stage (next runs) | extra per stage after the first | peak RSS (copy, new base / kept) |"
        " baseline copy | baseline extra per stage | baseline first ship | baseline peak RSS (copy) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        later_copy, later_mount = med(row, "this copy", 3), med(row, "this mount", 3)
        later = None if later_copy is None or later_mount is None else later_copy - later_mount
        rss = f"{cell(med(row, 'this copy new', 1), '', 0)} / {cell(med(row, 'this copy', 1), ' MiB', 0)}"
        lines.append(
            f"| {row} | {cell(med(row, 'this mount'))} | {cell(med(row, 'this copy new'))} |"
            f" {cell(med(row, 'this copy new', 2), ' MB/s', 0)} | {cell(med(row, 'this copy'))} |"
            f" **{cell(extra(row, 'this copy', 'this mount'))}** | **{cell(later)}** | {rss} |"
            f" {cell(med(row, 'baseline copy'))} | {cell(extra(row, 'baseline copy', 'baseline mount'))} |"
            f" {cell(med(row, 'baseline copy', 2), ' MB/s', 0)} | {cell(med(row, 'baseline copy', 1), ' MiB', 0)} |"
        )
    lines += [
        "",
        f"A 5-stage chain of `true`, medians of {rounds} interleaved rounds (baseline: {baseline_rounds};"
        " its copy mode was not run on the 2 GiB and 10 GiB rows; the 10 GiB row's first run was made once)."
        " Copy, first run: no base of the folder in the engine (removed before the run): the run makes one."
        " First ship: that base copy, bytes sent over the time to make it (the baseline makes one at every"
        " run). Copy, next runs: the base the previous run left is used again, only what changed travels."
        " Extra per stage = (copy − mount) / 5 (the baseline's includes the removal of its base at the run's"
        " end). Extra per stage after the first = the mean duration of stages s1–s4 in copy mode (next"
        " runs) minus the same in mount mode. Peak RSS: the whole `pipekit run` process.",
    ]
    return "\n".join(lines)


def write(text: str) -> None:
    page = PAGE.read_text()
    if START not in page:
        return
    head, _, rest = page.partition(START)
    _, _, tail = rest.partition(END)
    PAGE.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout of the code to compare with")
    ap.add_argument("--baseline-rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the 20 MB and 200 MB rows only")
    ap.add_argument("--rows", help="only the rows whose name contains one of these (comma-separated)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--dump", type=Path, help="write the measurements so far to this JSON file after each round")
    args = ap.parse_args()
    rows = list(QUICK if args.quick else ROWS)
    if args.rows:
        rows = [r for r in rows if any(w.strip() in r for w in args.rows.split(","))]
    results = measure(rows, args.rounds, args.baseline, args.baseline_rounds if args.baseline else 0, args.dump)
    sys.path.insert(0, str(HERE))
    import run_all

    text = f"Ran on {run_all.machine()}\n\n" + table(results, rows, args.rounds, args.baseline_rounds)
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
