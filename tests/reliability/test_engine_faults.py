"""Threat model: when the Docker engine dies under a run, pipekit says so, records the truth and
exits 3, with no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import StartedRun

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
    run = StartedRun(tmp_path, busybox_image, env=doomed_engine.env())
    assert run.wait_for_lines("slow-started") == {"slow"}
    doomed_engine.terminate()
    _rest, err = run.finish(timeout=120)
    out = "\n".join(json.dumps(e) for e in run.events)
    assert run.proc.returncode == 3, out[-2000:] + err
    assert "Traceback" not in err and "Traceback" not in out
    [failed] = [e for e in run.events if e["event"] == "stage finished" and e["stage"] == "slow"]
    assert "went away" in failed["error"]
    from pipekit._history.store import History

    h = History(tmp_path)
    recorded = h.run(h.resolve("last"))
    statuses = {s.name: s.status for s in h.stages(recorded.id)}
    h.close()
    assert recorded.status == "failed"
    assert statuses == {"quick": "succeeded", "slow": "failed", "after": "skipped"}
