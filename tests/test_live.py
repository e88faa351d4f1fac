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

from helpers import Terminal

from pipekit._console.live import LiveRenderer
from pipekit._run.runner import run_setup
from pipekit._run.session import RunRequest, setup


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots"
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
    assert lines[0].endswith("build 2.0s compiling 999") and lines[0][0] in SPINNER
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
    flat = " ".join(shown.split())
    assert "✔ build 1.25s succeeded" in flat
    assert "○ lint skipped (condition false)" in flat
    assert "✘ test 2.00s failed" in flat
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
    result = run_setup(
        setup(RunRequest(pipeline=tmp_path / "pipeline.py", backend=docker_backend, progress="live", log_file=out))
    )
    assert result.status == "succeeded"
    shown = _plain(out.getvalue())
    assert "✔ hello" in shown and " succeeded" in shown
    assert shown.rstrip().splitlines()[-1] == f"run {result.run_id} succeeded in {result.duration_s:.2f}s: 1 succeeded"
    assert "STAGE" not in shown  # the finished line is on screen: no table repeats it


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


def test_every_kind_of_line_has_the_same_columns() -> None:
    """Running, waiting and finished lines put the stage and the time in the same columns."""
    view, out, clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=4, run_id="r1")
    _event(view, event="stage started", stage="build")
    _event(view, event="stage started", stage="lint")
    clock.now += 12.5
    _event(view, event="stage finished", stage="lint", status="succeeded", duration_s=12.5)
    finished = _plain(out.getvalue()).splitlines()[-1]
    running, waiting = _frame(view).splitlines()[:2]
    time_end = finished.index("12.50s") + len("12.50s")
    assert running.index("12.5s") + len("12.5s") == time_end, (finished, running)
    assert running.index("build") == finished.index("lint") == waiting.index("test") == 2
    assert waiting.index("waits for") == time_end + 1 == finished.index("succeeded")


def test_a_slot_is_only_awaited_when_every_slot_is_taken() -> None:
    """A stage whose needs are done says it waits for a free slot only when the run's jobs are all busy."""
    view, _out, _clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=1, run_id="r1")
    _event(view, event="stage started", stage="build")
    assert "· lint ready, waits for a free slot" in [" ".join(line.split()) for line in _frame(view).splitlines()]
    view, _out, _clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=4, run_id="r1")
    _event(view, event="stage started", stage="build")
    frame = _frame(view)
    assert "free slot" not in frame
    assert "· lint starting" in [" ".join(line.split()) for line in frame.splitlines()]


def test_buildkit_bookkeeping_and_blank_lines_are_never_a_stage_last_line() -> None:
    """`#10 sha256:...`, `#10 DONE 0.1s` and blank lines leave the last meaningful line shown."""
    view, _out, _clock = _view()
    _event(view, event="run started", stages=["build", "lint", "test", "deploy"], pipeline="app", jobs=4, run_id="r1")
    _event(view, event="stage started", stage="build")
    view.batch_lines("build", "stderr", ["#10 [2/3] RUN make", "#10 sha256:" + "ab" * 32, ""])
    _event(view, event="output", stage="build", line="#10 DONE 0.4s", stream="stderr")
    first = _frame(view).splitlines()[0]
    assert first.rstrip().endswith("#10 [2/3] RUN make") and "sha256" not in first


def _terminal_lines(term: Terminal) -> list[str]:
    """The lines the terminal showed (each redraw of the live area gives its lines again), escape
    codes removed."""
    return [line for line in re.split(r"[\r\n]+", ANSI.sub("", term.text())) if line.strip()]


def test_the_live_view_on_a_real_terminal(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    """`pipekit run` on a terminal: aligned columns, no BuildKit digest as a last line, a free slot
    awaited only with -j 1, and one line of counts at the end instead of a table."""
    token = os.urandom(6).hex()  # a step no earlier build cached
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo {token} && sleep 2\n")
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef build_the_image(ctx):\n"
        "    ctx.docker.build('.', tag='pipekit-test/live-view:dev')\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef lint(ctx):\n    ctx.sh('echo linting; sleep 1')\n\n"
        f"@pk.stage(image={busybox_image!r}, needs=[lint])\ndef test(ctx):\n    ctx.sh('echo testing')\n"
    )
    outside = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL")}
    term = Terminal(["run", "-j", "1", "--no-cache"], cwd=tmp_path, env=outside)
    try:
        assert term.wait(timeout=180) == 0, term.text()
        lines = _terminal_lines(term)
    finally:
        term.close()
        docker_client.images.remove("pipekit-test/live-view:dev", force=True)
    text = "\n".join(lines)
    assert not any("sha256:" in line for line in lines), text
    spinning = [line for line in lines if line[0] in SPINNER]
    assert len({line[0] for line in spinning}) > 1, text  # the spinner turns
    # the build's latest line shows (`RUN echo TOKEN`, or its output `#5 0.186 TOKEN` when BuildKit
    # prints both within one frame of the spinner)
    assert any(line[2:].startswith("build_the_image") and token in line for line in spinning), text
    assert any(line.startswith("· lint") and "ready, waits for a free slot" in line for line in lines), text
    finished = next(line for line in lines if line.startswith("✔ build_the_image"))
    running = next(line for line in spinning if line[2:].startswith("build_the_image") and re.search(r"\d\.\ds ", line))
    waiting = next(line for line in lines if line.startswith("· test"))
    end = re.search(r"\d+\.\d+s", finished).end()  # type: ignore[union-attr]
    assert re.search(r"\d+\.\ds", running).end() == end  # type: ignore[union-attr]
    assert waiting.index("waits for lint") == end + 1 == finished.index("succeeded")
    # the last line (then, on a project's first run without cache=, the one hint about it)
    assert lines[-1].startswith("pipekit: hint: no stage has cache="), text
    assert re.fullmatch(r"run \w+ succeeded in \d+\.\d\ds: 3 succeeded", lines[-2].strip()), text
    assert not any(line.startswith("STAGE") for line in lines), text
