"""20 container stages (4 chains of 5, busybox, at most 4 at once): pipekit, the hand-written floor
and the tools people would pick instead, in interleaved rounds.

Workloads: A, each stage runs `true`; B, each runs `sleep 1`. Every tool runs as its own process,
so its wall time, peak RSS (of the main process) and, for the floor and pipekit, the time from
process start to the first container created and from the last container removed to process exit
(from the engine's events) are its own.

    python benchmarks/bench_peers.py [--rounds 5] [--workloads A,B] [--tools floor,pipekit,bash,make,luigi]
    python benchmarks/bench_peers.py --install-luigi   # Luigi in benchmarks/.peers (its own virtualenv)
    python benchmarks/bench_peers.py --ref /tmp/base   # also `pipekit-ref`: pipekit from another checkout
                                                       # (git worktree add /tmp/base COMMIT), interleaved

Prints a Markdown table; `benchmarks/run_all.py` puts it in docs/performance.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

IMAGE = "pipekit-local/busybox:latest"
CHAINS, LENGTH, JOBS = 4, 5, 4
WORKLOADS = {"A": "true", "B": "sleep 1"}
PEERS_VENV = Path(__file__).resolve().parent / ".peers"
REF: list[str] = []  # a checkout of pipekit to compare with (``--ref``): ``pipekit-ref`` runs it


def dag() -> dict[str, list[str]]:
    return {f"c{c}_{i}": [] if i == 0 else [f"c{c}_{i - 1}"] for c in range(CHAINS) for i in range(LENGTH)}


FLOOR = """
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
import docker

image, command, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
deps = {deps!r}
client = docker.from_env()
waiting = {{n: set(d) for n, d in deps.items()}}
with ThreadPoolExecutor(jobs) as pool:
    running = {{}}
    ready = [n for n, d in waiting.items() if not d]
    while ready or running:
        while ready and len(running) < jobs:
            n = ready.pop(0)
            running[pool.submit(client.containers.run, image, ["sh", "-c", command], remove=True)] = n
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            f.result()
            finished = running.pop(f)
            for n, d in waiting.items():
                if finished in d:
                    d.discard(finished)
                    if not d:
                        ready.append(n)
"""

PIPELINE = """
import pipekit as pk

p = pk.Pipeline(name="peers", image={image!r})
for name, needs in {deps!r}.items():
    p.stage(name=name, needs=needs)(lambda ctx: ctx.sh({command!r}))
"""

LUIGI = """
import os, subprocess, sys, tempfile
import luigi

image, command = sys.argv[1], sys.argv[2]
DEPS = {deps!r}
MARKS = tempfile.mkdtemp()  # workers are processes: a task is complete when its mark exists

class Stage(luigi.Task):
    name = luigi.Parameter()

    def requires(self):
        return [Stage(name=d) for d in DEPS[self.name]]

    def complete(self):
        return os.path.exists(os.path.join(MARKS, self.name))

    def run(self):
        subprocess.run(["docker", "run", "--rm", image, "sh", "-c", command], check=True, stdout=subprocess.DEVNULL)
        open(os.path.join(MARKS, self.name), "w").close()

ok = luigi.build([Stage(name=n) for n in DEPS], workers={jobs}, local_scheduler=True, log_level="ERROR")
sys.exit(0 if ok else 1)
"""


def pipekit_argv(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pipekit", "run", "-f", str(folder), "-j", str(JOBS)]


def write_tools(folder: Path, command: str) -> dict[str, list[str]]:
    """Each tool's command line for a workload (the files it needs written into ``folder``)."""
    deps = dag()
    (folder / "floor.py").write_text(FLOOR.format(deps=deps))
    (folder / "pipeline.py").write_text(PIPELINE.format(image=IMAGE, deps=deps, command=command))
    chains = "\n".join(
        "(" + "; ".join(f"docker run --rm {IMAGE} sh -c '{command}'" for _ in range(LENGTH)) + ") &"
        for _ in range(CHAINS)
    )
    (folder / "chains.sh").write_text(f"set -e\n{chains}\nwait\n")
    rules = [f"all: {' '.join(deps)}"]
    for name, needs in deps.items():
        rules.append(f"{name}: {' '.join(needs)}\n\tdocker run --rm {IMAGE} sh -c '{command}' >/dev/null")
    (folder / "Makefile").write_text(".PHONY: all " + " ".join(deps) + "\n" + "\n".join(rules) + "\n")
    (folder / "luigi_dag.py").write_text(LUIGI.format(deps=deps, jobs=JOBS))
    tools = {
        "floor": [sys.executable, str(folder / "floor.py"), IMAGE, command, str(JOBS)],
        "pipekit": [*pipekit_argv(folder), "--log-format", "json"],
        "pipekit-plain": [*pipekit_argv(folder), "--log-format", "console", "--progress", "plain"],
        "pipekit-live": [*pipekit_argv(folder), "--log-format", "console", "--progress", "live"],
        "bash": ["bash", str(folder / "chains.sh")],
        "make": ["make", "-s", "-j", str(JOBS), "-f", str(folder / "Makefile"), "all"],
    }
    if REF:
        tools["pipekit-ref"] = ["env", f"PYTHONPATH={REF[0]}", *tools["pipekit"]]
    luigi_python = PEERS_VENV / "bin" / "python"
    if luigi_python.exists():
        tools["luigi"] = [str(luigi_python), str(folder / "luigi_dag.py"), IMAGE, command]
    return tools


class EngineEvents:
    """Container create and destroy times, from the engine's event stream."""

    def __init__(self) -> None:
        import docker

        self._client = docker.from_env()
        self.creates: list[float] = []
        self.destroys: list[float] = []
        self._stream: Any = self._client.events(decode=True, filters={"type": "container"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                when = event.get("timeNano", 0) / 1e9
                if event.get("Action") == "create":
                    self.creates.append(when)
                elif event.get("Action") == "destroy":
                    self.destroys.append(when)
        except Exception:
            return

    def window(self, start: float, end: float) -> tuple[float | None, float | None]:
        time.sleep(0.3)  # events arrive a little after the fact
        creates = [t for t in self.creates if start <= t <= end]
        destroys = [t for t in self.destroys if start <= t <= end]
        first = min(creates) - start if creates else None
        last = end - max(destroys) if destroys else None
        return first, last

    def close(self) -> None:
        self._stream.close()
        self._client.close()


def measure(argv: list[str], cwd: Path, events: EngineEvents) -> dict[str, float | None]:
    start = time.time()
    t0 = time.perf_counter()
    with open(cwd / "stderr.txt", "w") as err:
        status = subprocess.run(peak_rss_argv(cwd, argv), cwd=cwd, stdout=subprocess.DEVNULL, stderr=err).returncode
    wall = time.perf_counter() - t0
    end = time.time()
    if status != 0:
        raise SystemExit(f"{argv[0]} {argv[1]} failed:\n{(cwd / 'stderr.txt').read_text()[-2000:]}")
    first, last = events.window(start, end)
    return {"wall": wall, "rss": peak_rss(cwd), "first_create": first, "exit_after_last_remove": last}


def peak_rss_argv(cwd: Path, argv: list[str]) -> list[str]:
    """``argv`` under GNU time, which reports the peak RSS of the process (and of the children it
    waited for). Not measured from this process: a child forked from a Python process counts the
    parent's pages until it execs."""
    return ["/usr/bin/time", "-f", "%M", "-o", str(cwd / "rss.txt"), *argv]


def peak_rss(cwd: Path) -> float:
    """MiB, from the last :func:`peak_rss_argv` run in ``cwd``."""
    return int((cwd / "rss.txt").read_text().split()[-1]) / 1024


def _med(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def compile_pipekit() -> None:
    """Write pipekit's bytecode, as ``pip install`` does: a checkout run with PYTHONDONTWRITEBYTECODE
    (set on these machines) would otherwise compile every module in every process, about 0.1 s."""
    import pipekit

    for folder in [Path(pipekit.__file__).parent, *(Path(ref) / "pipekit" for ref in REF)]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True)


def compare(rounds: int, workloads: list[str], tools: list[str]) -> str:
    compile_pipekit()
    events = EngineEvents()
    lines = []
    try:
        for workload in workloads:
            with tempfile.TemporaryDirectory() as d:
                folder = Path(d)
                argvs = write_tools(folder, WORKLOADS[workload])
                chosen = [t for t in tools if t in argvs]
                measure(argvs["floor"], folder, events)  # warm-up
                results: dict[str, list[dict[str, float | None]]] = {t: [] for t in chosen}
                for r in range(rounds):
                    order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]  # rotated each round
                    for tool in order:
                        results[tool].append(measure(argvs[tool], folder, events))
                shutil.rmtree(folder / ".pipekit", ignore_errors=True)
            lines += _table(workload, results, rounds)
    finally:
        events.close()
    return "\n".join(lines)


def _table(workload: str, results: dict[str, list[dict[str, float | None]]], rounds: int) -> list[str]:
    floor = [r["wall"] for r in results["floor"]]
    out = [
        f"\nWorkload {workload} (`{WORKLOADS[workload]}` in each of {CHAINS * LENGTH} stages, {CHAINS} chains of"
        f" {LENGTH}, {JOBS} at once), {rounds} interleaved rounds:\n",
        "| tool | wall median (min–max) | / floor (median of per-round ratios) | peak RSS"
        " | start → first create | last remove → exit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tool, rows in results.items():
        walls = [r["wall"] for r in rows]
        ratios = [w / f for w, f in zip(walls, floor, strict=True)]
        first, last = _med([r["first_create"] for r in rows]), _med([r["exit_after_last_remove"] for r in rows])
        out.append(
            f"| {tool} | {_med(walls):.2f} s ({min(walls):.2f}–{max(walls):.2f}) | {statistics.median(ratios):.2f} |"
            f" {max(r['rss'] for r in rows):.0f} MiB |"  # type: ignore[type-var]
            f" {'-' if first is None or not tool.startswith(('floor', 'pipekit')) else f'{first:.2f} s'} |"
            f" {'-' if last is None or not tool.startswith(('floor', 'pipekit')) else f'{last:.2f} s'} |"
        )
    return out


def install_luigi() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_VENV / "bin" / "pip"), "install", "-q", "luigi"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workloads", default="A,B")
    ap.add_argument("--tools", default="floor,pipekit,bash,make,luigi")
    ap.add_argument("--install-luigi", action="store_true")
    ap.add_argument("--ref", help="a checkout of pipekit to run alongside as `pipekit-ref`")
    args = ap.parse_args()
    if args.ref:
        REF.append(str(Path(args.ref).resolve()))
        args.tools += ",pipekit-ref"
    if args.install_luigi:
        install_luigi()
        return 0
    print(compare(args.rounds, args.workloads.split(","), args.tools.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
