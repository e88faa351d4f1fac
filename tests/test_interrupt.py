"""Interrupting a run (SIGINT, SIGTERM) stops every stage and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import StartedRun

pytestmark = pytest.mark.docker

PIPELINE = """
import pipekit as pk

@pk.stage(image="busybox")
def in_container(ctx):
    ctx.sh("echo started; sleep 45")

@pk.stage
def on_host(ctx):
    ctx.sh("echo started; sleep {marker}")

@pk.stage(image="busybox")
def never(ctx, in_container):
    ctx.sh("echo should not run")
"""


def _host_sleepers(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"sleep {marker}" in line and "sh -c" not in line]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_removes_containers_and_kills_host_commands(
    tmp_path: Path, docker_client: Any, busybox_image: str, sig: signal.Signals, code: int
) -> None:
    """On SIGINT/SIGTERM the run exits 130/143 and no container or host process of it remains."""
    marker = f"{40 + sig}.{os.getpid() % 1000}"
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(marker=marker))
    run = StartedRun(tmp_path, busybox_image)
    started = run.wait_for_lines("started", stages=2, timeout=30)
    assert started == {"in_container", "on_host"}, "the stages did not start"
    assert docker_client.containers.list(filters=run.label()), "no container was running"
    assert _host_sleepers(marker)

    run.proc.send_signal(sig)
    events, err = run.finish(timeout=30)
    assert run.proc.returncode == code, err
    assert "stopped every running stage" in err
    assert "Traceback" not in err
    [summary] = [e for e in events if e["event"] == "run finished"]
    assert summary["status"] == "interrupted"
    assert not any(e.get("stage") == "never" and e["event"] == "stage started" for e in run.events)
    assert not docker_client.containers.list(all=True, filters=run.label())
    assert not _host_sleepers(marker)
