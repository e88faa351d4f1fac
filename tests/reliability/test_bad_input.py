"""Threat model: bad input gets a clear message and the right exit code, never a traceback or a
wrong answer."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

import pipekit as pk
from pipekit._cli.main import main


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_a_huge_stage_name_is_caught_by_validate(tmp_path: Path) -> None:
    """A 10,000-character stage name is a validation error (exit 2), not `File name too long` mid-run."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage(name='x' * 10000)\ndef a(ctx):\n    ctx.sh('true')\n"
    )
    for command in ("validate", "run"):
        code, _, err = _cli(command, "-f", str(tmp_path))
        assert code == 2
        assert "10000 characters long" in err and "Traceback" not in err


def test_an_empty_image_is_refused() -> None:
    """image="" is a mistake, not a request to run on the host."""
    with pytest.raises(pk.PipelineError, match="image= is empty"):

        @pk.stage(image="")
        def a(ctx):
            pass


def test_an_absurd_number_of_runs_is_a_usage_error(tmp_path: Path) -> None:
    """`runs -n 99999999999999999999` exits 2 with a message, not OverflowError."""
    code, _, err = _cli("runs", "-n", "99999999999999999999", "-f", str(tmp_path))
    assert code == 2
    assert "Traceback" not in err and "-n" in err


def test_changed_base_is_never_taken_as_a_git_option(tmp_path: Path) -> None:
    """--changed-base=--output=/tmp/x is refused; git never sees it as an option."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage(when=pk.changed('src/**'))\ndef a(ctx):\n    pass\n"
    )
    planted = tmp_path / "planted.txt"
    code, _, err = _cli("run", "-f", str(tmp_path), "--dry-run", f"--changed-base=--output={planted}")
    assert code == 2
    assert "--changed-base takes a git ref" in err
    assert not planted.exists()
    code, _, err = _cli("run", "-f", str(tmp_path), "--dry-run", "--changed-base", "no-such-ref")
    assert code == 2 and "is not a commit" in err


def test_a_secrets_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    """`--secrets-file /dev/zero` exits 2 with a message, not a MemoryError."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n\n@pk.stage\ndef a(ctx):\n    pass\n")
    code, _, err = _cli("run", "-f", str(tmp_path), "--secrets-file", "/dev/zero")
    assert code == 2
    assert "is not a regular file" in err
