"""Every example in examples/ runs, on the real engine, through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker
EXAMPLES = Path(__file__).parent.parent / "examples"


# Examples that run here with no more than a local image map. The others have tests of their own:
# seed-flow needs a registry with a login (tests/test_images.py).
SIMPLE = ["hello"]
OWN_TESTS = {"seed-flow": "tests/test_images.py"}


def test_every_example_is_tested() -> None:
    """No example is left out of the tests by accident."""
    assert sorted(p.parent.name for p in EXAMPLES.glob("*/pipeline.py")) == sorted([*SIMPLE, *OWN_TESTS])


@pytest.mark.parametrize("example", SIMPLE)
def test_example_runs_green(example: str, busybox_image: str, docker_client: Any, tmp_path: Path) -> None:
    """`pipekit run` on the example succeeds with its images mapped to local ones."""
    folder = EXAMPLES / example
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipekit",
            "run",
            "-f",
            str(folder),
            "--log-format",
            "json",
            "--image-map",
            f"alpine:3.20={busybox_image}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    [summary] = [e for e in events if e["event"] == "run finished"]
    assert summary["status"] == "succeeded"
    assert {s["status"] for s in summary["stages"]} == {"succeeded"}
    assert not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={summary['run_id']}"})


def test_hello_passes_the_version_along(busybox_image: str) -> None:
    """The hello example's package stage receives version's value and writes dist.txt."""
    folder = EXAMPLES / "hello"
    (folder / "dist.txt").unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipekit", "run", "-f", str(folder), "--image-map", f"alpine:3.20={busybox_image}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (folder / "dist.txt").read_text() == "packaging 1.2.3\n"
        assert "package      | > started" in proc.stdout
        assert "STAGE    STATUS     DURATION" in proc.stdout
    finally:
        (folder / "dist.txt").unlink(missing_ok=True)
