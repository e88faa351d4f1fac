"""The command line, in-process through pipekit._cli.main.main, and as users run it: the installed
`pipekit` console script in a process of its own, against the real engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from helpers import run_console

from pipekit._cli.main import main

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


# -- the pipekit console script, as a user runs it ---------------------------------------------------

#: variables of the developer's or the CI's environment that would change what the command does
_OUTSIDE = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL")


def pipekit(*argv: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> CompletedProcess[str]:
    """The installed `pipekit` console script in a process of its own (importing this checkout),
    without the PIPEKIT_* and CI variables of the environment the tests run in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPEKIT_") and k not in _OUTSIDE}
    return run_console(list(argv), cwd=cwd, env={**base, **(env or {})}, timeout=timeout)


SHARED_PIPELINE = """\
import pipekit as pk

WHO = pk.param("who", default="nobody")


@pk.stage(image="busybox", env={"TOKEN": pk.secret("SHARED_TOKEN")})
def build(ctx):
    ctx.sh("echo building")


@pk.stage(image="busybox", needs=[build], when=pk.branch("main"))
def deploy(ctx):
    ctx.sh("echo deploying")
"""


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["plan"], ["validate"]])
def test_shared_options_read_the_same_environment_variables_in_run_plan_and_validate(
    command: list[str], tmp_path: Path, busybox_image: str
) -> None:
    """PIPEKIT_IMAGE_MAP, PIPEKIT_SECRETS_FILE, PIPEKIT_PARAM (and PIPEKIT_BRANCH where the command
    takes a branch) mean the same to `run`, `plan` and `validate`."""
    (tmp_path / "pipeline.py").write_text(SHARED_PIPELINE)
    (tmp_path / "ci.env").write_text("SHARED_TOKEN=from-the-secrets-file\n")
    env = {"PIPEKIT_IMAGE_MAP": f"busybox={busybox_image}", "PIPEKIT_SECRETS_FILE": "ci.env", "PIPEKIT_BRANCH": "main"}
    done = pipekit(*command, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr  # the image was mapped, the secret found
    if command[0] != "validate":
        assert f"deploy ({busybox_image})" in done.stdout, done.stdout  # mapped, and not skipped: the branch is main
        assert "skipped" not in done.stdout, done.stdout
    missing = pipekit(*command, cwd=tmp_path, env={**env, "PIPEKIT_SECRETS_FILE": "nope.env"})
    assert missing.returncode == 2 and "The secrets file nope.env does not exist" in missing.stderr
    wrong = pipekit(*command, cwd=tmp_path, env={**env, "PIPEKIT_PARAM": "whom=x"})
    assert wrong.returncode == 2 and "--param whom: no such parameter" in wrong.stderr, wrong.stderr
    if command[0] != "plan":  # (plan does not check images)
        unmapped = pipekit(*command, cwd=tmp_path, env={**env, "PIPEKIT_IMAGE_MAP": "alpine:3.20=busybox"})
        assert unmapped.returncode == 2 and "runs in 'busybox'" in unmapped.stderr, unmapped.stderr
        assert "--image-map alpine:3.20=busybox matches nothing" in unmapped.stderr


def test_a_missing_default_secrets_file_lets_the_environment_serve(tmp_path: Path, busybox_image: str) -> None:
    """[tool.pipekit] secrets-file that does not exist (a CI with its secrets in the environment):
    the run goes on, saying so once; the same file named on the command line is an error."""
    (tmp_path / "pyproject.toml").write_text('[tool.pipekit]\nsecrets-file = ".env.ci"\n')
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r}, env={{'TOKEN': pk.secret('DEPLOY_TOKEN')}})\n"
        "def build(ctx):\n    ctx.sh('echo token has ${#TOKEN} characters')\n"
    )
    done = pipekit("run", "--progress", "plain", cwd=tmp_path, env={"DEPLOY_TOKEN": "s3cret-value"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "token has 12 characters" in done.stdout
    note = "secrets file .env.ci does not exist; secrets come from the environment"
    assert done.stderr.count(note) == 1, done.stderr
    for how in (["--secrets-file", ".env.ci"], []):
        env = {"DEPLOY_TOKEN": "s3cret-value", **({} if how else {"PIPEKIT_SECRETS_FILE": ".env.ci"})}
        named = pipekit("run", *how, cwd=tmp_path, env=env)
        assert named.returncode == 2, named.stdout + named.stderr
        assert "The secrets file .env.ci does not exist" in named.stderr and "Traceback" not in named.stderr


def test_module_level_credentials_are_checked_before_the_first_container(tmp_path: Path, busybox_image: str) -> None:
    """Secrets a stage reaches through a module-level pk.Credentials (and a literal ctx.secret) are
    missing: the run stops before anything starts, naming every one of them."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "REGISTRY = pk.Credentials(pk.secret('REG_USER'), pk.secret('REG_PASSWORD'), registry='127.0.0.1:1')\n\n\n"
        "def push_with_login(ctx, image):\n"
        "    return ctx.docker.push(image, '127.0.0.1:1/app:1', credentials=REGISTRY)\n\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef build(ctx):\n    ctx.sh('touch built-marker; sleep 1')\n\n\n"
        f"@pk.stage(image={busybox_image!r}, needs=[build])\ndef push(ctx):\n"
        "    ctx.log.info('webhook', token=ctx.secret('WEBHOOK_TOKEN'))\n    push_with_login(ctx, 'app')\n"
    )
    done = pipekit("run", cwd=tmp_path, env={"REG_USER": "ci-user"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs the secret 'REG_PASSWORD', which is not set (used for the registry login REGISTRY" in done.stderr
    assert "needs the secret 'WEBHOOK_TOKEN', which is not set (used in its code" in done.stderr
    assert "REG_USER'" not in done.stderr  # it is set
    assert "2 problem(s) found before the run; nothing was started" in done.stderr
    assert not (tmp_path / "built-marker").exists()  # no container ran


def test_a_command_that_is_not_found_says_so_without_pipekit_machinery(tmp_path: Path, busybox_image: str) -> None:
    """`sh: 3: eval: pyinstaller: not found` becomes `command not found: pyinstaller`, in the log
    and in the error, and a multi-line message keeps its stage prefix on every line."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef package(ctx):\n"
        "    ctx.log.warning('first line\\nsecond line')\n    ctx.sh('echo packing\\npyinstaller --onefile app.py')\n"
    )
    done = pipekit("run", "--progress", "plain", cwd=tmp_path)
    assert done.returncode == 1
    assert "package      | command not found: pyinstaller" in done.stdout
    assert "package      |     command not found: pyinstaller" in done.stdout  # the error's last lines
    assert "eval" not in done.stdout + done.stderr
    assert "package      | [warning] first line\npackage      |   second line\n" in done.stdout
    logs = pipekit("logs", "last", "package", cwd=tmp_path)
    assert "[warning] first line\n  second line\n" in logs.stdout and "command not found: pyinstaller" in logs.stdout


def test_stages_skipped_after_a_failure_are_printed_in_the_plan_order(tmp_path: Path, busybox_image: str) -> None:
    """Twelve stages that need one that fails are reported skipped in the order of the plan."""
    names = [f"step_{c}" for c in "qwertyuiopas"]
    stages = "".join(
        f"@pk.stage(image={busybox_image!r}, needs=[root])\ndef {name}(ctx):\n    pass\n\n\n" for name in names
    )
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef root(ctx):\n    ctx.sh('exit 3')\n\n\n{stages}"
    )
    done = pipekit("run", "--progress", "plain", cwd=tmp_path)
    assert done.returncode == 1
    skipped = [line.split("|")[0].strip() for line in done.stdout.splitlines() if "| = skipped" in line]
    assert skipped == names


def test_show_keeps_the_indent_of_multi_line_test_messages(tmp_path: Path, busybox_image: str) -> None:
    """`pipekit show` prints a failed test's message of several lines under its test."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef test(ctx):\n"
        "    ctx.sh('mkdir -p reports && cat > reports/junit.xml <<EOF\\n"
        '<testsuite name=\\"s\\" tests=\\"1\\" failures=\\"1\\"><testcase classname=\\"t\\" name=\\"test_sum\\">'
        '<failure message=\\"assert 1 == 2&#10;where 1 = one()\\">trace</failure></testcase></testsuite>\\nEOF\')\n'
        "    ctx.junit('reports/junit.xml', fail_on_failure=False)\n"
    )
    done = pipekit("run", "--progress", "plain", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = pipekit("show", "last", cwd=tmp_path)
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "test_sum" in line)
    assert lines[at].startswith("  failure: ")
    following = lines[at + 1 : at + 3]
    assert following and all(line.startswith("    ") for line in following if line.strip()), shown.stdout


def test_cleanup_of_a_run_with_a_kept_container_says_what_it_removed(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    """`pipekit cleanup RUN` of a run whose failed stage was kept: one line that says it removed it."""
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef broken(ctx):\n    ctx.sh('exit 1')\n"
    )
    done = pipekit("run", "--keep-failed", "--progress", "plain", cwd=tmp_path)
    assert done.returncode == 1
    run_id = done.stdout.split(", run ")[1].split(")")[0]
    label = {"label": f"io.pipekit.run={run_id}"}
    try:
        cleaned = pipekit("cleanup", run_id, cwd=tmp_path)
        assert cleaned.returncode == 0, cleaned.stderr
        assert cleaned.stdout.strip() == f"run {run_id}: removed the 1 container(s) kept for `pipekit shell`"
        assert docker_client.containers.list(all=True, filters=label) == []
    finally:
        for c in docker_client.containers.list(all=True, filters=label):
            c.remove(force=True)


def test_a_shared_option_has_one_definition_in_every_command() -> None:
    """--param, --secrets-file, --image-map, --no-image-check, --branch and --changed-base read the
    same variable, with the same help, in every command that takes them."""
    from pipekit._cli.main import cli as group

    seen: dict[str, set[tuple[Any, ...]]] = {}
    for command in ("run", "plan", "validate"):
        for p in group.commands[command].params:
            if p.name in ("param", "secrets_file", "image_map", "no_image_check", "branch", "changed_base"):
                seen.setdefault(str(p.name), set()).add((p.envvar, getattr(p, "help", None), p.multiple, p.opts[-1]))
    assert set(seen) == {"param", "secrets_file", "image_map", "no_image_check", "branch", "changed_base"}
    assert all(len(definitions) == 1 for definitions in seen.values()), seen
    assert {name: next(iter(d))[0] for name, d in seen.items()} == {
        "param": "PIPEKIT_PARAM",
        "secrets_file": "PIPEKIT_SECRETS_FILE",
        "image_map": "PIPEKIT_IMAGE_MAP",
        "no_image_check": "PIPEKIT_NO_IMAGE_CHECK",
        "branch": "PIPEKIT_BRANCH",
        "changed_base": "PIPEKIT_CHANGED_BASE",
    }


def _commands(group: Any) -> Any:
    for command in group.commands.values():
        yield command
        if hasattr(command, "commands"):
            yield from _commands(command)


def test_every_command_takes_the_pipeline_file_one_way() -> None:
    """-f/--file is one option: the same variable (PIPEKIT_FILE) and default in every command."""
    from pipekit._cli.main import cli as group

    files = {(p.envvar, p.default, p.help) for c in _commands(group) for p in c.params if p.name == "file"}
    assert len(files) == 1 and next(iter(files))[:2] == ("PIPEKIT_FILE", "pipeline.py"), files


def test_only_the_main_module_turns_errors_into_exit_codes() -> None:
    """Commands raise PipekitError subclasses (or return their own code): no click Exit(...) of their
    own, which once gave exit 2 for an unreachable engine (exit 3)."""
    import pipekit._cli

    folder = Path(pipekit._cli.__file__).parent
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(folder.glob("*.py"))
        if path.name != "main.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "Exit(" in line or "sys.exit(" in line
    ]
    assert not offenders, offenders


def test_shell_without_an_engine_exits_3(tmp_path: Path) -> None:
    """`pipekit shell RUN STAGE` when the engine is down: the EngineUnavailable message and its exit
    code 3 (the command used to turn every error into 2), from the console script."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n\n@pk.stage\ndef hello(ctx):\n    ctx.sh('true')\n")
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    ran = pipekit("run", cwd=tmp_path, env=no_engine)  # a host stage: a recorded run, no engine needed
    assert ran.returncode == 0, ran.stdout + ran.stderr
    proc = pipekit("shell", "last", "hello", cwd=tmp_path, env=no_engine)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"Cannot reach a Docker engine at unix://{tmp_path}/no-engine.sock" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = pipekit("shell", "last", "nope", cwd=tmp_path)  # a usage error stays 2
    assert missing.returncode == 2 and "kept no container of stage 'nope'" in missing.stderr, missing.stderr
