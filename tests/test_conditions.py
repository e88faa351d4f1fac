"""Conditions (when=) and how skipped stages flow through a run."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._cli.main import main
from pipekit._dsl.conditions import RunInfo, detect_branch, glob_match


def info(**kwargs: Any) -> RunInfo:
    kwargs.setdefault("workspace", Path("."))
    kwargs.setdefault("environ", {})
    kwargs.setdefault("branch", "main")
    return RunInfo(**kwargs)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("main", "main", True),
        ("release/*", "release/1.2", True),
        ("release/*", "release/1.2/hotfix", False),
        ("src/**", "src/a/b/c.py", True),
        ("**/*.py", "top.py", True),
        ("**/*.py", "a/b/top.py", True),
        ("Dockerfile", "sub/Dockerfile", False),
    ],
)
def test_glob_match(pattern: str, text: str, expected: bool) -> None:
    """* stays within a path segment, ** crosses segments."""
    assert glob_match(pattern, text) is expected


def test_conditions_and_combinators() -> None:
    """branch, env, param_is, callables and &, |, ~ evaluate as written."""
    i = info(branch="feature/x", environ={"DEPLOY": "yes", "DRY_RUN": "1"}, params={"deploy": True})
    assert pk.branch("feature/*").evaluate(i)
    assert not pk.branch("main", "release/*").evaluate(i)
    assert pk.env("DEPLOY", "yes").evaluate(i) and pk.env("DEPLOY").evaluate(i) and not pk.env("NOPE").evaluate(i)
    assert pk.param_is("deploy", True).evaluate(i)
    cond = pk.branch("main") & ~pk.env("DRY_RUN", "1")
    assert not cond.evaluate(i)
    assert str(cond) == "(branch is 'main' and not $DRY_RUN == '1')"
    assert (pk.branch("main") | (lambda run: run.env["DEPLOY"] == "yes")).evaluate(i)


def test_branch_comes_from_ci_variables_in_order() -> None:
    """Jenkins BRANCH_NAME, then GitHub's head ref (pull requests) or ref name, then GitLab's."""
    assert detect_branch(Path("/"), {"GITHUB_REF_NAME": "main", "GITHUB_HEAD_REF": "feature"}) == "feature"
    assert detect_branch(Path("/"), {"CI_COMMIT_REF_NAME": "gl"}) == "gl"
    assert detect_branch(Path("/"), {"BRANCH_NAME": "jk", "CI_COMMIT_REF_NAME": "gl"}) == "jk"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_changed_files_against_the_merge_base(tmp_path: Path) -> None:
    """pk.changed matches files changed on this branch since it left main (and uncommitted ones)."""
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("1")
    (tmp_path / "README.md").write_text("r")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "base")
    _git(tmp_path, "checkout", "-qb", "feature")
    (tmp_path / "src" / "app.py").write_text("2")
    _git(tmp_path, "commit", "-qam", "change")
    (tmp_path / "Dockerfile").write_text("FROM x")
    run = RunInfo(workspace=tmp_path, environ={})
    assert run.branch == "feature"
    assert run.changed_files == ["Dockerfile", "src/app.py"]
    assert pk.changed("src/**").evaluate(run)
    assert pk.changed("Dockerfile").evaluate(run)
    assert not pk.changed("docs/**").evaluate(run)


PIPELINE = """
import pipekit as pk

@pk.stage(when=pk.branch("main"))
def build(ctx):
    return "image"

@pk.stage
def test(ctx, build):
    return "tested " + build

@pk.stage(needs=[build])
def lint(ctx):
    return "linted"

@pk.stage(needs=[test, lint], when=pk.branch("main") & ~pk.env("DRY_RUN", "1"))
def deploy(ctx):
    return "deployed"
"""


@pytest.mark.parametrize(
    ("branch", "statuses"),
    [
        ("main", {"build": "succeeded", "test": "succeeded", "lint": "succeeded", "deploy": "succeeded"}),
        ("feature/x", {"build": "skipped", "test": "skipped", "lint": "succeeded", "deploy": "skipped"}),
    ],
)
def test_skipped_stage_skips_value_users_but_satisfies_needs(
    tmp_path: Path, branch: str, statuses: dict[str, str], docker_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A false condition skips the stage and stages that need its value; needs= on it is satisfied."""
    monkeypatch.delenv("DRY_RUN", raising=False)
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    result = pk.run(str(tmp_path / "pipeline.py"), backend=docker_backend, log_file=io.StringIO(), branch=branch)
    assert {n: r.status for n, r in result.stages.items()} == statuses
    assert result.status == "succeeded"
    if branch != "main":
        assert result["build"].reason == "condition not met: branch is 'main'"
        assert result["test"].reason == "needs the value of skipped stage 'build'"


def test_dry_run_shows_what_would_be_skipped_and_why(tmp_path: Path) -> None:
    """--dry-run evaluates the conditions and prints each skip with its reason."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    out = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--dry-run", "--branch", "feature/x"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "  1. build (host)  [skipped: condition not met: branch is 'main' (branch 'feature/x')]"
    assert lines[1] == "  2. test (host) after build  [skipped: needs the value of skipped stage 'build']"
    assert lines[2] == "  3. lint (host) after build"
    assert "[skipped: condition not met: (branch is 'main' and not $DRY_RUN == '1') (branch 'feature/x')]" in lines[3]
    assert lines[-1] == "dry run: 1 of 4 stages would run, nothing started"


def test_changed_without_git_is_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    """pk.changed outside a git checkout stops `pipekit run` with exit 2 and says to give a base."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n@pk.stage(when=pk.changed('src/**'))\ndef build(ctx):\n    pass\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "-f", str(tmp_path)], out=out, err=err) == 2
    assert "pk.changed needs a git base to compare with" in err.getvalue()
    assert "--changed-base REF" in err.getvalue()
    assert out.getvalue() == ""
    assert not (tmp_path / ".pipekit").exists() or not list((tmp_path / ".pipekit").glob("logs/*"))
