"""Every command of the CLI as users run it: the installed `pipekit` console script, a separate
process (on a pseudo-terminal for the interactive ones), and what it writes read by the tool that
consumes it.

`test_every_command_is_run_as_users_run_it` reads the tests' source (tests/**/test_*.py) for
``run_console([...])``, ``run_console_*([...])``, ``console_popen([...])`` and ``Terminal([...])``
calls (helpers.py) whose first argument is a list: a new command without such a test fails it.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import click
import pytest
from helpers import REPO, Terminal, console_popen, run_console

PIPELINE = """\
import pipekit as pk

GREETING = pk.param("greeting", default="hello")


@pk.stage(image={image!r}, cache=pk.inputs("input.txt"))
def make(ctx):
    ctx.sh("echo making " + ctx.params.greeting + "; mkdir -p dist && echo made > dist/app.txt")
    ctx.archive("dist/app.txt")


@pk.stage(image={image!r})
def check(ctx, make):
    ctx.sh("echo checking; echo second line")
"""

# the helpers that start the console script (and wrappers named run_console_*)
CALLERS = {"run_console", "console_popen", "Terminal"}
INTERACTIVE = {"shell"}  # commands that must also be tested on a terminal


# -- which commands the tests run through the console script -------------------------------------


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_leaf_commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


def _command_of(tokens: list[str], group: click.Group) -> tuple[str, ...] | None:
    """The command path a console call's argument list names (options before it skipped)."""
    path: list[str] = []
    current: click.Command = group
    for token in tokens:
        if not isinstance(current, click.Group):
            break
        if token in current.commands:
            path.append(token)
            current = current.commands[token]
    return tuple(path) if path and not isinstance(current, click.Group) else None


def _console_calls() -> list[tuple[str, str, list[str], set[str]]]:
    """Every console-script call in the tests: (file, caller, its literal string arguments, what
    the same test function types on a terminal)."""
    calls = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):  # (tests/pipelines/ holds broken files on purpose)
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            typed = {
                str(node.args[0].value)
                for node in ast.walk(function)
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "send"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            }
            for node in ast.walk(function):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List)):
                    continue
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in CALLERS or name.startswith("run_console_"):
                    name = "Terminal" if name == "Terminal" else "run_console"
                    elements = node.args[0].elts
                    words = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                    calls.append((path.name, name, words, typed))
    return calls


def test_every_command_is_run_as_users_run_it() -> None:
    from pipekit._cli.main import cli

    commands = _leaf_commands(cli)
    assert {("run",), ("shell",), ("ci", "init"), ("import", "jenkinsfile")} <= set(commands)  # the walk works
    calls = _console_calls()
    run_by = {(_command_of(words, cli), caller) for _, caller, words, _ in calls}
    missing = sorted(" ".join(c) for c in commands if not any(path == c for path, _ in run_by))
    assert missing == [], f"commands no test runs through the pipekit console script: {missing}"
    on_terminal = sorted(" ".join(c) for c in commands if " ".join(c) in INTERACTIVE and (c, "Terminal") not in run_by)
    assert on_terminal == [], f"interactive commands no test runs on a terminal: {on_terminal}"
    terminal_runs = [(words, typed) for _, caller, words, typed in calls if caller == "Terminal" and "run" in words]
    assert any("live" in words for words, _ in terminal_runs), "no test runs the live view on a terminal"
    assert any("\x03" in "".join(typed) for _, typed in terminal_runs), "no test types Ctrl-C into a run"


def test_the_scan_sees_a_command_without_a_test() -> None:
    """The check above can fail: a command added to the CLI, with no console test, is reported."""
    from pipekit._cli.main import cli

    group = click.Group("pipekit", commands=dict(cli.commands))
    group.add_command(click.Command("brand-new", callback=lambda: None))
    seen = {_command_of(words, group) for _, _, words, _ in _console_calls()}
    assert ("brand-new",) in _leaf_commands(group) and ("brand-new",) not in seen
    assert ("ci", "init") in seen and ("import", "jenkinsfile") in seen


# -- a project's life, one command after another --------------------------------------------------


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.title = ""

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1] == "title":
            self.title += data


def _html(path: Path) -> _Html:
    parser = _Html()
    parser.feed(path.read_text())
    parser.close()
    assert {"html", "head", "body", "title"} <= set(parser.tags)
    return parser


@pytest.fixture
def project(tmp_path: Path, busybox_image: str) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    (tmp_path / "input.txt").write_text("one\n")
    return tmp_path


def run_console_ok(args: list[str], cwd: Path, **kw: Any) -> str:
    done = run_console(args, cwd=cwd, **kw)
    assert done.returncode == 0, f"pipekit {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def test_a_project_from_validate_to_cleanup(project: Path, docker_client: Any) -> None:
    assert "2 stages, valid" in run_console_ok(["validate"], project)
    listed = run_console_ok(["list"], project)
    assert listed.splitlines()[0].split() == ["STAGE", "IMAGE", "NEEDS", "WHEN", "CACHE", "APPROVAL", "DEFINED", "AT"]
    assert "greeting" in listed
    assert "make" in run_console_ok(["graph"], project)
    svg = ET.fromstring(run_console_ok(["graph", "--format", "svg"], project))  # an XML parser reads the drawing
    assert svg.tag.endswith("svg")
    assert "digraph" in run_console_ok(["graph", "--format", "dot"], project)
    assert "plan: 2 of 2 stages would run" in run_console_ok(["plan", "-p", "greeting=bonjour"], project)
    ran = run_console_ok(
        ["run", "-p", "greeting=bonjour", "--progress", "plain", "--junit", "out/j.xml", "--report", "out/r.html"],
        project,
    )
    run_id = ran.rsplit("run ", 1)[1].split()[0]
    assert docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"}) == []
    from junitparser import JUnitXml  # how CI test views read it

    junit = JUnitXml.fromfile(str(project / "out/j.xml"))
    cases = {case.name: case.is_passed for suite in junit for case in suite}
    assert cases.get("make") is True and cases.get("check") is True, cases
    assert run_id in _html(project / "out/r.html").title
    assert run_console_ok(["runs"], project).splitlines()[1].startswith(run_id)
    shown = run_console_ok(["show", run_id], project)
    assert "make" in shown and "check" in shown
    assert "making bonjour" in run_console_ok(["logs", "last", "make"], project)
    assert "second line" in run_console_ok(["logs", run_id], project)
    copied = run_console_ok(["artifacts", run_id, "--dest", "got"], project)
    assert (project / "got/dist/app.txt").read_text() == "made\n" and "app.txt" in copied
    assert run_console_ok(["report", "last", "-o", "page.html"], project) == "wrote page.html\n"
    assert run_id in _html(project / "page.html").title
    assert run_console_ok(["cache", "list"], project).startswith("1 cached stage results")
    assert run_console_ok(["cache", "prune", "--results"], project) == "removed 1 cached stage results\n"
    assert run_console(["cleanup", run_id], cwd=project).returncode == 0


def test_commands_say_what_is_wrong(tmp_path: Path) -> None:
    """A user's mistake: a message and exit 2, never a traceback."""
    for args in (["run"], ["list"], ["validate"], ["show", "last"], ["nonsense"], ["run", "--jobs", "many"]):
        done = run_console(args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("pipekit: ") and "Traceback" not in done.stderr, done.stderr


def test_triggers_print_json(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n"
        'pipeline = pk.Pipeline(name="app", image="busybox", triggers=[pk.on_push(branches=["main"])])\n'
        "@pipeline.stage\ndef build(ctx):\n    pass\n"
    )
    data = json.loads(run_console_ok(["triggers"], tmp_path))
    assert data["pipeline"] == "app" and len(data["triggers"]) == 1


def test_completion_is_a_script_bash_loads(tmp_path: Path) -> None:
    script = tmp_path / "pipekit.bash"
    script.write_text(run_console_ok(["completion", "bash"], tmp_path))
    loaded = subprocess.run(
        ["bash", "-c", f'source "{script}" && complete -p pipekit'], capture_output=True, text=True, timeout=30
    )
    assert loaded.returncode == 0 and "pipekit" in loaded.stdout, loaded.stderr


def test_import_jenkinsfile_writes_python(tmp_path: Path) -> None:
    source = REPO / "tests/jenkinsfiles/02-sequence.Jenkinsfile"
    done = run_console(["import", "jenkinsfile", str(source), "-o", "pipeline.py"], cwd=tmp_path)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    compile((tmp_path / "pipeline.py").read_text(), "pipeline.py", "exec")  # Python's compiler reads it


# -- on a terminal: the live view and Ctrl-C --------------------------------------------------------


def test_the_live_view_on_a_terminal(project: Path) -> None:
    term = Terminal(["run", "--progress", "live", "make"], cwd=project)
    try:
        term.expect("make")
        code = term.wait(timeout=120)
    finally:
        term.close()
    drawn = term.text()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn).replace("\r", "")
    assert code == 0, shown
    assert "\x1b[2K" in drawn  # the stage's line is redrawn in place, not printed line after line
    assert re.search(r"✔ make +\d+\.\d\ds succeeded", shown) and "make         | " not in shown
    assert shown.rstrip().splitlines()[-1].startswith("run ") and "succeeded" in shown.rstrip().splitlines()[-1]


def test_ctrl_c_typed_on_a_terminal_stops_the_run(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef wait(ctx):\n"
        "    ctx.sh('echo ready-marker; sleep 60')\n"
    )
    term = Terminal(["run", "--progress", "plain"], cwd=tmp_path)
    try:
        before = term.expect("ready-marker", timeout=90)
        term.send("\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground process group
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 130, term.text()
    assert "interrupted" in term.text()
    run_id = before.split("run ", 1)[1].split()[0].strip("),")
    assert docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"}) == []


# -- the server ------------------------------------------------------------------------------------


def test_serve_runs_a_pipeline_and_stops_on_sigterm(tmp_path: Path, busybox_image: str) -> None:
    from server_helpers import Remote, Server

    remote = Remote(tmp_path)
    remote.push(
        {
            "pipeline.py": 'import pipekit as pk\npipeline = pk.Pipeline(name="app", image="busybox")\n'
            "@pipeline.stage\ndef build(ctx):\n    ctx.sh('echo served')\n"
        }
    )
    srv = Server(tmp_path, 'name = "app"\nrepo = "remote.git"\nbranches = ["main"]\n')
    with open(srv.log, "w") as log:
        srv.proc = console_popen(
            ["serve", "--config", str(srv.config)], cwd=tmp_path, env=srv.env(busybox_image), stdout=log
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                srv.api("GET", "/api/runs")
                break
            except OSError:
                assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log.read_text()
                time.sleep(0.2)
        run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"})["run"]
        assert srv.wait(run, "succeeded", "failed")["status"] == "succeeded", srv.log.read_text()
    finally:
        code = srv.stop(signal.SIGTERM)
    assert code == 0, srv.log.read_text()
