"""`pipekit plan` and `run --dry-run`: each stage's decision and why, and what changed on a miss."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipekit._cli.main import main

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
    assert first[1].endswith("[runs: no run history yet: nothing cached]")
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
    assert missed[1].endswith("[cached or runs: its cache is decided when build has run: upstream outputs are inputs]")

    with_param = _plan(tmp_path, "-p", "deploy=yes")
    assert "params deploy" in with_param[0]
    assert "skipped" not in with_param[3]

    events = [json.loads(line) for line in _plan(tmp_path, "--format", "json")]
    assert [e["decision"] for e in events] == ["run", "maybe-cached", "run", "skip"]
    assert events[0]["changed"] == {"files": {"changed": ["src/a.txt"], "new": ["src/b.txt"]}}

    dry = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--branch", "dev", "--dry-run"], out=dry) == 0
    assert dry.getvalue().splitlines()[:4] == missed[:4]
    assert dry.getvalue().splitlines()[4] == (
        "dry run: 2 of 4 stages would run, 1 cached or run, decided as the run goes, nothing started"
    )


# -- the plan and the run decide with one code path -------------------------------------------
def _pipekit(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `pipekit` console script, as a separate process, in the pipeline's folder."""
    return subprocess.run(
        [shutil.which("pipekit") or "pipekit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
        env={**os.environ, **(env or {})},
    )


def _decisions(folder: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    proc = _pipekit(folder, "plan", "--format", "json", *args, env=env)
    decisions = {e["stage"]: (e["decision"], e.get("why", "")) for e in map(json.loads, proc.stdout.splitlines())}
    fails = any(decision == "fail" for decision, _ in decisions.values())
    assert proc.returncode == (1 if fails else 0), proc.stderr  # 1: a stage is certain to fail
    return decisions


def _outcomes(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    proc = _pipekit(folder, "run", "--log-format", "json", "--progress", "plain", *args, env=env)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    [end] = [e for e in events if e["event"] == "run finished"]
    skipped = {e["stage"]: e.get("reason") for e in events if e["event"] == "stage finished" and "reason" in e}
    SKIP_REASONS.update((k, v) for k, v in skipped.items() if v)
    return proc.returncode, {s["stage"]: s["status"] for s in end["stages"]}


SKIP_REASONS: dict[str, str] = {}  # the reason the last run gave for each stage it skipped


# what a stage's decision in the plan means for its status at the end of the run
MEANS = {
    "run": {"succeeded", "failed"},
    "skip": {"skipped"},
    "cached": {"cached"},
    "restored": {"restored"},
    "maybe-cached": {"succeeded", "failed", "cached"},  # its key needs an output the run makes first
    "fail": {"failed"},
}

EQUAL = """\
import pipekit as pk

TARGET = pk.param("target", default="staging")


@pk.stage(cache=pk.inputs("src/**"))
def build(ctx):
    ctx.sh("cat src/*")
    return "v1-" + ctx.params["target"]


@pk.stage(cache=pk.inputs("src/**"))
def unit(ctx, build):
    ctx.sh("test ! -f fail-unit")
    return build + "-tested"


@pk.stage
def lint(ctx):
    ctx.sh("true")


@pk.stage(when=pk.param_is("target", "production"))
def deploy(ctx, unit):
    ctx.sh("echo deploying")


@pk.stage(needs=["deploy"], cache=pk.inputs("src/**"))
def notify(ctx):
    ctx.sh("echo notified")
"""


def _agree(folder: Path, *args: str, env: dict[str, str] | None = None, code: int = 0) -> dict[str, tuple[str, str]]:
    """The plan's decisions, then the run's outcomes with the same options: they agree."""
    planned = _decisions(folder, *args, env=env)
    SKIP_REASONS.clear()
    exit_code, outcomes = _outcomes(folder, *args, env=env)
    assert exit_code == code, outcomes
    assert set(planned) == set(outcomes)
    for stage, (decision, why) in planned.items():
        assert outcomes[stage] in MEANS[decision], (stage, decision, why, outcomes[stage])
        if decision == "skip":  # for the same reason (the plan adds the branch and params it saw)
            assert why.startswith(SKIP_REASONS[stage]), (why, SKIP_REASONS[stage])
    return planned


def test_the_plan_says_what_the_run_then_does(tmp_path: Path) -> None:
    """For params from pyproject.toml and PIPEKIT_PARAM, cache hits and misses, conditions and
    --resume: every decision of `pipekit plan` is what `pipekit run` then does (real processes)."""
    (tmp_path / "pipeline.py").write_text(EQUAL)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    (tmp_path / "pyproject.toml").write_text('[tool.pipekit]\nparams = { target = "production" }\n')

    first = _agree(tmp_path)  # nothing cached yet; the pyproject's target deploys
    assert first["deploy"][0] == "run" and first["build"] == ("run", "no run history yet: nothing cached")

    again = _agree(tmp_path)  # the same params: cached, also the stage that needs build's output
    assert again["build"][0] == "cached" and again["unit"][0] == "cached"

    env = {"PIPEKIT_PARAM": "target=staging"}  # the environment wins over pyproject: a new key, no deploy
    staged = _agree(tmp_path, env=env)
    assert staged["build"][0] == "run" and "params target" in staged["build"][1]
    assert staged["deploy"][0] == "skip" and "target='staging'" in staged["deploy"][1]

    (tmp_path / "src" / "a.txt").write_text("changed")
    (tmp_path / "fail-unit").write_text("")
    failed = _agree(tmp_path, env=env, code=1)
    assert "files changed: src/a.txt" in failed["build"][1]

    (tmp_path / "fail-unit").unlink()
    resumed = _agree(tmp_path, "--resume", env=env)  # build restored, unit runs again (and succeeds)
    assert resumed["build"][0] == "restored" and resumed["lint"][0] == "restored"
    assert resumed["unit"][0] in ("run", "maybe-cached")

    no_check = _agree(tmp_path, "--no-image-check", env=env)  # --no-image-check changes nothing here
    assert no_check["build"][0] == "cached"
    assert no_check["notify"][0] == "cached"  # after a skipped stage: its output is None, known before


def test_plan_and_dry_run_refuse_a_resume_the_run_refuses(tmp_path: Path) -> None:
    """`--resume zzzz` with plan, run --dry-run and run: each says "No run matches" and exits 2."""
    (tmp_path / "pipeline.py").write_text(EQUAL)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    for args in (("plan", "--resume", "zzzz"), ("run", "--resume", "zzzz", "--dry-run"), ("run", "--resume", "zzzz")):
        proc = _pipekit(tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "No run matches 'zzzz'" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert _pipekit(tmp_path, "run").returncode == 0
    for args in (("plan", "--resume", "zzzz"), ("run", "--resume", "zzzz", "--dry-run"), ("run", "--resume", "zzzz")):
        proc = _pipekit(tmp_path, *args)
        assert proc.returncode == 2 and "No run matches 'zzzz'" in proc.stderr, (args, proc.stderr)
    proc = _pipekit(tmp_path, "plan", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "plan: 0 of 5 stages would run, 4 restored" in proc.stdout, proc.stdout


IMAGES = """\
import pipekit as pk


@pk.stage(cache=pk.inputs("Dockerfile"))
def build(ctx):
    return ctx.docker.build(".")


@pk.stage(image=build)
def check(ctx):
    ctx.sh("cat /made-by-build")
    ctx.sh("test ! -f /workspace/fail-check")
"""


def _lose(docker_client: Any, image: str) -> None:
    """Remove an image as a fresh runner would not have it: once no container of the runs uses it
    any more, and until the engine says it is gone."""
    import docker

    deadline = time.monotonic() + 30
    while docker_client.containers.list(all=True, filters={"ancestor": image}) and time.monotonic() < deadline:
        time.sleep(0.2)
    docker_client.images.remove(image, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)


def _image_of(folder: Path, stage: str) -> str:
    from pipekit._history.store import History

    history = History(folder, create=False)
    try:
        run_id = history.resolve("last")
        [row] = [r for r in history.stages(run_id) if r.name == stage]
        assert row.output is not None
        return str(json.loads(row.output)["id"])
    finally:
        history.close()


@pytest.mark.docker
def test_a_cached_or_restored_image_the_engine_lost_makes_the_stage_run_again(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    """A fresh runner with a restored .pipekit: the image a cached (or --resume restored) stage
    made is gone. The plan says "cache miss: image sha256:… is no longer in the engine", and the
    run builds it again (no advice to pull an image id) and the stage in it runs."""
    (tmp_path / "pipeline.py").write_text(IMAGES)
    unique = uuid.uuid4().hex  # an image of its own, whatever else the engine builds meanwhile
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo {unique} > /made-by-build\n")
    made: list[str] = []
    try:
        assert _outcomes(tmp_path) == (0, {"build": "succeeded", "check": "succeeded"})
        made.append(_image_of(tmp_path, "build"))
        assert _decisions(tmp_path)["build"] == ("cached", _decisions(tmp_path)["build"][1])
        assert _outcomes(tmp_path)[1]["build"] == "cached"  # the image is still there: a hit

        _lose(docker_client, made[-1])
        planned = _decisions(tmp_path)
        assert planned["build"] == ("run", f"cache miss: image {made[-1]} is no longer in the engine")
        code, outcomes = _outcomes(tmp_path)
        assert (code, outcomes) == (0, {"build": "succeeded", "check": "succeeded"})
        made.append(_image_of(tmp_path, "build"))

        (tmp_path / "fail-check").write_text("")
        assert _outcomes(tmp_path)[1] == {"build": "cached", "check": "failed"}
        (tmp_path / "fail-check").unlink()
        _lose(docker_client, made[-1])
        planned = _decisions(tmp_path, "--resume")
        assert planned["build"] == (
            "run",
            f"not restored: image {made[-1]} is no longer in the engine; "
            f"cache miss: image {made[-1]} is no longer in the engine",
        )
        proc = _pipekit(tmp_path, "run", "--resume", "--progress", "plain")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        said = proc.stdout + proc.stderr
        assert "could not be pulled" not in said and "is not in the Docker engine" not in said
        assert f"build        | stage not restored reason=not restored: image {made[-1]} is no" in said, said
        assert "check        | = ok" in said and "build        | = ok" in said, said
        made.append(_image_of(tmp_path, "build"))
        assert _outcomes(tmp_path)[1]["build"] == "cached"
    finally:
        for image in made:
            try:
                docker_client.images.remove(image, force=True)
            except Exception:
                pass


RAISES = """\
import pipekit as pk


def broken(info):
    raise KeyError("no such setting")


@pk.stage
def lint(ctx):
    ctx.sh("true")


@pk.stage(when=broken)
def package(ctx, lint):
    ctx.sh("true")


@pk.stage
def publish(ctx, package):
    ctx.sh("true")
"""


def test_a_condition_that_raises_is_planned_as_the_run_ends(tmp_path: Path) -> None:
    """The run fails a stage whose condition raises and skips what needs it (exit 1): the plan
    and the dry run say so, with the same exit code, instead of a usage error."""
    (tmp_path / "pipeline.py").write_text(RAISES)
    planned = _agree(tmp_path, code=1)
    assert planned["package"][0] == "fail" and "KeyError" in planned["package"][1]
    assert planned["publish"] == ("skip", "upstream 'package' failed")
    assert planned["lint"] == ("skip", "not started: 'package' failed")  # the run starts nothing more
    for command in (("plan",), ("run", "--dry-run")):
        proc = _pipekit(tmp_path, *command)
        assert proc.returncode == 1, proc.stderr
        assert "  2. package (host) after lint  [fails: Stage 'package': its condition raised KeyError" in proc.stdout
        last = proc.stdout.splitlines()[-1]
        assert last.endswith("0 of 3 stages would run, 1 fail before anything starts, nothing started")
