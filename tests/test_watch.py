"""`pipekit run --watch` on a pseudo-terminal with the installed console script, against the real
engine: a cycle per change with its line, nothing from .git/, .pipekit/ or the run's own writes,
and Ctrl-C (while waiting, and during a run) ends it with nothing left in the engine."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.helpers import Terminal

PIPELINE = """\
import pipekit as pk

pipeline = pk.Pipeline(name="watched", image={image!r})


@pipeline.stage
def lint(ctx):
    ctx.sh("cat src/app.py")


@pipeline.stage(cache=pk.inputs("build.sh"))
def build(ctx):
    ctx.sh("mkdir -p build && sh build.sh > build/out.txt")  # written into the workspace by the run


@pipeline.stage(needs=[lint])
def unit(ctx):
    ctx.sh("if test -f src/slow; then echo slow-marker; sleep 60; fi")
"""


def _project(folder: Path, image: str) -> Path:
    (folder / "pipeline.py").write_text(PIPELINE.format(image=image))
    (folder / "build.sh").write_text("echo built\n")
    (folder / "src").mkdir()
    (folder / "src" / "app.py").write_text("print('v1')\n")
    (folder / ".git").mkdir()
    return folder


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


def _nothing_left(folder: Path, docker_client: Any) -> list[str]:
    """Every run the loop recorded; asserts the engine holds nothing of any of them."""
    db = sqlite3.connect(folder / ".pipekit" / "pipekit.db")
    run_ids = [row[0] for row in db.execute("SELECT id FROM runs")]
    db.close()
    for run_id in run_ids:
        label = {"label": f"io.pipekit.run={run_id}"}
        assert docker_client.containers.list(all=True, filters=label) == [], run_id
        assert docker_client.networks.list(filters=label) == [], run_id
        assert docker_client.volumes.list(filters=label) == [], run_id
    return run_ids


def test_a_cycle_per_change_and_ctrl_c_while_waiting(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    folder = _project(tmp_path, busybox_image)
    term = Terminal(["run", "--watch", "--progress", "plain"], cwd=folder)
    try:
        first = term.expect("for changes (Ctrl-C to stop)", timeout=120)
        assert "start → lint, build, unit run (succeeded" in _plain(first)
        # (named as "not a change: build, build/out.txt" when its event came before the loop waits)
        # git's and pipekit's folders, and nothing at all for a while: no cycle (the run's own
        # build/out.txt does not start one either, or this would show "changed:")
        (folder / ".git" / "index").write_text("x")
        (folder / ".pipekit" / "notes").write_text("x")
        time.sleep(3)
        term.read(0.5)
        assert "changed:" not in _plain(term.text())
        (folder / "src" / "app.py").write_text("print('v2')\n")
        second = _plain(term.expect("for changes (Ctrl-C to stop)", timeout=120))
        assert "changed: src/app.py → lint, unit run; build cached (succeeded" in second, second
        (folder / "build.sh").write_text("echo built again\n")
        third = _plain(term.expect("for changes (Ctrl-C to stop)", timeout=120))
        assert "changed: build.sh → lint, build, unit run (succeeded" in third, third
        good = (folder / "pipeline.py").read_text()
        (folder / "pipeline.py").write_text(good + "\ndef broken(:\n")  # saved half-typed: said, the loop goes on
        fourth = _plain(term.expect("for changes (Ctrl-C to stop)", timeout=120))
        assert "SyntaxError" in fourth and "changed: pipeline.py → the pipeline has errors (above)" in fourth
        (folder / "pipeline.py").write_text(good)
        fifth = _plain(term.expect("for changes (Ctrl-C to stop)", timeout=120))
        assert "changed: pipeline.py → lint, unit run; build cached (succeeded" in fifth, fifth
        term.send("\x03")  # Ctrl-C while waiting
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 130, term.text()
    assert "stopped watching" in term.text() and "Traceback" not in term.text()
    assert len(_nothing_left(folder, docker_client)) == 4


def test_ctrl_c_during_a_cycle_stops_the_run_and_leaves_nothing(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    folder = _project(tmp_path, busybox_image)
    term = Terminal(["run", "--watch", "--progress", "plain"], cwd=folder)
    try:
        term.expect("for changes (Ctrl-C to stop)", timeout=120)
        (folder / "src" / "slow").write_text("")
        term.expect("slow-marker", timeout=120)  # the second cycle's unit stage is running
        term.send("\x03")
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 130, term.text()
    assert "stopped every running stage and removed its containers" in term.text()
    assert "Traceback" not in term.text()
    assert len(_nothing_left(folder, docker_client)) == 2


def test_watch_refuses_dry_run_resume_and_a_missing_pipeline(tmp_path: Path) -> None:
    from tests.helpers import run_console

    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n@pk.stage\ndef a(ctx):\n    pass\n")
    for flag in ("--dry-run", "--resume"):
        done = run_console(["run", "--watch", flag], cwd=tmp_path)
        assert done.returncode == 2 and f"it does not go with {flag}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / ".pipekit").exists()
    done = run_console(["run", "--watch", "-f", "nowhere"], cwd=tmp_path)
    assert done.returncode == 2 and "No pipeline file at" in done.stderr and "nothing to watch" in done.stderr


def test_sigterm_while_waiting_ends_with_143(tmp_path: Path) -> None:
    import signal
    import subprocess

    from tests.helpers import console_popen

    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n@pk.stage\ndef a(ctx):\n    pass\n")
    proc = console_popen(["run", "--watch"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:  # (the first cycle, then it waits)
        if "for changes (Ctrl-C to stop)" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped watching" in err and "Traceback" not in err, err
