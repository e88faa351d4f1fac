"""The stage cache shared through a registry (issue 26), against a local Distribution registry
(Debian's ``docker-registry``, started here on 127.0.0.1).

1. A registry hit that restores a stage with 50 MB of declared output files: fetch the entry,
   check every blob's digest, write the files into a fresh workspace. Floor: one plain HTTP GET of
   the same 50 MB blob (requests, no checks, nothing written). Target: at most 1.5 s.
2. A lookup that misses: one manifest request per stage (a client without the run's listing); the
   whole plan's 20 misses looked up together (as ``pipekit plan`` does); and 20 misses as a run
   makes them, after the tag list it reads when it starts (the listing's time included). Target:
   at most 0.05 s per stage.
3. A warm second machine: a 20-stage chain whose stages all hit in the registry (the machine ran
   the project before, other inputs), against the same pipeline's local all-hit re-run, both
   ``pk.run`` in this process; a fresh checkout (no ``.pipekit/``) too. Target: at most 2x. Then the
   same two runs as users make them, each the ``pipekit run`` console script in its own process.

Each measurement alternates with its baseline, several rounds, and the medians are compared.

    python benchmarks/bench_regcache.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pipekit as pk
from pipekit._history.remote import Entry, RegistryCache, pack_files, restore_files
from pipekit._run.sharedcache import PlanRemote

CHAIN = 20


def start_registry(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        sys.exit("docker-registry is not installed (apt-get install docker-registry)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    (folder / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(folder / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            return proc, address
        except urllib.error.HTTPError:
            return proc, address
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the registry did not start")


def bench_restore(address: str, work: Path, rounds: int) -> tuple[float, float]:
    import requests

    src = work / "src50"
    (src / "dist").mkdir(parents=True)
    for i in range(5):
        (src / "dist" / f"part{i}.bin").write_bytes(os.urandom(10 << 20))
    files, names = pack_files(src, ["dist/**"])
    cache = RegistryCache(f"{address}/bench/restore", "readwrite")
    key = "ab" * 32
    cache.push(
        Entry(key=key, pipeline="bench", stage="big", run_id="r1", output_json='"ok"', files=files, file_names=names)
    )
    found = cache.client.manifest(f"pk1-{key}")
    assert found is not None
    import json

    layer = json.loads(found[1])["layers"][0]["digest"]
    hits, floors = [], []
    session = requests.Session()
    for r in range(rounds):
        dest = work / f"dest{r}"
        dest.mkdir()
        start = time.perf_counter()
        entry = cache.fetch(key, "big")
        assert entry is not None and entry.files is not None
        restore_files(dest, entry.files, ["dist/**"])
        hits.append(time.perf_counter() - start)
        assert (dest / "dist" / "part4.bin").stat().st_size == 10 << 20
        start = time.perf_counter()
        assert len(session.get(f"http://{address}/v2/bench/restore/blobs/{layer}").content) == len(files or b"")
        floors.append(time.perf_counter() - start)
        shutil.rmtree(dest)
    cache.close()
    return statistics.median(hits), statistics.median(floors)


def bench_misses(address: str, rounds: int) -> tuple[float, float, float]:
    seed = RegistryCache(f"{address}/bench/miss", "readwrite")  # the repository exists, with one entry
    seed.push(Entry(key="f" * 64, pipeline="bench", stage="s", run_id="r0", output_json='"x"'))
    seed.close()
    cache = RegistryCache(f"{address}/bench/miss", "read")
    singles, plans, listed = [], [], []
    for r in range(rounds):
        start = time.perf_counter()
        run_cache = RegistryCache(f"{address}/bench/miss", "read")
        run_cache.prepare("bench")
        for i in range(CHAIN):
            assert run_cache.fetch(f"{r:02d}{i:02d}" + "2" * 60, "s") is None
        listed.append((time.perf_counter() - start) / CHAIN)
        run_cache.close()
        start = time.perf_counter()
        for i in range(CHAIN):
            assert cache.fetch(f"{r:02d}{i:02d}" + "0" * 60, "s") is None
        singles.append((time.perf_counter() - start) / CHAIN)
        remote = PlanRemote(cache)
        for i in range(CHAIN):
            remote.want(f"{r:02d}{i:02d}" + "1" * 60, f"s{i}")
        start = time.perf_counter()
        remote.ask()
        plans.append((time.perf_counter() - start) / CHAIN)
        assert not remote.hits and remote.problem is None
    cache.close()
    return statistics.median(singles), statistics.median(plans), statistics.median(listed)


def _stage(i: int) -> str:
    needs = "" if i == 0 else f", needs=['s{i - 1}']"
    return (
        f"@pk.stage(cache=pk.inputs(env=['BENCH_STATE'], outputs=['out/s{i}.txt']){needs})\n"
        f"def s{i}(ctx):\n"
        "    import pathlib\n"
        "    (pathlib.Path(ctx.workspace) / 'out').mkdir(exist_ok=True)\n"
        f"    (pathlib.Path(ctx.workspace) / 'out/s{i}.txt').write_text('stage {i}')\n"
        f"    return {{'stage': {i}}}\n"
    )


PIPELINE = "import pipekit as pk\n\n" + "\n".join(_stage(i) for i in range(CHAIN))


def checkout(root: Path, name: str) -> Path:
    folder = root / name / "chain"
    folder.mkdir(parents=True)
    (folder / "pipeline.py").write_text(PIPELINE)
    return folder


def timed_run(folder: Path, **options: object) -> tuple[float, pk.RunResult]:
    start = time.perf_counter()
    result = pk.run(str(folder / "pipeline.py"), record=True, log_format="json", log_file=io.StringIO(), **options)
    return time.perf_counter() - start, result


def console_run(folder: Path, *more: str) -> float:
    """``pipekit run`` as a user runs it: the console script, in its own process; its wall time."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    script = Path(sys.executable).parent / "pipekit"
    command = [str(script) if script.is_file() else "pipekit", "run", "-f", str(folder), "--log-format", "json"]
    start = time.perf_counter()
    proc = subprocess.run([*command, *more], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    assert proc.returncode == 0 and proc.stdout.count('"status": "cached"') >= CHAIN, proc.stdout + proc.stderr
    return took


def bench_console(address: str, work: Path, rounds: int) -> tuple[float, float]:
    """(warm second machine, local all-hit re-run), each a ``pipekit run`` process of its own."""
    target = f"{address}/bench/chain"
    first = work / "first" / "chain"
    warm, local = [], []
    for r in range(rounds):
        local.append(console_run(first))
        second = checkout(work, f"cli{r}")
        os.environ["BENCH_STATE"] = "older"
        timed_run(second)
        os.environ["BENCH_STATE"] = "current"
        warm.append(console_run(second, "--cache-registry", target))
    return statistics.median(warm), statistics.median(local)


def bench_second_machine(address: str, work: Path, rounds: int) -> tuple[float, float, float]:
    """(warm second machine, fresh checkout, local all-hit re-run). Warm: the machine has run the
    project before (its .pipekit/ exists, from a run of other inputs), but none of these stages' results."""
    target = f"{address}/bench/chain"
    os.environ["BENCH_STATE"] = "current"
    first = checkout(work, "first")
    _, result = timed_run(first, cache_registry=target, cache_mode="readwrite")
    assert result.status == "succeeded", result.stages
    local, warm, fresh_times = [], [], []
    for r in range(rounds):
        took, result = timed_run(first)
        assert all(s.status == "cached" for s in result.stages.values()), result.stages
        local.append(took)
        second = checkout(work, f"warm{r}")
        os.environ["BENCH_STATE"] = "older"  # an earlier run there, of other inputs: other keys
        timed_run(second)
        os.environ["BENCH_STATE"] = "current"
        took, result = timed_run(second, cache_registry=target)
        assert all(s.status == "cached" for s in result.stages.values()), result.stages
        warm.append(took)
        fresh = checkout(work, f"fresh{r}")
        took, result = timed_run(fresh, cache_registry=target)
        assert all(s.status == "cached" for s in result.stages.values()), result.stages
        assert (fresh / "out" / f"s{CHAIN - 1}.txt").read_text() == f"stage {CHAIN - 1}"
        fresh_times.append(took)
    return statistics.median(warm), statistics.median(fresh_times), statistics.median(local)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pipekit-bench-regcache-") as tmp:
        root = Path(tmp)
        (root / "registry").mkdir()
        proc, address = start_registry(root / "registry")
        try:
            hit, floor = bench_restore(address, root, args.rounds)
            single, plan, listed = bench_misses(address, args.rounds)
            second, fresh, local = bench_second_machine(address, root, args.rounds)
            cli_second, cli_local = bench_console(address, root, max(3, args.rounds // 2))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    ok = [hit <= 1.5, single <= 0.05 and plan <= 0.05 and listed <= 0.05, second <= 2 * local]
    print(
        f"registry hit restoring 50 MB: {hit:.3f} s (floor, one plain GET of the blob: {floor:.3f} s; target <= 1.5 s)"
    )
    print(f"lookup miss: {single * 1000:.1f} ms per stage one by one, {plan * 1000:.1f} ms per stage in the plan's")
    print(f"  parallel round of {CHAIN}, {listed * 1000:.2f} ms per stage in a run (its tag list read once, counted)")
    print("  (target <= 50 ms)")
    print(f"warm second machine, {CHAIN} stages all registry hits: {second:.3f} s; local all-hit re-run: {local:.3f} s")
    print(f"  ratio {second / local:.2f} (target <= 2); a fresh checkout (no .pipekit/ yet): {fresh:.3f} s")
    print(f"  as pipekit run processes: {cli_second:.3f} s vs {cli_local:.3f} s, ratio {cli_second / cli_local:.2f}")
    print("targets: " + ("all met" if all(ok) else "NOT all met"))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
