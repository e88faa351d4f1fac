"""Threat model: when the Docker engine dies under a run, pipekit says so, records the truth and
exits 3, with no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

PIPELINE = """
import pipekit as pk

pipeline = pk.Pipeline(name="doomed", image="busybox")


@pipeline.stage
def quick(ctx):
    ctx.sh("echo quick")


@pipeline.stage
def slow(ctx, quick):
    ctx.sh("echo slow-started && sleep 20")


@pipeline.stage
def after(ctx, slow):
    ctx.sh("echo never")
"""


@pytest.fixture
def doomed_engine(busybox_image: str) -> Any:
    """An engine of its own, stopped by the test (the shared test engines stay up)."""
    from remote_engine import RemoteEngine

    engine = RemoteEngine("doomed")
    engine.start()
    engine.load(busybox_image)
    yield engine
    engine.stop()


def test_the_engine_going_away_mid_run_is_reported_and_recorded(
    doomed_engine: Any, busybox_image: str, tmp_path: Path
) -> None:
    """dockerd stopped while a stage runs: that stage fails with "the Docker engine ... went away",
    the run is recorded failed with every stage's real status, and pipekit exits 3."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipekit",
            "run",
            "-f",
            str(tmp_path),
            "--log-format",
            "json",
            "--image-map",
            f"busybox={busybox_image}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=doomed_engine.env(),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "output" and event.get("line") == "slow-started":
            break
    doomed_engine.terminate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out[-2000:] + err
    assert "Traceback" not in err and "Traceback" not in out
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    [failed] = [e for e in events if e["event"] == "stage finished" and e["stage"] == "slow"]
    assert "went away" in failed["error"]
    from pipekit._history import History

    h = History(tmp_path)
    run = h.run(h.resolve("last"))
    statuses = {s.name: s.status for s in h.stages(run.id)}
    h.close()
    assert run.status == "failed"
    assert statuses == {"quick": "succeeded", "slow": "failed", "after": "skipped"}
