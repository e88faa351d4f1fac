"""What a new user tripped over on a first day: each behaviour here was wrong before (see the changelog)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pipekit as pk

pytestmark = pytest.mark.docker


def _shell_pipeline(image: str | None) -> pk.Pipeline:
    p = pk.Pipeline(name="errexit", image=image)

    @p.stage
    def multi_line(ctx):
        ctx.sh("false\necho still here")

    @p.stage
    def pipe(ctx):
        ctx.sh("false | cat")

    @p.stage
    def opted_out(ctx):
        return ctx.sh("false\necho still here", strict=False).stdout

    return p


def test_a_failing_line_or_pipe_fails_the_stage_in_a_container(run_on_docker: Any) -> None:
    """ctx.sh stops at the first failing line and, where the shell has pipefail (busybox ash,
    bash), fails a pipeline whose first command fails; strict=False runs the command as it is."""
    result, events = run_on_docker(_shell_pipeline("busybox"))
    assert result["multi_line"].status == "failed"
    assert "still here" not in events.lines("multi_line")
    assert result["pipe"].status == "failed"
    assert result["opted_out"].status == "succeeded"
    assert result["opted_out"].output == "still here\n"


def test_a_failing_line_fails_a_host_stage(run_on_docker: Any) -> None:
    """On the host too (Debian's dash has no pipefail: there a pipe's last command decides)."""
    result, _ = run_on_docker(_shell_pipeline(None))
    assert result["multi_line"].status == "failed"
    assert result["opted_out"].output == "still here\n"


def _cli(*argv: str) -> tuple[int, str, str]:
    import io

    from pipekit._cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


HOST_PIPELINE = "import pipekit as pk\n\n\n@pk.stage\ndef hello(ctx):\n    ctx.sh('echo hello')\n"


def test_the_run_history_stays_out_of_git_and_is_private(tmp_path: Path) -> None:
    """.pipekit/ gets a .gitignore holding `*` (as .pytest_cache does) and is readable by its owner only."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pipeline.py").write_text(HOST_PIPELINE)
    assert _cli("run", "-f", str(tmp_path))[0] == 0
    assert (tmp_path / ".pipekit" / ".gitignore").read_text().splitlines()[-1] == "*"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path, capture_output=True, text=True
    ).stdout
    assert status.splitlines() == ["?? pipeline.py"]
    assert (tmp_path / ".pipekit").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "argv", [["runs"], ["show", "last"], ["logs", "last"], ["artifacts", "last"], ["cache", "list"]]
)
def test_read_only_commands_create_nothing_and_say_where_they_looked(argv: list[str], tmp_path: Path) -> None:
    """Where no run was recorded, the history commands exit 2, name the place, and leave no .pipekit/."""
    code, _, err = _cli(*argv, "-f", str(tmp_path))
    assert code == 2
    assert f"pipekit looked for {tmp_path / '.pipekit' / 'pipekit.db'}" in err
    assert not (tmp_path / ".pipekit").exists()


def test_a_stage_in_the_built_image_can_leave_the_checkout_out(
    tmp_path: Path, run_on_docker: Any, busybox_image: str
) -> None:
    """workspace=False runs in the image's own WORKDIR with no checkout mounted (a real smoke test);
    workdir= says where commands start."""
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nWORKDIR /app\nRUN echo from-the-image > marker\n")
    (tmp_path / "marker").write_text("from-the-checkout\n")
    (tmp_path / "sub").mkdir()
    p = pk.Pipeline(name="smoke", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def build(ctx):
        return ctx.docker.build(".")

    @p.stage(image=build)
    def mounted(ctx):
        return ctx.sh("pwd && cat marker").stdout.split()

    @p.stage(image=build, workspace=False)
    def image_only(ctx):
        return ctx.sh("pwd && cat marker && test ! -e /workspace && echo no-workspace").stdout.split()

    @p.stage(image=build, workdir="sub")
    def in_sub(ctx):
        return ctx.sh("pwd").stdout.strip()

    result, _ = run_on_docker(p)
    assert result.status == "succeeded", result.stages
    assert result["mounted"].output == ["/workspace", "from-the-checkout"]
    assert result["image_only"].output == ["/app", "from-the-image", "no-workspace"]
    assert result["in_sub"].output == "/workspace/sub"


def test_workspace_false_needs_an_image(tmp_path: Path) -> None:
    """A host stage always works in the pipeline's folder: workspace=False there is refused before the run."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage(workspace=False)\ndef a(ctx):\n    pass\n"
    )
    code, _, err = _cli("run", "-f", str(tmp_path))
    assert code == 2
    assert "workspace=False but no image" in err


def test_a_standard_dotenv_file_with_a_quoted_multi_line_value_is_read(tmp_path: Path) -> None:
    """Secrets files follow python-dotenv's rules: quotes, export, comments, multi-line values."""
    from pipekit._dsl.secrets import parse_dotenv

    key = "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    (tmp_path / ".env").write_text(
        f"# deploy secrets\nexport TOKEN=plain-value  # a comment\nKEY=\"{key}\"\nSINGLE='$NOT_EXPANDED'\n"
    )
    assert parse_dotenv(tmp_path / ".env") == {"TOKEN": "plain-value", "KEY": key, "SINGLE": "$NOT_EXPANDED"}
    (tmp_path / "bad.env").write_text("GOOD=1\nthis is not an assignment\n")
    with pytest.raises(pk.UsageError, match=r"bad.env:2: expected KEY=VALUE"):
        parse_dotenv(tmp_path / "bad.env")


def test_a_secrets_file_that_is_not_a_small_file_is_refused() -> None:
    """--secrets-file /dev/zero is refused with a message, not a MemoryError."""
    from pipekit._dsl.secrets import parse_dotenv

    with pytest.raises(pk.UsageError, match="is not a regular file"):
        parse_dotenv(Path("/dev/zero"))


def test_changed_understands_brace_patterns_and_refuses_broken_ones() -> None:
    """pk.changed("src/**/*.{py,toml}") matches; a pattern that cannot be read fails at load time."""
    from pipekit._dsl.conditions import RunInfo

    cond = pk.changed("src/**/*.{py,toml}")
    info = RunInfo(workspace=Path("."), branch="main", changed_files=["src/pkg/mod.py", "README.md"])
    assert cond.evaluate(info)
    assert not cond.evaluate(RunInfo(workspace=Path("."), branch="main", changed_files=["docs/x.py"]))
    assert pk.changed("**/*.md").evaluate(info)
    for broken in ("src/{a,b", "src/[abc", "trailing\\"):
        with pytest.raises(pk.PipelineError, match="cannot be read"):
            pk.changed(broken)


PREFLIGHT_PIPELINE = """
import pipekit as pk

pipeline = pk.Pipeline(name="preflight")


@pipeline.stage(image="pipekit-test/no-such-image:never", env={"TOKEN": pk.secret("PREFLIGHT_TOKEN")})
def deploy(ctx):
    ctx.sh("echo deploying")


@pipeline.stage(image="busybox", services=[pk.Service("db", image="pipekit-test/no-such-db:never")])
def integration(ctx):
    ctx.sh("echo testing")


@pipeline.stage(image="pipekit-test/skipped-anyway:never", when=pk.branch("release"))
def release(ctx):
    ctx.sh("echo releasing")
"""


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
def test_missing_secrets_and_images_are_found_before_anything_runs(
    command: list[str], tmp_path: Path, busybox_image: str, monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    """validate, --dry-run and run report every missing secret and image at once, exit 2, start nothing."""
    monkeypatch.delenv("PREFLIGHT_TOKEN", raising=False)
    (tmp_path / "pipeline.py").write_text(PREFLIGHT_PIPELINE)
    argv = [*command, "-f", str(tmp_path), "--image-map", f"busybox={busybox_image}"]
    code, out, err = _cli(*argv, *(["--branch", "main"] if command[0] == "run" else []))
    assert code == 2, out + err
    assert "stage 'deploy' needs the secret 'PREFLIGHT_TOKEN', which is not set" in err
    assert "stage 'deploy' runs in 'pipekit-test/no-such-image:never'" in err
    assert "stage 'integration' runs in 'pipekit-test/no-such-db:never'" in err
    assert "skipped-anyway" not in err  # a stage that will not run is not checked
    assert "3 problem(s)" in err
    assert not docker_client.containers.list(all=True, filters={"label": "io.pipekit.stage=integration"})


def test_no_image_check_plans_without_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-image-check leaves the images alone (air-gapped planning); secrets are still checked."""
    monkeypatch.setenv("PREFLIGHT_TOKEN", "a-token-value")
    (tmp_path / "pipeline.py").write_text(PREFLIGHT_PIPELINE)
    code, out, err = _cli("run", "-f", str(tmp_path), "--dry-run", "--no-image-check")
    assert code == 0, err
    assert "dry run: 2 of 3 stages would run" in out


CONSOLE_PIPELINE = """
import pipekit as pk

pipeline = pk.Pipeline(name="console", image="alpine:3.20")


@pipeline.stage
def a(ctx):
    ctx.sh("echo from-a")


@pipeline.stage
def a_rather_long_stage_name(ctx, a):
    ctx.sh("echo from-the-long-one")
"""


def test_the_console_shows_the_real_image_each_command_and_a_steady_column(
    tmp_path: Path, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image after --image-map, `$ command` before its output, one column width for the run."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    (tmp_path / "pipeline.py").write_text(CONSOLE_PIPELINE)
    code, out, err = _cli("run", "-f", str(tmp_path), "--image-map", f"alpine:3.20={busybox_image}")
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if " | " in line]
    assert f"a                        | > started ({busybox_image})" in lines
    assert lines.index("a                        | $ echo from-a") < lines.index("a                        | from-a")
    assert len({line.index(" | ") for line in lines}) == 1
    assert "\x1b[" not in out  # not a terminal: no colour


@pytest.mark.parametrize(
    ("env", "coloured"),
    [({"FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False), ({}, False)],
)
def test_statuses_are_coloured_only_where_asked(
    env: dict[str, str], coloured: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FORCE_COLOR colours statuses; NO_COLOR wins; a pipe gets none."""
    for name in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "pipeline.py").write_text(HOST_PIPELINE)
    code, out, _ = _cli("run", "-f", str(tmp_path))
    assert code == 0
    assert ("\x1b[32mok\x1b[0m" in out) is coloured


CHATTY_PIPELINE = """
import pipekit as pk


@pk.stage
def chatty(ctx):
    ctx.sh("i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done")


@pk.stage
def after(ctx, chatty):
    ctx.sh("echo still ran")
"""


@pytest.mark.parametrize("reader", ["head -2", "head -c 10"])
def test_output_cut_short_finishes_the_run_and_records_it(reader: str, tmp_path: Path) -> None:
    """`pipekit run | head` and `pipekit logs last | head`: no traceback, the run goes on to its end,
    and the history says what really happened."""
    import subprocess
    import sys

    (tmp_path / "pipeline.py").write_text(CHATTY_PIPELINE)
    script = f'"{sys.executable}" -m pipekit run -f "{tmp_path}" | {reader}; exit ${{PIPESTATUS[0]}}'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    code, out, _ = _cli("show", "last", "-f", str(tmp_path))
    assert code == 0
    assert "succeeded" in out.splitlines()[0]
    assert [line.split()[1] for line in out.splitlines() if line.startswith(("chatty ", "after "))] == [
        "succeeded",
        "succeeded",
    ]
    script = f'"{sys.executable}" -m pipekit logs last -f "{tmp_path}" | {reader}; exit ${{PIPESTATUS[0]}}'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_escape_codes_never_reach_json_or_stored_logs(tmp_path: Path) -> None:
    """A tool's colours are stripped from JSON lines and the stored log."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage\ndef colourful(ctx):\n"
        "    ctx.sh(\"printf '\\\\033[1;31mred\\\\033[0m plain\\\\n'\")\n"
    )
    code, out, err = _cli("run", "-f", str(tmp_path), "--log-format", "json")
    assert code == 0, out + err
    assert "\\u001b" not in out and "\x1b" not in out
    assert '"line": "red plain"' in out
    stored = next((tmp_path / ".pipekit" / "logs").rglob("colourful.log")).read_text()
    assert "red plain" in stored and "\x1b" not in stored
