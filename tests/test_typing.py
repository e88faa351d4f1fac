"""The package type-checks: typing is part of the API (py.typed ships)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_mypy_strict_on_the_package() -> None:
    """mypy --strict (settings in setup.cfg) finds nothing in pipekit/."""
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_py_typed_ships() -> None:
    """The package marks itself as typed."""
    assert (ROOT / "pipekit" / "py.typed").is_file()
