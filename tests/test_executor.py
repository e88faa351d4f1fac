"""The executor and the Docker backend together, against a real engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk

pytestmark = pytest.mark.docker
PIPELINES = Path(__file__).parent / "pipelines"


def _interval(result: pk.RunResult, name: str) -> tuple[float, float]:
    r = result.stages[name]
    assert r.started_at is not None and r.finished_at is not None
    return r.started_at, r.finished_at


def test_independent_stages_overlap_in_time(run_on_docker: Any) -> None:
    """Two independent stages run at the same time when jobs allow it."""
    p = pk.Pipeline(name="parallel", image="busybox")

    @p.stage
    def left(ctx):
        ctx.sh("sleep 1")

    @p.stage
    def right(ctx):
        ctx.sh("sleep 1")

    result, _ = run_on_docker(p, jobs=2)
    assert result.status == "succeeded"
    (a0, a1), (b0, b1) = _interval(result, "left"), _interval(result, "right")
    assert a0 < b1 and b0 < a1, "the two stages did not overlap"


def test_jobs_one_runs_stages_one_after_another(run_on_docker: Any) -> None:
    """With -j 1 no two stages overlap."""
    p = pk.Pipeline(name="serial", image="busybox")

    @p.stage
    def left(ctx):
        ctx.sh("sleep 0.3")

    @p.stage
    def right(ctx):
        ctx.sh("sleep 0.3")

    result, _ = run_on_docker(p, jobs=1)
    (a0, a1), (b0, b1) = _interval(result, "left"), _interval(result, "right")
    assert a1 <= b0 or b1 <= a0
    assert result.started == ("left", "right")


def test_a_stage_starts_when_its_own_dependencies_are_done(run_on_docker: Any) -> None:
    """A slow stage does not hold back a chain that does not depend on it (no layer barrier)."""
    p = pk.Pipeline(name="chains", image="busybox")

    @p.stage
    def slow(ctx):
        ctx.sh("sleep 4")

    @p.stage
    def fast(ctx):
        ctx.sh("true")

    @p.stage
    def after_fast(ctx, fast):
        ctx.sh("true")

    result, _ = run_on_docker(p, jobs=3)
    assert result.status == "succeeded"
    assert _interval(result, "after_fast")[0] < _interval(result, "slow")[1]


def test_output_is_streamed_before_the_command_ends(run_on_docker: Any) -> None:
    """Each line reaches the log when it is printed, not when the command ends."""
    p = pk.Pipeline(name="stream", image="busybox")

    @p.stage
    def talk(ctx):
        ctx.sh("echo first; sleep 1.5; echo second >&2")

    result, events = run_on_docker(p)
    assert events.lines("talk") == ["first", "second"]
    first = events.time_of("output", stage="talk", line="first")
    second = events.time_of("output", stage="talk", line="second")
    assert second - first > 1.0
    assert [e["stream"] for e in events.named("output", stage="talk")] == ["stdout", "stderr"]


def test_values_flow_and_env_is_layered(run_on_docker: Any) -> None:
    """Return values reach dependents; env is pipeline, then stage, then call."""
    result, _ = run_on_docker(PIPELINES / "explicit.py")
    assert result.status == "succeeded", result.stages
    assert result.stages["first"].output == "pipeline p"
    assert result.stages["second-stage"].output == ["pipeline p", "stage p", "call"]


def test_sh_result_and_check_false(run_on_docker: Any) -> None:
    """ctx.sh returns exit code, stdout and stderr; check=False does not fail the stage."""
    p = pk.Pipeline(name="result", image="busybox")

    @p.stage
    def probe(ctx):
        r = ctx.sh("echo out; echo err >&2; exit 3", check=False)
        return (r.exit_code, r.stdout, r.stderr, r.ok)

    result, _ = run_on_docker(p)
    assert result.stages["probe"].output == (3, "out\n", "err\n", False)


def test_failure_skips_dependents_and_starts_nothing_new(run_on_docker: Any) -> None:
    """A failed stage skips its dependents, lets running stages finish, and fails the run."""
    p = pk.Pipeline(name="failing", image="busybox")

    @p.stage
    def broken(ctx):
        ctx.sh("echo about to fail; exit 4")

    @p.stage
    def slow(ctx):
        ctx.sh("sleep 1")
        return "done"

    @p.stage
    def after_broken(ctx, broken):
        pass

    @p.stage
    def after_slow(ctx, slow):
        pass

    result, events = run_on_docker(p, jobs=2)
    assert result.status == "failed" and result.exit_code == 1
    assert result["broken"].status == "failed"
    assert "Command exited with code 4 in stage 'broken': echo about to fail; exit 4" in result["broken"].error
    assert "about to fail" in result["broken"].error
    assert result["slow"].status == "succeeded"
    assert result["after_broken"].status == "skipped"
    assert result["after_broken"].reason == "upstream 'broken' failed"
    assert result["after_slow"].status == "skipped"
    assert "not started" in result["after_slow"].reason
    assert "after_slow" not in result.started
    [summary] = events.named("run finished")
    assert [s["status"] for s in summary["stages"]] == ["failed", "succeeded", "skipped", "skipped"]


def test_fail_fast_stops_running_stages(run_on_docker: Any) -> None:
    """--fail-fast stops a long stage as soon as another fails."""
    p = pk.Pipeline(name="fail-fast", image="busybox")

    @p.stage
    def broken(ctx):
        ctx.sh("sleep 0.5; exit 1")

    @p.stage
    def long(ctx):
        ctx.sh("sleep 60")

    result, _ = run_on_docker(p, jobs=2, fail_fast=True)
    assert result["broken"].status == "failed"
    assert result["long"].status == "cancelled"
    assert result.duration_s < 20


def test_command_not_found_says_so(run_on_docker: Any) -> None:
    """A missing command fails with exit 127 and a message naming the image."""
    p = pk.Pipeline(name="missing-cmd", image="busybox")

    @p.stage
    def build(ctx):
        ctx.sh("no-such-tool --version")

    result, _ = run_on_docker(p)
    error = result["build"].error
    assert "code 127" in error
    assert "A command was not found in image" in error
    assert "no-such-tool" in error


def test_stage_exception_shows_the_user_traceback(run_on_docker: Any) -> None:
    """An exception in a stage function fails that stage with the user's frames only."""
    p = pk.Pipeline(name="raises")

    @p.stage
    def compute(ctx):
        return {}["missing-key"]

    result, events = run_on_docker(p)
    error = result["compute"].error
    assert "Stage 'compute' raised KeyError: 'missing-key'" in error
    assert 'test_executor.py", line' in error and "in compute" in error
    assert "pipekit/_executor.py" not in error
    [finished] = events.named("stage finished", stage="compute")
    assert finished["status"] == "failed" and finished["level"] == "error"


def test_missing_image_names_the_image(run_on_docker: Any) -> None:
    """An image that is not local and cannot be pulled fails its stage with the image's name (when
    the check before the run is off; with it on, the run does not start: tests/test_first_day.py)."""
    p = pk.Pipeline(name="no-image")

    @p.stage(image="pipekit-test/does-not-exist:1")
    def build(ctx):
        ctx.sh("true")

    result, _ = run_on_docker(p, check_images=False)
    assert result["build"].status == "failed"
    assert "Image 'pipekit-test/does-not-exist:1' is not in the Docker engine" in result["build"].error
    assert "--image-map" in result["build"].error


def test_workspace_is_mounted_and_the_working_directory(run_on_docker: Any, tmp_path: Path) -> None:
    """The pipeline's folder is /workspace in the container, and files written there persist."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "@pk.stage(image='busybox')\n"
        "def write(ctx):\n"
        "    ctx.sh('echo hello > out.txt')\n"
        "    return ctx.sh('pwd').stdout.strip(), str(ctx.workspace)\n"
    )
    result, _ = run_on_docker(tmp_path / "pipeline.py")
    assert result["write"].output == ("/workspace", str(tmp_path))
    assert (tmp_path / "out.txt").read_text() == "hello\n"


def test_container_is_labelled_and_removed(run_on_docker: Any, docker_client: Any) -> None:
    """While a stage runs its container carries the run id and stage name; afterwards it is gone."""
    p = pk.Pipeline(name="labels", image="busybox")
    seen: dict[str, Any] = {}

    @p.stage
    def look(ctx):
        [c] = docker_client.containers.list(filters={"label": f"io.pipekit.run={ctx.run_id}"})
        seen.update(name=c.name, labels=c.labels, run_id=ctx.run_id)

    result, _ = run_on_docker(p)
    assert result.status == "succeeded"
    assert seen["labels"]["io.pipekit.stage"] == "look"
    assert seen["name"].startswith(f"pipekit-{seen['run_id']}-look-")
    assert not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={seen['run_id']}"})


def test_host_stage_runs_on_this_machine(run_on_docker: Any, tmp_path: Path) -> None:
    """A stage without an image runs ctx.sh on the host, with the layered environment."""
    p = pk.Pipeline(name="host", env={"FROM_PIPELINE": "yes"})

    @p.stage
    def local(ctx):
        return ctx.sh("echo $FROM_PIPELINE $FROM_CALL; echo to-stderr >&2", env={"FROM_CALL": "too"})

    result, events = run_on_docker(p)
    r = result["local"].output
    assert r.stdout == "yes too\n" and r.stderr == "to-stderr\n"
    assert sorted(events.lines("local")) == ["to-stderr", "yes too"]  # two pipes: no order between them
    assert result["local"].status == "succeeded"


def test_host_command_failure(run_on_docker: Any) -> None:
    """A failing host command fails the stage like a container command does."""
    p = pk.Pipeline(name="host-fail")

    @p.stage
    def local(ctx):
        ctx.sh("echo nope; exit 2")

    result, _ = run_on_docker(p)
    assert "Command exited with code 2" in result["local"].error


def test_named_targets_run_only_what_they_need(run_on_docker: Any) -> None:
    """Running a named stage runs it and its upstream stages only."""
    root = Path(__file__).parent.parent / "examples" / "hello"
    result, _ = run_on_docker(root / "pipeline.py", "version")
    assert list(result.stages) == ["version"]
    assert result["version"].output == "1.2.3"


def test_no_engine_image_left_to_chance(docker_client: Any, busybox_image: str) -> None:
    """The shared test image really is the tiny busybox image (guards the fixtures themselves)."""
    out = docker_client.containers.run(busybox_image, ["sh", "-c", "echo ok"], remove=True)
    assert out == b"ok\n"


def test_a_stage_container_is_ready_before_its_upstream_stage_ends(run_on_docker: Any, docker_client: Any) -> None:
    """While `first` runs, the container of `second` (which needs it) is already created and
    started; when `first` fails, that prepared container is removed with the rest."""
    seen: dict[str, Any] = {}

    def pipeline(fail: bool) -> pk.Pipeline:
        p = pk.Pipeline(name="ahead", image="busybox")

        @p.stage
        def first(ctx):
            ctx.sh("true")
            # `second`'s container comes while `first` still runs; on a busy machine a container
            # start takes seconds, so wait for it here (no longer than 60 s: then the test fails)
            label = {"label": [f"io.pipekit.run={ctx.run_id}", "io.pipekit.stage=second"]}
            deadline = time.monotonic() + 60
            while True:
                seen["second"] = [c.status for c in docker_client.containers.list(filters=label)]
                if seen["second"] == ["running"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if fail:
                raise RuntimeError("first fails")

        @p.stage
        def second(ctx, first):
            ctx.sh("true")

        return p

    result, _ = run_on_docker(pipeline(fail=False))
    assert result.status == "succeeded"
    assert seen["second"] == ["running"]
    result, _ = run_on_docker(pipeline(fail=True))  # the fixture checks nothing was left behind
    assert result["second"].status == "skipped"
    assert seen["second"] == ["running"]


def test_a_stage_is_prepared_ahead_only_once_its_upstream_stage_has_its_container(
    docker_client: Any, busybox_image: str
) -> None:
    """Preparing ahead does not compete with the upstream stage's own container start."""
    import io
    import threading
    import time

    from pipekit._backends.docker.backend import DockerBackend

    marks: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    class Timed(DockerBackend):
        def prepare(self, spec: Any) -> Any:
            with lock:
                marks.append(("begin", spec.stage, time.monotonic()))
            handle = super().prepare(spec)
            with lock:
                marks.append(("end", spec.stage, time.monotonic()))
            return handle

    p = pk.Pipeline(name="gated", image=busybox_image)
    p.stage(name="first")(lambda ctx: ctx.sh("sleep 1"))
    p.stage(name="second", needs=["first"])(lambda ctx: ctx.sh("true"))
    result = pk.run(p, backend=Timed(docker_client), log_file=io.StringIO())
    assert result.status == "succeeded"
    at = {(kind, stage): t for kind, stage, t in marks}
    assert at[("begin", "second")] >= at[("end", "first")]
    assert [stage for kind, stage, _ in marks if kind == "begin"] == ["first", "second"]
