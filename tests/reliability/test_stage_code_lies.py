"""Threat model: stage code and pipeline files cannot make pipekit lie about a run's outcome.

A CI system runs code it did not write; whatever that code does, the run's status and exit code
must say what really happened.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import pipekit as pk
from pipekit._cli.main import main
from pipekit.testing import PipelineRunner


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_sys_exit_in_a_stage_fails_that_stage_and_only_it(tmp_path: Path) -> None:
    """sys.exit(0) in stage code is a stage failure; the run goes on and exits 1, not 0."""
    (tmp_path / "pipeline.py").write_text(
        "import sys\nimport pipekit as pk\n\n\n@pk.stage\ndef quits(ctx):\n    sys.exit(0)\n\n\n"
        "@pk.stage\ndef works(ctx):\n    ctx.sh('echo fine')\n"
    )
    code, out, err = _cli("run", "-f", str(tmp_path))
    assert code == 1, out + err
    assert "called sys.exit(0)" in out
    code, out, _ = _cli("show", "last", "-f", str(tmp_path))
    assert "run " in out and ": failed" in out.splitlines()[0]
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(("quits", "works"))}
    assert rows == {"quits": "failed", "works": "succeeded"}


def test_keyboard_interrupt_raised_by_stage_code_is_a_stage_failure(tmp_path: Path) -> None:
    """`raise KeyboardInterrupt` in a stage is not the user's Ctrl-C: exit 1, not 130."""
    p = pk.Pipeline(name="kbd")

    @p.stage
    def rude(ctx):
        raise KeyboardInterrupt

    result = PipelineRunner(base_dir=tmp_path).run(p)
    assert result.exit_code == 1
    assert result.stages["rude"].status == "failed"
    assert "KeyboardInterrupt" in (result.stages["rude"].error or "")


@pytest.mark.parametrize("how", ["import sys\nsys.exit(0)", "import os\nos._exit(0)"])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_exiting_while_the_pipeline_imports_is_a_load_error(how: str, command: str, tmp_path: Path) -> None:
    """sys.exit(0) or os._exit(0) at import is a load error (exit 2), never a silent success."""
    (tmp_path / "pipeline.py").write_text(f"import pipekit as pk\n{how}\n")
    code, _, err = _cli(command, "-f", str(tmp_path))
    assert code == 2
    assert "while being imported" in err


def test_an_exception_whose_message_raises_still_gives_a_clear_error(tmp_path: Path) -> None:
    """An exception whose __str__ raises fails the stage with a message, not a pipekit traceback."""
    p = pk.Pipeline(name="weird")

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message for you")

    @p.stage
    def odd(ctx):
        raise Weird()

    result = PipelineRunner(base_dir=tmp_path).run(p)
    assert result.stages["odd"].status == "failed"
    assert "Weird" in (result.stages["odd"].error or "")
