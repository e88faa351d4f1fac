"""`pipekit plan` and `run --dry-run`: each stage's decision and why, and what changed on a miss."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pipekit._cli import main

PIPELINE = """\
import pipekit as pk

DEPLOY = pk.param("deploy", default=False)


@pk.stage(image={image!r}, cache=pk.inputs("src/**"))
def build(ctx):
    ctx.sh("cat src/*")
    return "v1"


@pk.stage(image={image!r}, cache=pk.inputs("tests/**"))
def test(ctx, build):
    return build + "-tested"


@pk.stage(image={image!r})
def lint(ctx):
    ctx.sh("true")


@pk.stage(image={image!r}, when=pk.param_is("deploy", True))
def deploy(ctx, test):
    pass
"""


def _plan(folder: Path, *args: str) -> list[str]:
    out, err = io.StringIO(), io.StringIO()
    assert main(["plan", "-f", str(folder), "--branch", "dev", *args], out=out, err=err) == 0, err.getvalue()
    return out.getvalue().splitlines()


def test_the_plan_says_what_runs_what_is_skipped_and_cached_and_what_changed(
    tmp_path: Path, busybox_image: str
) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(image=busybox_image))
    (tmp_path / "src").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    (tmp_path / "tests" / "t.txt").write_text("t")
    first = _plan(tmp_path)
    assert first[0].endswith("[runs: no run history yet: nothing cached]")
    assert first[1].endswith("[runs: its cache is decided when build has run: upstream outputs are inputs]")
    assert first[2] == f"  3. lint ({busybox_image})"
    assert first[3].endswith("[skipped: condition not met: param deploy == True (branch 'dev'; params deploy=False)]")
    assert first[4] == "plan: 3 of 4 stages would run, nothing started"

    out = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--branch", "dev"], out=out) == 0
    run_id = out.getvalue().rsplit("run ", 1)[1].split()[0]
    cached = _plan(tmp_path)
    assert cached[0].endswith(f"[cached: the result of run {run_id}]")
    assert cached[1].endswith(f"[cached: the result of run {run_id}]")
    assert cached[4] == "plan: 1 of 4 stages would run, 2 from the stage cache, nothing started"

    (tmp_path / "src" / "a.txt").write_text("changed")
    (tmp_path / "src" / "b.txt").write_text("new")
    missed = _plan(tmp_path)
    assert missed[0].endswith(
        f"[runs: cache miss; changed since run {run_id}: files changed: src/a.txt; files new: src/b.txt]"
    )
    assert "decided when build has run" in missed[1]

    with_param = _plan(tmp_path, "-p", "deploy=yes")
    assert "params deploy" in with_param[0]
    assert "skipped" not in with_param[3]

    events = [json.loads(line) for line in _plan(tmp_path, "--format", "json")]
    assert [e["decision"] for e in events] == ["run", "run", "run", "skip"]
    assert events[0]["changed"] == {"files": {"changed": ["src/a.txt"], "new": ["src/b.txt"]}}

    dry = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--branch", "dev", "--dry-run"], out=dry) == 0
    assert dry.getvalue().splitlines()[:4] == missed[:4]
    assert dry.getvalue().splitlines()[4] == "dry run: 3 of 4 stages would run, nothing started"
