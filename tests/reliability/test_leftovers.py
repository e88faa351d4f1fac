"""Threat model: nothing is left behind, even by a run whose process died or whose engine was down
when it ended."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipekit._cli.main import main

pytestmark = pytest.mark.docker


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftover(docker_client: Any, image: str, run_id: str, pid: int) -> Any:
    """A container as a pipekit run makes it, owned by the process ``pid``."""
    labels = {
        "io.pipekit.managed": "true",
        "io.pipekit.run": run_id,
        "io.pipekit.stage": "s",
        "io.pipekit.owner": f"{socket.gethostname()}:{pid}",
    }
    return docker_client.containers.create(image, ["sleep", "300"], labels=labels)


def _exists(docker_client: Any, container: Any) -> bool:
    """Whether the engine still has ``container``. Never ``containers.list()`` of the whole engine:
    it inspects each container it lists, and another test's may be gone by then (404)."""
    return bool(docker_client.api.containers(all=True, filters={"id": container.id}))


def test_cleanup_removes_what_lost_runs_left_and_spares_live_ones(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """`pipekit cleanup --all` removes leftovers of runs whose process is gone; a live run's are
    kept, and `pipekit cleanup RUN` refuses to touch it."""
    live = _leftover(docker_client, busybox_image, "liverun00001", os.getpid())
    made = [live]
    try:
        code, _, err = _cli("cleanup", "liverun00001", "-f", str(tmp_path))
        assert code == 2 and "still running" in err
        # every run sweeps what lost runs left: one on this engine at the same time (the other test
        # worker's, another user's) may take the lost container first; then once more, three at most
        for attempt in range(1, 4):
            lost = _leftover(docker_client, busybox_image, f"lostrun0000{attempt}", _dead_pid())
            made.append(lost)
            code, out, _ = _cli("cleanup", "--all")
            assert code == 0 and "liverun00001" not in out
            assert not _exists(docker_client, lost) and _exists(docker_client, live)
            if f"lostrun0000{attempt}" in out:
                break
        else:
            raise AssertionError(f"`pipekit cleanup --all` never named the lost run it removed:\n{out}")
    finally:
        for c in made:
            try:
                c.remove(force=True)
            except Exception:
                pass


def test_the_next_run_removes_what_a_lost_run_left(docker_client: Any, busybox_image: str, tmp_path: Path) -> None:
    """A run that starts containers first sweeps away what runs whose process is gone left."""
    lost = _leftover(docker_client, busybox_image, "lostrun00009", _dead_pid())
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage(image='busybox')\ndef a(ctx):\n    pass\n"
    )
    try:
        code, out, err = _cli("run", "-f", str(tmp_path), "--image-map", f"busybox={busybox_image}")
        assert code == 0, out + err
        assert not _exists(docker_client, lost)
    finally:
        try:
            lost.remove(force=True)
        except Exception:
            pass
