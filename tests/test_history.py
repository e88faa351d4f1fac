"""Run history, resume, caching, artifacts and test reports, recorded under .pipekit/."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import StartedRun

from pipekit._cli.main import main
from pipekit._history.store import History

pytestmark = pytest.mark.docker


def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return code, out.getvalue(), err.getvalue()


def runs_of(folder: Path) -> list[Any]:
    h = History(folder)
    try:
        return h.runs(100)
    finally:
        h.close()


RECORDED = """
import pipekit as pk

@pk.stage(image="busybox", env={"TOKEN": pk.secret("API_TOKEN")})
def build(ctx):
    ctx.sh('echo "token is $TOKEN"')
    return {"version": "1.0", "files": ["a", "b"]}

@pk.stage(retries=1)
def check(ctx, build):
    ctx.sh("echo checking " + build["version"] + "; exit 3")
"""


def test_a_run_is_recorded(tmp_path: Path, busybox_image: str) -> None:
    """Run, pipeline, branch, commit, masked command line, status, and per stage status, attempts, exit code."""
    (tmp_path / "pipeline.py").write_text(RECORDED)
    (tmp_path / "secrets.env").write_text("API_TOKEN=tok-123-secret\n")
    code, out, _ = cli(
        "run",
        "-f",
        str(tmp_path),
        "--branch",
        "feature/a",
        "--secrets-file",
        str(tmp_path / "secrets.env"),
        "--image-map",
        f"busybox={busybox_image}",
    )
    assert code == 1
    [run] = runs_of(tmp_path)
    assert (run.pipeline, run.branch, run.status) == (tmp_path.name, "feature/a", "failed")
    assert run.argv.startswith("pipekit run -f ") and run.ended is not None and run.pid == os.getpid()
    h = History(tmp_path)
    stages = {s.name: s for s in h.stages(run.id)}
    assert (stages["build"].status, stages["build"].attempts, stages["build"].output_stored) == ("succeeded", 1, True)
    assert json.loads(stages["build"].output) == {"version": "1.0", "files": ["a", "b"]}
    assert (stages["check"].status, stages["check"].attempts, stages["check"].exit_code) == ("failed", 2, 3)
    assert "Command exited with code 3" in stages["check"].error
    log = h.log_path(run.id, "build").read_text()
    assert "token is ***" in log and "tok-123-secret" not in log
    h.close()
    everything = b"".join(p.read_bytes() for p in (tmp_path / ".pipekit").rglob("*") if p.is_file())
    assert b"tok-123-secret" not in everything

    code, shown, _ = cli("show", "last", "-f", str(tmp_path))
    assert code == 0 and f"run {run.id}: failed" in shown
    [row] = [line.split() for line in shown.splitlines() if line.startswith("check ")]
    assert (row[1], row[2], row[4]) == ("failed", "2", "3")
    code, logs, _ = cli("logs", run.id[:5], "build", "-f", str(tmp_path))
    assert code == 0 and "token is ***" in logs


def test_run_references(tmp_path: Path) -> None:
    """RUN is an id, a unique prefix, or last; an unknown one says how to list runs."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n@pk.stage\ndef a(ctx):\n    pass\n")
    for _ in range(2):
        assert cli("run", "-f", str(tmp_path))[0] == 0
    ids = [r.id for r in runs_of(tmp_path)]
    h = History(tmp_path)
    assert h.resolve("last") == ids[0]
    assert h.resolve(ids[1][:8]) == ids[1]
    h.close()
    code, _, err = cli("show", "zzzz", "-f", str(tmp_path))
    assert code == 2 and "No run matches 'zzzz'" in err and "pipekit runs" in err


def test_concurrent_runs_both_record(tmp_path: Path) -> None:
    """Runs started at the same moment in a new workspace are all recorded in full."""
    stages = "\n".join(f"@pk.stage\ndef s{i}(ctx):\n    ctx.sh('true')\n" for i in range(8))
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n" + stages)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path), "-j", "4"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    runs = runs_of(tmp_path)
    assert len(runs) == 3 and {r.status for r in runs} == {"succeeded"}
    h = History(tmp_path)
    for r in runs:
        assert [s.status for s in h.stages(r.id)] == ["succeeded"] * 8
    h.close()


def test_sigkilled_run_is_shown_interrupted_and_cleaned_up(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    """After kill -9, the next command marks the run interrupted and removes its containers."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n@pk.stage(image='busybox')\ndef slow(ctx):\n    ctx.sh('echo started; sleep 60')\n"
    )
    run = StartedRun(tmp_path, busybox_image)
    run.wait_for_lines("started")
    label = run.label()
    assert docker_client.containers.list(filters=label)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish(timeout=10)
    assert [r.status for r in runs_of(tmp_path)] == ["running"]
    code, out, _ = cli("runs", "-f", str(tmp_path))
    assert code == 0 and "interrupted" in out
    assert not docker_client.containers.list(all=True, filters=label)
    h = History(tmp_path)
    assert [s.status for s in h.stages(str(run.run_id))] == ["interrupted"]
    h.close()


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_corrupt_or_missing_database(tmp_path: Path, damage: str) -> None:
    """A database that cannot be read is moved aside with a clear message; a missing one is made anew."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n@pk.stage\ndef a(ctx):\n    pass\n")
    assert cli("run", "-f", str(tmp_path))[0] == 0
    db = tmp_path / ".pipekit" / "pipekit.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(b"this is not a database, but it is long enough to look like a file header" * 20)
    else:
        db.unlink()
    code, out, err = cli("runs", "-f", str(tmp_path))
    if damage == "garbage":
        assert code == 0 and "no runs recorded yet" in out
    else:
        assert code == 2 and "There is no run history" in err
    if damage == "garbage":
        assert "could not be read" in err and "was moved to pipekit.db.broken-" in err
        assert list((tmp_path / ".pipekit").glob("pipekit.db.broken-*"))
    assert cli("run", "-f", str(tmp_path))[0] == 0
    assert len(runs_of(tmp_path)) == 1
    sqlite3.connect(db).execute("SELECT * FROM runs").fetchall()


RESUMABLE = """
import pipekit as pk
from pathlib import Path

@pk.stage
def prepare(ctx):
    count = ctx.workspace / "prepare-runs.txt"
    count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
    return {"artifact": "v1"}

@pk.stage
def unstorable(ctx):
    return object()

@pk.stage
def flaky(ctx, prepare, unstorable):
    if not (ctx.workspace / "fixed").exists():
        ctx.sh("echo broken; exit 1")
    return prepare["artifact"] + "-ok"

@pk.stage
def publish(ctx, flaky):
    (ctx.workspace / "published.txt").write_text(flaky)
"""


def test_resume_runs_only_what_failed_or_did_not_run(tmp_path: Path) -> None:
    """--resume restores succeeded stages' outputs and runs the rest; unstorable outputs are reported."""
    (tmp_path / "pipeline.py").write_text(RESUMABLE)
    code, out, _ = cli("run", "-f", str(tmp_path), "-j", "1")
    assert code == 1
    assert "output not stored" in out and "Stage 'unstorable' returned a object, which pipekit cannot store" in out
    (tmp_path / "fixed").touch()
    code, out, _ = cli("run", "-f", str(tmp_path), "--resume", "-j", "1")
    assert code == 0, out
    assert (tmp_path / "prepare-runs.txt").read_text() == "1"
    assert (tmp_path / "published.txt").read_text() == "v1-ok"
    first, second = reversed(runs_of(tmp_path))
    h = History(tmp_path)
    statuses = {s.name: (s.status, s.reason) for s in h.stages(second.id)}
    h.close()
    assert second.resumed_from == first.id
    assert statuses["prepare"] == ("restored", f"restored from run {first.id}")
    assert statuses["unstorable"][0] == "succeeded"  # its output was not stored, so it ran again
    assert statuses["flaky"][0] == "succeeded" and statuses["publish"][0] == "succeeded"


CACHED = """
import pipekit as pk

@pk.stage(image="busybox", cache=pk.inputs("requirements.txt", env=["PY"]), cache_dirs=["/root/.cache/pip"])
def deps(ctx):
    with (ctx.workspace / "ran.txt").open("a") as f:
        f.write("x")
    seen = ctx.sh("cat /root/.cache/pip/marker 2>/dev/null || echo none").stdout.strip()
    ctx.sh("echo kept > /root/.cache/pip/marker")
    return {"seen": seen}

@pk.stage
def use(ctx, deps):
    return deps["seen"]
"""


def test_stage_cache_and_cache_dirs(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    """Same inputs: the stage is not run and its output is restored; changed inputs or --no-cache run it."""
    (tmp_path / "pipeline.py").write_text(CACHED)
    (tmp_path / "requirements.txt").write_text("attrs\n")
    args = ["run", "-f", str(tmp_path), "--log-format", "json", "--image-map", f"busybox={busybox_image}"]

    def run(*extra: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        code, out, err = cli(*args, *extra, env=env)
        assert code == 0, out + err
        return {e["stage"]: e for e in map(json.loads, out.splitlines()) if e["event"] == "stage finished"}

    assert run()["deps"]["status"] == "succeeded"
    second = run()
    assert second["deps"]["status"] == "cached" and second["deps"]["reason"].startswith("cache hit: result of run ")
    assert (tmp_path / "ran.txt").read_text() == "x"
    (tmp_path / "requirements.txt").write_text("attrs\nstructlog\n")
    third = run()
    assert third["deps"]["status"] == "succeeded"
    assert run(env={"PY": "3.12"})["deps"]["status"] == "succeeded"
    assert run("--no-cache")["deps"]["status"] == "succeeded"
    assert (tmp_path / "ran.txt").read_text() == "xxxx"
    h = History(tmp_path)
    last = h.runs(1)[0]
    [use_row] = [s for s in h.stages(last.id) if s.name == "use"]
    h.close()
    assert json.loads(use_row.output) == "kept"  # the cache volume kept /root/.cache/pip between runs

    code, listing, _ = cli("cache", "list", "-f", str(tmp_path))
    assert code == 0 and "cached stage results" in listing and "pipekit-cache-" in listing
    code, pruned, _ = cli("cache", "prune", "-f", str(tmp_path))
    assert code == 0 and "removed 1 cache volumes" in pruned
    assert not [v for v in docker_client.volumes.list() if v.name.startswith(f"pipekit-cache-{tmp_path.name[:20]}")]
    assert run()["deps"]["status"] == "succeeded"  # nothing cached any more
    cli("cache", "prune", "--volumes", "-f", str(tmp_path))


ARTIFACTS = """
import pipekit as pk

@pk.stage(image="busybox")
def build(ctx):
    ctx.sh("mkdir -p dist /out && echo wheel > dist/app-1.0.whl && echo no > dist/x.tmp")
    ctx.sh("echo log > /out/build.log && echo e > /out/exact.txt")
    return ctx.archive("dist/*.whl", "/out/*.log", "/out/exact.txt")

JUNIT = '''<?xml version="1.0"?>
<testsuite name="t" tests="3" failures="1">
  <testcase classname="test_app" name="test_ok"/>
  <testcase classname="test_app" name="test_broken"><failure message="assert 1 == 2">trace</failure></testcase>
  <testcase classname="test_app" name="test_skip"><skipped/></testcase>
</testsuite>'''

@pk.stage
def tests(ctx):
    (ctx.workspace / "reports").mkdir(exist_ok=True)
    (ctx.workspace / "reports" / "junit.xml").write_text(JUNIT)
    ctx.sh("exit 0")  # a test command whose exit code was swallowed
    ctx.junit("reports/*.xml")

@pk.stage
def tolerant(ctx, tests=None):
    return ctx.junit("reports/*.xml", fail_on_failure=False).summary()
"""


def test_artifacts_and_junit_reports(tmp_path: Path, busybox_image: str) -> None:
    """ctx.archive keeps files content-addressed; ctx.junit records counts and fails on failed tests."""
    (tmp_path / "pipeline.py").write_text(ARTIFACTS)
    code, out, _ = cli("run", "-f", str(tmp_path), "-j", "1", "--image-map", f"busybox={busybox_image}")
    assert code == 1
    assert "1 of 3 tests failed in stage 'tests': test_app.test_broken" in out
    assert "3 tests: 1 passed, 1 failed, 0 errors, 1 skipped" in out
    code, shown, _ = cli("show", "last", "-f", str(tmp_path))
    assert "build: dist/app-1.0.whl (6 bytes" in shown and "build: /out/build.log (4 bytes" in shown
    assert "tests in tests: 3 tests, 1 passed, 1 failed, 0 errors, 1 skipped" in shown
    assert "failure: test_app.test_broken: assert 1 == 2" in shown
    dest = tmp_path / "fetched"
    code, listed, _ = cli("artifacts", "last", "--dest", str(dest), "-f", str(tmp_path))
    assert code == 0
    assert (dest / "dist" / "app-1.0.whl").read_text() == "wheel\n"
    assert (dest / "out" / "build.log").read_text() == "log\n"
    assert (dest / "out" / "exact.txt").read_text() == "e\n"
    assert not (dest / "dist" / "x.tmp").exists()
    blobs = list((tmp_path / ".pipekit" / "artifacts").iterdir())
    assert len(blobs) == 3


def test_logs_follow_waits_for_the_end(tmp_path: Path) -> None:
    """logs --follow prints lines as the stage writes them, and returns when the run ends."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n@pk.stage\ndef talk(ctx):\n    ctx.sh('echo one; sleep 1.5; echo two')\n"
    )
    run = subprocess.Popen([sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not runs_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    follow = subprocess.run(
        [sys.executable, "-m", "pipekit", "logs", "last", "talk", "--follow", "-f", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    run.wait(timeout=30)
    assert "one" in follow.stdout.splitlines() and "two" in follow.stdout.splitlines()


def test_an_output_holding_a_secret_is_not_stored(tmp_path: Path) -> None:
    """A stage that returns a secret's value runs fine, but its output never reaches the record."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n@pk.stage\ndef leak(ctx):\n    return {'token': ctx.secret('API_TOKEN')}\n"
    )
    code, out, _ = cli("run", "-f", str(tmp_path), env={"API_TOKEN": "very-secret-token-42"})
    assert code == 0
    assert "returned a value that contains a secret" in out
    everything = b"".join(p.read_bytes() for p in (tmp_path / ".pipekit").rglob("*") if p.is_file())
    assert b"very-secret-token-42" not in everything
