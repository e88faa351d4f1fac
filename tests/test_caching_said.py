"""Saying what caching does (issue 28, item 6): the one-time hint, `pipekit list`'s columns, and a
dirty working tree marked in `runs` and `show`; through the installed console script, with host
stages (no engine needed) in real git checkouts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from tests.helpers import run_console

HINT = "pipekit: hint: no stage has cache="

NO_CACHE = """\
import pipekit as pk


@pk.stage
def lint(ctx):
    ctx.sh("true")
"""

LISTED = """\
import pipekit as pk


@pk.stage(image="busybox:1.36", cache=pk.inputs("src/**", "requirements.txt", env=["PY"]))
def unit(ctx):
    pass


@pk.stage(needs=[unit], when=pk.branch("main"), approval=pk.Approval(approvers=["ops", "alice"]))
def deploy(ctx):
    pass
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL")}
    return {**env, "PIPEKIT_NO_IMAGE_CHECK": "1", "PIPEKIT_PROGRESS": "plain"}


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_console(["run", *args], cwd=folder, env=_env())
    assert done.returncode == 0, done.stderr
    return done


def test_the_cache_hint_comes_once_per_project(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(NO_CACHE)
    first = _run(tmp_path)
    assert first.stderr.count(HINT) == 1 and "cache=pk.inputs(" in first.stderr, first.stderr
    assert (tmp_path / ".pipekit" / "hints").read_text().split() == ["cache"]
    assert HINT not in _run(tmp_path).stderr  # remembered in .pipekit/
    other = tmp_path / "other"
    other.mkdir()
    (other / "pipeline.py").write_text(NO_CACHE)
    assert HINT in _run(other).stderr  # another project: said there too
    dry = tmp_path / "dry"
    dry.mkdir()
    (dry / "pipeline.py").write_text(NO_CACHE)
    done = _run(dry, "--dry-run")
    assert HINT not in done.stderr + done.stdout and not (dry / ".pipekit" / "hints").exists()


def test_no_hint_when_a_stage_caches_or_in_a_ci(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(
        NO_CACHE + '\n\n@pk.stage(cache=pk.inputs("pipeline.py"))\ndef b(ctx):\n    pass\n'
    )
    assert HINT not in _run(tmp_path).stderr
    assert not (tmp_path / ".pipekit" / "hints").exists()
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "pipeline.py").write_text(NO_CACHE)
    assert HINT not in _run(ci, "--ci", "github").stdout + _run(ci, "--ci", "github").stderr


def test_list_shows_when_cache_and_image(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(LISTED)
    done = run_console(["list"], cwd=tmp_path, env=_env())
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0] == ["STAGE", "IMAGE", "NEEDS", "WHEN", "CACHE", "APPROVAL", "DEFINED", "AT"]
    assert lines[1][:8] == ["unit", "busybox:1.36", "-", "always", "src/**,requirements.txt", "env", "PY", "-"]
    assert lines[2][:3] == ["deploy", "host", "unit"] and "main" in " ".join(lines[2][3:-1])
    assert lines[2][-3:-1] == ["-", "ops,alice"]  # no cache=; approvers


def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@e"
    return subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True, text=True).stdout


def _checkout(folder: Path) -> str:
    (folder / "pipeline.py").write_text(NO_CACHE)
    (folder / "app.py").write_text("print('v1')\n")
    _git(folder, "init", "-q")
    _git(folder, "add", ".")
    _git(folder, "commit", "-qm", "first")
    return _git(folder, "rev-parse", "HEAD").strip()


def test_runs_and_show_mark_a_dirty_working_tree(tmp_path: Path) -> None:
    commit = _checkout(tmp_path)
    _run(tmp_path)
    (tmp_path / "notes.txt").write_text("untracked: not a change to what is committed\n")
    _run(tmp_path)
    (tmp_path / "app.py").write_text("print('v2')\n")  # a tracked file changed
    _run(tmp_path)
    done = run_console(["runs"], cwd=tmp_path, env=_env())
    header, *rows = [line.split() for line in done.stdout.splitlines()]
    assert header[3] == "COMMIT"
    assert [r[3] for r in rows] == [f"{commit[:12]}-dirty", commit[:12], commit[:12]]
    shown = run_console(["show", "last"], cwd=tmp_path, env=_env()).stdout
    assert f"at {commit} (dirty: uncommitted changes to tracked files)" in shown
    shown = run_console(["show", rows[1][0]], cwd=tmp_path, env=_env()).stdout
    assert f"at {commit}\n" in shown


def test_the_dirty_check_runs_nothing_a_stage_planted_in_git(tmp_path: Path) -> None:
    """A .git/config with a filter driver and an fsmonitor, and a hook: `git status` would run all
    three (checked below); the run's dirty check runs none."""
    commit = _checkout(tmp_path)
    (tmp_path / ".gitattributes").write_text("*.py filter=evil\n")
    _git(tmp_path, "config", "filter.evil.clean", f"touch {tmp_path}/ran-clean; cat")
    _git(tmp_path, "config", "core.fsmonitor", f"touch {tmp_path}/ran-fsmonitor; true")
    hook = tmp_path / ".git" / "hooks" / "post-index-change"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran-hook\n")
    hook.chmod(0o755)
    (tmp_path / "app.py").write_text("print('v2')\n")
    _run(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == []
    assert f"{commit[:12]}-dirty" in run_console(["runs"], cwd=tmp_path, env=_env()).stdout
    subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True)  # the test can fail
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-clean", "ran-fsmonitor", "ran-hook"]


def test_a_history_from_before_gets_the_column(tmp_path: Path) -> None:
    """A pipekit.db made before the dirty column: runs recorded then read as unknown, new ones work."""
    (tmp_path / ".pipekit").mkdir(mode=0o700)
    (tmp_path / ".pipekit" / ".gitignore").write_text("*\n")  # (as pipekit writes it: not committed below)
    db = sqlite3.connect(tmp_path / ".pipekit" / "pipekit.db")
    db.execute(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, pipeline TEXT, path TEXT, branch TEXT, git_commit TEXT, argv TEXT,"
        " user TEXT, host TEXT, pid INTEGER, started REAL, ended REAL, status TEXT, resumed_from TEXT)"
    )
    db.execute("INSERT INTO runs VALUES ('old1', 'p', 'x', NULL, 'abc', '', 'u', 'h', 1, 1.0, 2.0, 'succeeded', NULL)")
    db.commit()
    db.close()
    commit = _checkout(tmp_path)
    _run(tmp_path)
    rows = [line.split() for line in run_console(["runs"], cwd=tmp_path, env=_env()).stdout.splitlines()]
    assert [r[3] for r in rows[1:]] == [commit[:12], "abc"]


def test_a_pipeline_in_a_subfolder_of_the_checkout(tmp_path: Path) -> None:
    """The checkout's .git/ is above the pipeline's folder: its filter drivers are found through git."""
    _checkout(tmp_path)
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "pipeline.py").write_text(NO_CACHE)
    (tmp_path / ".gitattributes").write_text("*.py filter=evil\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "ci")
    commit = _git(tmp_path, "rev-parse", "HEAD").strip()
    _git(tmp_path, "config", "filter.evil.clean", f"touch {tmp_path}/ran-clean; cat")
    (tmp_path / "app.py").write_text("print('v3')\n")
    _run(tmp_path, "-f", "ci")
    assert list(tmp_path.glob("ran-*")) == []
    shown = run_console(["show", "last", "-f", "ci"], cwd=tmp_path, env=_env()).stdout
    assert f"at {commit} (dirty: uncommitted changes to tracked files)" in shown
