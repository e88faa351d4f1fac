"""The command line, in-process through pipekit._cli.main (and once through python -m)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipekit._cli import main

PIPELINES = Path(__file__).parent / "pipelines"
HELLO = Path(__file__).parent.parent / "examples" / "hello" / "pipeline.py"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("cycle.py", "CycleError: Stages depend on each other in a cycle: a -> b -> a."),
        ("unknown_dep.py", "UnknownStageError: Stage 'test' depends on 'lnt', which is not defined."),
        ("duplicate.py", "DuplicateStageError: Stage 'build' is defined twice"),
        ("bad_param.py", "StageSignatureError: Stage 'package' takes a parameter 'versoin'"),
        ("syntax_error.py", "PipelineLoadError: Could not import"),
        ("raises_on_import.py", "KeyError: 'missing'"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_invalid_pipelines_exit_2_and_say_why(command: str, fixture: str, expected: str) -> None:
    """validate and run both refuse an invalid pipeline with exit code 2 and the reason."""
    code, out, err = cli(command, "-f", str(PIPELINES / fixture))
    assert code == 2
    assert expected in err
    assert "Traceback" not in err or "pipekit/" not in err
    assert f"{fixture}" in err


def test_validate_lists_every_problem() -> None:
    """validate prints each problem of a pipeline, then a count."""
    code, _, err = cli("validate", "-f", str(PIPELINES / "multi_error.py"))
    assert code == 2
    assert "StageSignatureError" in err and "UnknownStageError" in err
    assert "2 problem(s)" in err


def test_validate_a_good_pipeline() -> None:
    """A valid pipeline validates with exit 0."""
    code, out, _ = cli("validate", "-f", str(HELLO), "--no-image-check")
    assert code == 0
    assert "3 stages, valid" in out


def test_list_shows_stages_images_and_needs() -> None:
    """list prints one row per stage with its image, dependencies and location."""
    code, out, _ = cli("list", "-f", str(HELLO))
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["STAGE", "IMAGE", "NEEDS"]
    assert rows[3][:4] == ["package", "alpine:3.20", "lint,", "version"]


def test_graph_formats() -> None:
    """graph prints text, dot or mermaid with every edge."""
    assert cli("graph", "-f", str(HELLO))[1].splitlines() == ["lint", "version", "package <- lint, version"]
    dot = cli("graph", "-f", str(HELLO), "--format", "dot")[1]
    assert '"lint" -> "package";' in dot and '"version" -> "package";' in dot
    mermaid = cli("graph", "-f", str(HELLO), "--format", "mermaid")[1]
    assert "s0 --> s2" in mermaid and "s1 --> s2" in mermaid


def test_dry_run_prints_the_plan_and_starts_nothing() -> None:
    """--dry-run prints the stages in order, with mapped images, and needs no engine."""
    code, out, _ = cli(
        "run", "-f", str(HELLO), "--dry-run", "--no-image-check", "--image-map", "alpine:3.20=local/bb:1", "package"
    )
    assert code == 0
    assert out.splitlines() == [
        "  1. lint (local/bb:1)",
        "  2. version (local/bb:1)",
        "  3. package (local/bb:1) after lint, version",
        "dry run: 3 of 3 stages would run, nothing started",
    ]


def test_dry_run_json_is_only_json() -> None:
    """With --log-format json every line of the dry run is a JSON event."""
    code, out, _ = cli("run", "-f", str(HELLO), "--dry-run", "--no-image-check", "--log-format", "json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["stage"] for e in events] == ["lint", "version", "package"]
    assert all(e["event"] == "stage planned" and "timestamp" in e and "level" in e for e in events)


def test_unknown_target_stage() -> None:
    """Naming a stage that does not exist exits 2 with a suggestion."""
    code, _, err = cli("run", "-f", str(HELLO), "--dry-run", "pakage")
    assert code == 2
    assert "Did you mean 'package'?" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--jobs", "0", "-f", str(HELLO)], "--jobs must be 1 or more"),
        (["run", "--image-map", "nonsense", "-f", str(HELLO)], "'--image-map': takes IMAGE=LOCAL_IMAGE"),
        (["run", "--log-format", "xml"], "'xml' is not one of 'console', 'json'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "--jbos", "2"], "No such option '--jbos'. (Did you mean one of: '--jobs'"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    """Command-line mistakes exit 2 with a message, not a traceback."""
    code, _, err = cli(*argv)
    assert code == 2
    assert message in err


def test_missing_pipeline_file(tmp_path: Path) -> None:
    """No pipeline.py where one is expected: exit 2 and how to point at one."""
    code, _, err = cli("run", "-f", str(tmp_path))
    assert code == 2
    assert "No pipeline file at" in err and "-f PATH" in err


def test_unreachable_engine_exits_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No engine at DOCKER_HOST: exit 3, the address, and how to start one."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    code, _, err = cli("run", "-f", str(HELLO))
    assert code == 3
    assert f"Cannot reach a Docker engine at unix://{tmp_path}/no-engine.sock" in err
    assert "DOCKER_HOST" in err
    assert "scripts/" not in err  # no script that only pipekit's own repository has
    assert "Traceback" not in err


def test_a_pipeline_of_host_stages_needs_no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only stages that run in containers need an engine: host stages run without one."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage\ndef hello(ctx):\n    ctx.sh('echo hello > out.txt')\n"
    )
    code, out, err = cli("run", "-f", str(tmp_path))
    assert code == 0, out + err
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    assert "Cannot reach" not in err


def test_unknown_flags_name_the_right_program_and_suggest(tmp_path: Path) -> None:
    """A mistyped flag says `pipekit run --help` (not `pipekit pipekit`) and what was meant."""
    code, _, err = cli("run", "--fial-fast")
    assert code == 2
    assert "(see `pipekit run --help`)" in err and "pipekit pipekit" not in err
    assert "'--fail-fast'" in err


def test_help_shows_examples() -> None:
    """`pipekit run --help` carries examples and says where defaults come from."""
    code, out, _ = cli("run", "--help")
    assert code == 0
    assert "Examples:" in out and "pipekit run package" in out and "PIPEKIT_JOBS" in out


def test_options_come_from_the_environment_and_the_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PIPEKIT_* variables and [tool.pipekit] give defaults; the command line wins over both."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pipekit]\nlog-format = "json"\nimage-map = { "alpine:3.20" = "local/alpine" }\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPEKIT_NO_IMAGE_CHECK", "1")
    code, out, _ = cli("run", "-f", str(HELLO), "--dry-run")
    assert code == 0
    planned = [json.loads(line) for line in out.splitlines()]
    assert {e["image"] for e in planned} == {"local/alpine"}
    monkeypatch.setenv("PIPEKIT_LOG_FORMAT", "console")
    assert cli("run", "-f", str(HELLO), "--dry-run")[1].startswith("  1. lint (local/alpine)")
    assert json.loads(
        cli("run", "-f", str(HELLO), "--dry-run", "--no-image-check", "--log-format", "json")[1].splitlines()[0]
    )
    (tmp_path / "pyproject.toml").write_text("[tool.pipekit]\njbos = 2\n")
    code, _, err = cli("run", "-f", str(HELLO), "--dry-run")
    assert code == 2 and "has no setting 'jbos'" in err


def test_every_other_option_reads_a_command_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Options without a variable of their own read PIPEKIT_<COMMAND>_<OPTION>."""
    monkeypatch.setenv("PIPEKIT_RUN_DRY_RUN", "1")
    monkeypatch.setenv("PIPEKIT_NO_IMAGE_CHECK", "1")
    code, out, _ = cli("run", "-f", str(HELLO))
    assert code == 0 and "dry run: 3 of 3 stages would run" in out
    monkeypatch.setenv("PIPEKIT_RUNS_LIMIT", "0")
    code, _, err = cli("runs", "-f", str(tmp_path))
    assert code == 2 and "'-n' / '--limit': 0 is not in the range" in err


def test_shell_completion() -> None:
    """`pipekit completion bash` prints a script; the shell's request completes commands and options."""
    import os

    code, out, _ = cli("completion", "bash")
    assert code == 0 and "_PIPEKIT_COMPLETE" in out and "complete " in out
    env = {**os.environ, "_PIPEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "pipekit ru", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipekit"], env=env, capture_output=True, text=True)
    assert "plain,run" in proc.stdout.splitlines() and "plain,runs" in proc.stdout.splitlines()
    env.update(COMP_WORDS="pipekit run --fail", COMP_CWORD="2")
    proc = subprocess.run([sys.executable, "-m", "pipekit"], env=env, capture_output=True, text=True)
    assert "plain,--fail-fast" in proc.stdout.splitlines()


def test_python_dash_m_and_console_script_agree() -> None:
    """python -m pipekit is the same program as the pipekit script."""
    a = subprocess.run([sys.executable, "-m", "pipekit", "graph", "-f", str(HELLO)], capture_output=True, text=True)
    assert a.returncode == 0
    assert a.stdout.splitlines()[-1] == "package <- lint, version"
    b = subprocess.run([sys.executable, "-m", "pipekit", "--version"], capture_output=True, text=True)
    assert b.stdout.startswith("pipekit ")
