"""One stage printing a lot: pipekit against an SDK exec whose lines are split in Python and discarded.

    python benchmarks/bench_logs.py [--mb 50] [--rounds 3] [--formats console,json]

A run of 5 MB is measured too: pipekit's peak RSS must be the same (within 10 MiB) for it and for
the large one.

Each measurement is a separate process (so its peak RSS is its own): the floor creates a busybox
container, execs the command, splits the output into lines and drops them, and removes the
container; pipekit runs the same command as a one-stage pipeline (`python -m pipekit run`, output
to /dev/null, history recording on). Workloads: many 100-byte lines (`--mb` MB), and one line of
10 MB with no newline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_peers import peak_rss, peak_rss_argv

IMAGE = "pipekit-local/busybox:latest"
LINE = "pipekit log line 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ..."


def lines_command(mb: float) -> str:
    return f"yes '{LINE}' | head -c {int(mb * 1_000_000)}"


def long_line_command(mb: float) -> str:
    return f"head -c {int(mb * 1_000_000)} /dev/zero | tr '\\0' x"


FLOOR = """
import sys, docker
from docker.utils.socket import frames_iter
client = docker.from_env()
c = client.containers.create(sys.argv[1], ["sleep", "3600"])
c.start()
try:
    api = client.api
    ex = api.exec_create(c.id, ["sh", "-c", sys.argv[2]])["Id"]
    sock = api.exec_start(ex, socket=True)
    pending = bytearray()
    for _stream, data in frames_iter(sock, tty=False):
        pending += data
        if b"\\n" in data:
            *lines, rest = pending.split(b"\\n")
            pending = bytearray(rest)
            for line in lines:
                line.decode("utf-8", "replace")
    assert api.exec_inspect(ex)["ExitCode"] == 0
finally:
    c.remove(force=True)
"""

PIPELINE = """
import pipekit as pk

@pk.stage(image={image!r})
def talk(ctx):
    ctx.sh({command!r}, strict=False)
"""


def measure(argv: list[str], cwd: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.run(peak_rss_argv(Path(cwd), argv), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr.decode()}")
    return elapsed, peak_rss(Path(cwd))


def table(mb: float, rounds: int, formats: list[str], workloads: list[str], small_mb: float = 5) -> str:
    """Markdown: each workload, floor and pipekit per format, interleaved rounds; and peak RSS for
    a small and a large output (the memory must not grow with the output)."""
    commands = {"lines": lines_command(mb), "long-line": long_line_command(10), "small": lines_command(small_mb)}
    out = [
        "| output | who | wall median (min–max) | speed / floor | peak RSS |",
        "| --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as d:
        floor = Path(d) / "floor.py"
        floor.write_text(FLOOR)
        for name in [*workloads, "small"]:
            command = commands[name]
            Path(d, "pipeline.py").write_text(PIPELINE.format(image=IMAGE, command=command))
            rows: dict[str, list[tuple[float, float]]] = {}
            for _ in range(rounds):
                rows.setdefault("floor", []).append(measure([sys.executable, str(floor), IMAGE, command], d))
                for fmt in formats:
                    view = ["--log-format", "console", "--progress", "live"] if fmt == "live" else ["--log-format", fmt]
                    argv = [sys.executable, "-m", "pipekit", "run", *view]
                    rows.setdefault(f"pipekit, {fmt}", []).append(measure(argv, d))
            base = statistics.median(t for t, _ in rows["floor"])
            what = {"lines": f"{mb:g} MB of lines", "long-line": "one 10 MB line", "small": f"{small_mb:g} MB of lines"}
            for who, got in rows.items():
                times = [t for t, _ in got]
                med = statistics.median(times)
                out.append(
                    f"| {what[name]} | {who} | {med:.2f} s ({min(times):.2f}–{max(times):.2f}) | {base / med:.2f} |"
                    f" {max(r for _, r in got):.0f} MiB |"
                )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--formats", default="console,json")
    ap.add_argument("--workloads", default="lines,long-line")
    args = ap.parse_args()
    print(table(args.mb, args.rounds, args.formats.split(","), args.workloads.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
