"""Interrupting a run (SIGINT, SIGTERM) stops every stage and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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
    )
    assert proc.stdout is not None
    run_id = None
    started: set[str] = set()
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        event = json.loads(line)
        run_id = event.get("run_id", run_id)
        if event["event"] == "output" and event["line"] == "started":
            started.add(event["stage"])
        if started == {"in_container", "on_host"} or time.monotonic() > deadline:
            break
    assert started == {"in_container", "on_host"}, "the stages did not start"
    label = f"io.pipekit.run={run_id}"
    assert docker_client.containers.list(filters={"label": label}), "no container was running"
    assert _host_sleepers(marker)

    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "stopped every running stage" in err
    assert "Traceback" not in err
    events = [json.loads(line) for line in rest.splitlines()]
    [summary] = [e for e in events if e["event"] == "run finished"]
    assert summary["status"] == "interrupted"
    assert not any(e.get("stage") == "never" and e["event"] == "stage started" for e in events)
    assert not docker_client.containers.list(all=True, filters={"label": label})
    assert not _host_sleepers(marker)
