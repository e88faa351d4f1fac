"""Style is checked like behaviour: ruff (settings in pyproject.toml) finds nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ruff_check() -> None:
    """ruff check passes on the package, tests, benchmarks and examples."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pipekit", "tests", "benchmarks", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
