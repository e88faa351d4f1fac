"""Threat model: a full disk is not a corrupt history: the database is kept, the run finishes with
its true exit code, and the user is told the disk is full."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipekit._cli.main import main


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs to fill up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_keeps_the_history_and_the_true_outcome(small_disk: Path) -> None:
    """With the disk full, the run still succeeds (exit 0), warns that the disk is full, and the
    database is not moved aside: earlier runs are still listed once there is space again."""
    (small_disk / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage\ndef chatty(ctx):\n"
        "    ctx.sh('i=0; while [ $i -lt 2000 ]; do echo line $i of a rather long log; i=$((i+1)); done')\n"
    )
    assert _cli("run", "-f", str(small_disk))[0] == 0
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    code, out, err = _cli("run", "-f", str(small_disk))
    assert code == 0, out + err
    assert "disk is full" in err and "Traceback" not in err
    assert not list((small_disk / ".pipekit").glob("pipekit.db.broken-*"))
    filler.unlink()
    code, out, _ = _cli("runs", "-f", str(small_disk))
    assert code == 0 and "succeeded" in out
