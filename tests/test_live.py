"""The live view: rendered to a recorded terminal of a fixed size."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipekit._live import LiveRenderer
from pipekit._session import RunRequest, setup


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def _frame(view: LiveRenderer) -> str:
    """The live area as a terminal 80 columns wide shows it."""
    from rich.console import Console

    screen = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    screen.print(view.render())
    return screen.export_text()


def _view() -> tuple[LiveRenderer, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    needs = {"build": [], "lint": [], "test": ["build", "lint"], "deploy": ["test"]}
    view = LiveRenderer(out, needs, width=80, refresh_per_second=1000, clock=clock)
    view._start = lambda: None  # type: ignore[method-assign]  # frames are drawn by the test
    return view, out, clock


def _event(view: LiveRenderer, **ed: Any) -> None:
    view(None, "info", ed)


def test_running_stages_show_a_spinner_their_time_and_last_line_and_waiting_ones_what_they_wait_for() -> None:
    view, _out, clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=4, run_id="r1")
    _event(view, event="stage started", stage="build")
    clock.now += 1.5
    _event(view, event="stage started", stage="lint")
    view.batch_lines("build", "stdout", [f"compiling {i}" for i in range(1000)])  # one sample kept, not 1000 lines
    clock.now += 0.5
    lines = [" ".join(line.split()) for line in _frame(view).splitlines()]
    assert lines[0].endswith("build 2.0s compiling 999") and lines[0][0] in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    assert lines[1].endswith("lint 0.5s")
    assert lines[2] == "· test waits for build, lint"
    assert lines[3] == "· deploy waits for test"


def test_finished_stages_collapse_to_one_line_and_a_failure_keeps_its_last_lines() -> None:
    view, out, clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=4, run_id="r1")
    _event(view, event="stage started", stage="build")
    _event(view, event="stage finished", stage="build", status="succeeded", duration_s=1.25)
    _event(view, event="stage finished", stage="lint", status="skipped", reason="condition false")
    _event(view, event="stage started", stage="test")
    view.batch_lines("test", "stdout", ["collected 3 items", "FAILED test_x", "1 failed"])
    _event(
        view,
        event="stage finished",
        stage="test",
        status="failed",
        duration_s=2.0,
        error="Command `pytest` exited with code 1",
    )
    shown = _plain(out.getvalue())
    assert "✔ build  succeeded  1.25s" in shown
    assert "○ lint  skipped  (condition false)" in shown
    assert "✘ test  failed  2.00s" in shown
    assert "Command `pytest` exited with code 1" in shown
    assert "│ FAILED test_x" in shown and "│ 1 failed" in shown
    frame = _frame(view)
    assert "build" not in frame and "test" not in frame.replace("waits for test", "")
    assert "deploy" in frame


def test_a_run_with_the_live_view_ends_with_the_summary(
    tmp_path: Path, busybox_image: str, docker_backend: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef hello(ctx):\n    ctx.sh('echo hi')\n"
    )
    out = io.StringIO()
    result = setup(
        RunRequest(pipeline=tmp_path / "pipeline.py", backend=docker_backend, progress="live", log_file=out)
    ).execute()
    assert result.status == "succeeded"
    shown = _plain(out.getvalue())
    assert "✔ hello  succeeded" in shown
    assert shown.rstrip().splitlines()[-1].startswith(f"run {result.run_id} succeeded")


def test_ctrl_c_with_the_live_view_exits_130_and_leaves_nothing(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef wait(ctx):\n"
        "    ctx.sh('echo ready-marker; sleep 60')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path), "--progress", "live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + 60
    while b"ready-marker" not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stdout.fileno(), 65536)
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    run_id = (seen + out).split(b", run ")[1].split(b")")[0].decode()
    left = docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})
    assert left == []
