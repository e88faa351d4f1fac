"""Threat model: pipekit never hangs on someone else's behalf: a registry that stops answering and a
thread pipeline.py forgets are both bounded."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk


@pytest.mark.docker
def test_a_registry_that_never_answers_fails_the_stage_in_bounded_time(
    docker_backend: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A pull from a registry that accepts connections and then says nothing fails after the
    no-progress timeout, naming the registry."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept, never answer
            except OSError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("PIPEKIT_REGISTRY_TIMEOUT", "3")
    p = pk.Pipeline(name="stall", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def pull(ctx):
        ctx.docker.pull(f"{address}/stalled:1")

    try:
        start = time.monotonic()
        result = pk.run(p, backend=docker_backend, log_file=io.StringIO())
        took = time.monotonic() - start
    finally:
        stop.set()
        holder.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()
    assert result["pull"].status == "failed"
    assert f"Could not pull from {address}: no progress for 3s" in (result["pull"].error or "")
    assert took < 60


def test_a_thread_left_by_pipeline_py_does_not_delay_the_exit(tmp_path: Path) -> None:
    """A non-daemon thread started at import does not keep pipekit running after the run."""
    (tmp_path / "pipeline.py").write_text(
        "import threading, time\nimport pipekit as pk\n\nthreading.Thread(target=time.sleep, args=(40,)).start()\n\n\n"
        "@pk.stage\ndef a(ctx):\n    ctx.sh('echo done')\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 20
