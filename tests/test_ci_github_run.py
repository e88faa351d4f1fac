"""The workflow `pipekit ci init github` writes, run twice as GitHub's runners would run it, on two
fresh "runners" (a fresh clone in a fresh folder, a fresh HOME, no `.pipekit/`): the second run's
stages are hits in the registry cache the first run wrote.

GitHub cannot be reached from here, so the test plays the runner's part: it reads the workflow with
a YAML parser, evaluates the `${{ }}` expressions of the job's `env:` for the event (a push to the
default branch, then a pull request), sets the GITHUB_* variables a runner sets, and runs each
`run:` step with the runner's bash (`bash --noprofile --norc -eo pipefail`). The `uses:` steps are
done by the test: actions/checkout is a `git clone` of the project, actions/setup-python the Python
already here; the "Install pipekit" step is not run (the package under test is installed here:
pip would fetch the released pipekit-ci). A local registry with a login (Debian's `docker-registry`,
htpasswd) stands in for ghcr.io, through PIPEKIT_CACHE_REGISTRY, which the workflow's step honours
(for GitHub Enterprise Server or a registry of one's own); the login is the workflow's own:
`github.actor` and `secrets.GITHUB_TOKEN`.

What this does not prove: that GitHub's own runner, ghcr.io's token flow for `GITHUB_TOKEN` and the
`permissions:` block behave as assumed (the Bearer-token flow is tested against a token service in
tests/test_regcache.py), and the steps done by the test instead of by actions.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import console_env, console_script, run_console
from test_regcache import Registry

from pipekit._history.store import History

pytestmark = pytest.mark.docker

REPOSITORY = "Octo-Org/Demo.Proj"  # GITHUB_REPOSITORY: mixed case, as GitHub gives it

PROJECT = """
import pathlib
import pipekit as pk

@pk.stage(image="{busybox}", cache=pk.inputs("src/**", outputs=["dist/**"]))
def build(ctx):
    ctx.sh("mkdir -p dist && cat src/app.txt > dist/app.bin && echo built >> dist/app.bin")
    return {{"version": "1.0"}}

@pk.stage(cache=pk.inputs("tests/**"))
def check(ctx, build):
    text = (pathlib.Path(ctx.workspace) / "dist/app.bin").read_text()
    assert text.endswith("built\\n"), text
    return "checked " + build["version"]

@pk.stage(cache=pk.inputs(outputs=["dist/notes.txt"]))
def package(ctx, build, check):
    (pathlib.Path(ctx.workspace) / "dist/notes.txt").write_text(check + "\\n")
    return "package " + build["version"]
"""

# -- GitHub's expressions, the part of them the workflow uses ------------------------------------
_TOKEN = re.compile(r"\s*(?:(==|!=|&&|\|\||\(|\))|'((?:[^']|'')*)'|([A-Za-z_][\w.-]*))")


def _tokens(text: str) -> list[tuple[str, str]]:
    found, at = [], 0
    while text[at:].strip():
        m = _TOKEN.match(text, at)
        assert m is not None, f"an expression this test does not understand: {text[at:]!r}"
        kind = "op" if m.group(1) else "str" if m.group(2) is not None else "path"
        found.append((kind, m.group(1) or (m.group(2) or "").replace("''", "'") or m.group(3)))
        at = m.end()
    return found


def evaluate(text: str, context: dict[str, Any]) -> Any:
    """One expression: context paths (github.event_name, secrets.X), 'strings', == and != (strings
    compared ignoring case, as GitHub does), && and || (which give one of their operands)."""
    tokens = _tokens(text)

    def take(op: str) -> bool:
        if tokens and tokens[0] == ("op", op):
            tokens.pop(0)
            return True
        return False

    def atom() -> Any:
        kind, value = tokens.pop(0)
        if (kind, value) == ("op", "("):
            inner = either()
            assert take(")")
            return inner
        if kind == "str":
            return value
        assert kind == "path", value
        node: Any = context
        for part in value.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return "" if node is None else node

    def compare() -> Any:
        left = atom()
        for op in ("==", "!="):
            if take(op):
                right = atom()
                same = str(left).casefold() == str(right).casefold()
                return same if op == "==" else not same
        return left

    def both() -> Any:
        left = compare()
        while take("&&"):
            right = compare()
            left = right if left else left
        return left

    def either() -> Any:
        left = both()
        while take("||"):
            right = both()
            left = left if left else right
        return left

    value = either()
    assert not tokens, tokens
    return value


def substitute(text: str, context: dict[str, Any]) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(evaluate(m.group(1), context)), text)


def test_the_expressions_this_test_evaluates() -> None:
    github = {"event_name": "push", "ref_name": "Main", "event": {"repository": {"default_branch": "main"}}}
    mode = "github.event_name == 'push' && github.ref_name == github.event.repository.default_branch"
    assert evaluate(f"{mode} && 'readwrite' || 'read'", {"github": github}) == "readwrite"
    assert evaluate(f"{mode} && 'readwrite' || 'read'", {"github": {**github, "ref_name": "fix"}}) == "read"
    assert evaluate(f"{mode} && 'readwrite' || 'read'", {"github": {**github, "event_name": "pull_request"}}) == "read"
    assert substitute("${{ secrets.T }}-${{ github.nothing.here }}", {"secrets": {"T": "x"}}) == "x-"


# -- a runner ----------------------------------------------------------------------------------
def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def project(root: Path, busybox: str) -> Path:
    """The project's repository: the pipeline, its sources, and the workflow `ci init github` wrote
    (by the installed console script), committed on main; a pull request's branch changes the README."""
    origin = root / "origin"
    (origin / "src").mkdir(parents=True)
    (origin / "tests").mkdir()
    (origin / "pipeline.py").write_text(PROJECT.format(busybox=busybox))
    (origin / "src" / "app.txt").write_text("the app\n")
    (origin / "tests" / "test_app.txt").write_text("a test\n")
    (origin / "README.md").write_text("Demo\n")
    done = run_console(["ci", "init", "github"], cwd=origin)
    assert done.returncode == 0, done.stdout + done.stderr
    _git("init", "-q", "-b", "main", cwd=origin)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "add", "-A", cwd=origin)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "the project", cwd=origin)
    _git("checkout", "-qb", "fix-readme", cwd=origin)
    (origin / "README.md").write_text("Demo, with a typo fixed\n")
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qam", "README", cwd=origin)
    _git("checkout", "-q", "main", cwd=origin)
    return origin


def run_workflow(origin: Path, runner: Path, event: str, branch: str, registry: Registry) -> tuple[Path, list[str]]:
    """The job `pipeline` of the workflow on a fresh runner for ``event`` on ``branch``: the clone's
    folder and the `uses:` steps done by the test (or skipped)."""
    workflow = yaml.safe_load((origin / ".github/workflows/pipekit.yml").read_text())
    workflow = {("on" if k is True else k): v for k, v in workflow.items()}
    assert event in workflow["on"]
    job = workflow["jobs"]["pipeline"]
    home, temp = runner / "home", runner / "temp"
    workspace = runner / "work" / "Demo.Proj" / "Demo.Proj"
    for folder in (home, temp, workspace.parent):
        folder.mkdir(parents=True)
    assert registry.user is not None and registry.password is not None
    context = {
        "github": {
            "event_name": event,
            "ref_name": branch if event == "push" else "7/merge",
            "actor": registry.user,  # the login the workflow gives: github.actor and GITHUB_TOKEN
            "repository": REPOSITORY,
            "event": {"repository": {"default_branch": "main"}},
        },
        "secrets": {"GITHUB_TOKEN": registry.password},
    }
    keep = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_") or k in ("LANG", "TZ")}
    scripts = str(Path(console_script()).parent)
    base = {
        **keep,
        "HOME": str(home),
        "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "/usr/bin:/bin")]),
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_EVENT_NAME": event,
        "GITHUB_REF_NAME": context["github"]["ref_name"],
        "GITHUB_ACTOR": registry.user,
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_OUTPUT": str(temp / "output"),
        "GITHUB_STEP_SUMMARY": str(temp / "summary"),
        "RUNNER_TEMP": str(temp),
        # ghcr.io's stand-in, through the variable the workflow's step honours
        "PIPEKIT_CACHE_REGISTRY": f"{registry.address}/{REPOSITORY.lower()}/pipekit-cache",
    }
    done_by_test = []
    for step in job["steps"]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            if action == "actions/checkout":
                _git("clone", "-q", "-b", branch, str(origin), str(workspace), cwd=runner)
            done_by_test.append(action)
            continue
        if step.get("name") == "Install pipekit":
            assert step["run"].startswith("python -m pip install ")
            done_by_test.append("Install pipekit")
            continue
        assert step.get("if", "always()") == "always()", step
        env = {**base, **{k: substitute(str(v), context) for k, v in (step.get("env") or {}).items()}}
        script = temp / f"step{len(done_by_test)}.sh"
        script.write_text(step["run"])
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace,
            env=console_env(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"step {step.get('name')}:\n{proc.stdout}\n{proc.stderr}"
        shown = [line for line in (proc.stdout + proc.stderr).splitlines() if registry.password in line]
        assert all(line.startswith("::add-mask::") for line in shown), shown  # the runner masks it
    return workspace, done_by_test


def last_run(folder: Path) -> dict[str, tuple[str, str | None]]:
    h = History(folder)
    try:
        run = h.runs(1)[0]
        return {s.name: (s.status, s.reason) for s in h.stages(run.id)}
    finally:
        h.close()


def test_the_second_run_on_a_fresh_runner_hits_what_the_first_wrote(tmp_path: Path, busybox_image: str) -> None:
    (tmp_path / "registry").mkdir()
    registry = Registry(tmp_path / "registry", auth=True)
    try:
        origin = project(tmp_path, busybox_image)
        repo = f"{REPOSITORY.lower()}/pipekit-cache"

        first, done = run_workflow(origin, tmp_path / "runner1", "push", "main", registry)
        assert done == ["actions/checkout", "actions/setup-python", "Install pipekit"] + [
            "mikepenz/action-junit-report",
            "actions/upload-artifact",
        ]
        assert {s for s, _ in last_run(first).values()} == {"succeeded"}, last_run(first)
        tags = registry.tags(repo)
        assert len(registry.entries(repo)) == 3, tags  # a push to main writes

        second, _ = run_workflow(origin, tmp_path / "runner2", "pull_request", "fix-readme", registry)
        assert not (second / ".pipekit").samefile(first / ".pipekit")
        stages = last_run(second)
        assert set(stages) == {"build", "check", "package"}
        for name, (status, reason) in stages.items():
            assert status == "cached" and reason is not None, (name, status, reason)
            assert reason.startswith(f"cache hit: registry {registry.address}/{repo}, run "), reason
        assert (second / "dist" / "app.bin").read_text() == "the app\nbuilt\n"
        assert (second / "dist" / "notes.txt").read_text() == "checked 1.0\n"
        assert (second / "reports" / "pipekit.xml").is_file()  # the JUnit file the next steps publish
        assert registry.tags(repo) == tags  # a pull request only reads
    finally:
        registry.stop()
