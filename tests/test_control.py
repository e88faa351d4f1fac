"""Post actions, timeouts, retries, allowed failures, matrix, services and resource locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import StartedRun

import pipekit as pk

pytestmark = pytest.mark.docker


def _left(docker_client: Any, run_id: str) -> tuple[list[Any], list[Any]]:
    label = {"label": f"io.pipekit.run={run_id}"}
    return docker_client.containers.list(all=True, filters=label), docker_client.networks.list(filters=label)


# -- post actions -----------------------------------------------------------------------------


def test_post_actions_run_in_order_and_see_the_outcome(run_on_docker: Any) -> None:
    """always, then success/failure, then cleanup; each sees status and error; the container is still there."""
    p = pk.Pipeline(name="posts", image="busybox")
    seen: list[tuple[str, str, str | None]] = []

    def record(when: str) -> Any:
        def action(ctx: pk.Context, outcome: pk.Outcome) -> None:
            ctx.sh("true")
            seen.append((when, outcome.status, outcome.error and outcome.error.splitlines()[0]))

        action.__name__ = when
        return action

    posts = {w: record(w) for w in ("always", "success", "failure", "cleanup")}

    @p.stage(post=posts)
    def ok(ctx):
        ctx.sh("true")

    @p.stage(post=posts)
    def broken(ctx):
        ctx.sh("exit 3")

    result, _ = run_on_docker(p, jobs=1)
    assert result["broken"].status == "failed"
    assert seen == [
        ("always", "succeeded", None),
        ("success", "succeeded", None),
        ("cleanup", "succeeded", None),
        ("always", "failed", "Command exited with code 3 in stage 'broken': exit 3"),
        ("failure", "failed", "Command exited with code 3 in stage 'broken': exit 3"),
        ("cleanup", "failed", "Command exited with code 3 in stage 'broken': exit 3"),
    ]


def test_failing_post_action_does_not_hide_the_failure(run_on_docker: Any) -> None:
    """A post action that raises is reported; the stage's own error stays; on success it fails the stage."""
    p = pk.Pipeline(name="bad-post")

    def explode(ctx, outcome):
        raise RuntimeError("notifier down")

    @p.stage(post={"always": explode})
    def broken(ctx):
        ctx.sh("exit 2")

    @p.stage(post={"success": explode})
    def fine(ctx):
        pass

    result, events = run_on_docker(p)
    assert "Command exited with code 2" in result["broken"].error
    assert "notifier down" in result["broken"].post_errors[0]
    assert result["fine"].status == "failed"
    assert "post action 'explode' (success) failed" in result["fine"].error
    assert len(events.named("post action failed")) == 2


def test_pipeline_post_actions(tmp_path: Path, run_on_docker: Any) -> None:
    """@pk.post("failure") runs once after the stages, with the run's outcome."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "@pk.stage\ndef broken(ctx):\n    ctx.sh('exit 1')\n\n"
        "@pk.post('failure')\ndef page(ctx, outcome):\n"
        "    (ctx.workspace / 'paged.txt').write_text(outcome.status + ' ' + outcome.stages['broken'])\n\n"
        "@pk.post('success')\ndef celebrate(ctx, outcome):\n"
        "    (ctx.workspace / 'celebrated.txt').write_text('yes')\n"
    )
    result, _ = run_on_docker(tmp_path / "pipeline.py")
    assert result.status == "failed"
    assert (tmp_path / "paged.txt").read_text() == "failed failed"
    assert not (tmp_path / "celebrated.txt").exists()


def test_unknown_post_key_is_refused() -> None:
    """post= keys are checked when the stage is defined."""
    with pytest.raises(pk.PipelineError, match="post actions run at: always, success, failure, cleanup"):
        pk.stage(post={"fixed": print})(lambda ctx: None)


# -- timeouts and retries ----------------------------------------------------------------------


def test_timed_out_stage_fails_leaves_no_container_and_runs_posts(run_on_docker: Any, docker_client: Any) -> None:
    """A stage over its timeout is stopped, fails 'timed out after 1s', and its post actions still run."""
    p = pk.Pipeline(name="timeout", image="busybox")
    posted: list[str] = []

    def after(ctx, outcome):
        posted.append(ctx.sh("echo post-ran").stdout.strip())

    @p.stage(timeout="1s", post={"always": after})
    def slow(ctx):
        ctx.sh("sleep 60")

    start = time.monotonic()
    result, _ = run_on_docker(p)
    assert time.monotonic() - start < 30
    assert result["slow"].status == "failed" and result["slow"].timed_out
    assert result["slow"].error == "Stage 'slow' timed out after 1s"
    assert posted == ["post-ran"]
    containers, networks = _left(docker_client, result.run_id)
    assert containers == [] and networks == []


def test_run_timeout(tmp_path: Path, busybox_image: str) -> None:
    """--timeout stops the whole run and fails it."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n@pk.stage(image='busybox')\ndef slow(ctx):\n    ctx.sh('sleep 60')\n\n"
        "@pk.stage(needs=[slow])\ndef later(ctx):\n    pass\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipekit",
            "run",
            "-f",
            str(tmp_path),
            "--timeout",
            "1",
            "--image-map",
            f"busybox={busybox_image}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "run timed out after 1s" in proc.stdout
    assert "later" in proc.stdout and "skipped" in proc.stdout


def test_retries_run_again_in_a_fresh_container(run_on_docker: Any) -> None:
    """retries=2 runs a flaky stage up to 3 times, each in a new container; the summary counts attempts."""
    p = pk.Pipeline(name="flaky", image="busybox")
    hosts: list[str] = []

    @p.stage(retries=2, backoff=0.1)
    def flaky(ctx):
        hosts.append(ctx.sh("hostname").stdout.strip())
        if len(hosts) < 3:
            ctx.sh("exit 1")
        return len(hosts)

    result, events = run_on_docker(p)
    assert result["flaky"].status == "succeeded" and result["flaky"].output == 3
    assert result["flaky"].attempts == 3
    assert len(set(hosts)) == 3
    assert [e["attempt"] for e in events.named("stage retrying")] == [1, 2]
    [summary] = events.named("run finished")
    assert summary["stages"][0]["attempts"] == 3


def test_retries_give_up(run_on_docker: Any) -> None:
    """After the last retry the stage fails with the last attempt's error."""
    p = pk.Pipeline(name="always-failing")

    @p.stage(retries=1)
    def broken(ctx):
        ctx.sh("exit 7")

    result, _ = run_on_docker(p)
    assert result["broken"].status == "failed" and result["broken"].attempts == 2
    assert "code 7" in result["broken"].error


def test_allowed_failure_lets_dependents_run_and_the_run_succeed(run_on_docker: Any) -> None:
    """allow_failure=True: reported as allowed_failure, dependents run, the run succeeds with a warning."""
    p = pk.Pipeline(name="allowed")

    @p.stage(allow_failure=True)
    def lint(ctx):
        ctx.sh("exit 1")

    @p.stage(needs=[lint])
    def deploy(ctx):
        return "deployed"

    result, events = run_on_docker(p)
    assert result.status == "succeeded" and result.exit_code == 0
    assert result["lint"].status == "allowed_failure"
    assert result["deploy"].output == "deployed"
    assert result.warnings == ("stage 'lint' failed and is allowed to fail",)
    assert events.named("run warning")


# -- matrix ----------------------------------------------------------------------------------


def test_matrix_instances_run_in_parallel_and_feed_a_mapping(run_on_docker: Any) -> None:
    """One instance per combination, named test[k=v,...], overlapping in time; dependents get a mapping."""
    p = pk.Pipeline(name="matrix")

    @p.stage(
        image="{base}",
        matrix={"base": ["busybox"], "python": ["3.10", "3.11"], "db": ["pg", "sqlite"]},
        exclude=[{"python": "3.10", "db": "sqlite"}],
        include=[{"python": "3.12", "db": "pg", "base": "busybox"}],
    )
    def test(ctx):
        ctx.sh("sleep 1")
        return f"{ctx.matrix['python']}-{ctx.matrix['db']}"

    @p.stage
    def report(ctx, test):
        return dict(test), test[{"base": "busybox", "python": "3.11", "db": "pg"}]

    result, _ = run_on_docker(p, jobs=4)
    names = [n for n in result.stages if n.startswith("test[")]
    assert names == [
        "test[base=busybox,python=3.10,db=pg]",
        "test[base=busybox,python=3.11,db=pg]",
        "test[base=busybox,python=3.11,db=sqlite]",
        "test[base=busybox,python=3.12,db=pg]",
    ]
    spans = [(result[n].started_at, result[n].finished_at) for n in names]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "the instances did not overlap"
    mapping, one = result["report"].output
    assert mapping == {
        "base=busybox,python=3.10,db=pg": "3.10-pg",
        "base=busybox,python=3.11,db=pg": "3.11-pg",
        "base=busybox,python=3.11,db=sqlite": "3.11-sqlite",
        "base=busybox,python=3.12,db=pg": "3.12-pg",
    }
    assert one == "3.11-pg"


def test_a_failing_instance_fails_the_matrix(run_on_docker: Any) -> None:
    """Any instance failing skips the matrix's dependents, unless allow_failure."""
    p = pk.Pipeline(name="matrix-fail")

    @p.stage(matrix={"n": [1, 2]})
    def test(ctx):
        if ctx.matrix["n"] == 2:
            ctx.sh("exit 1")

    @p.stage(needs=[test])
    def after(ctx):
        pass

    result, _ = run_on_docker(p)
    assert result["test[n=1]"].status == "succeeded"
    assert result["test[n=2]"].status == "failed"
    assert result["after"].status == "skipped"


def test_matrix_targets_on_the_command_line() -> None:
    """A matrix stage's name selects all its instances; an instance's name selects one."""
    p = pk.Pipeline(name="m")

    @p.stage(matrix={"v": ["a", "b"]})
    def build(ctx):
        pass

    assert pk.plan(p, ["build"]).order == ("build[v=a]", "build[v=b]")
    assert pk.plan(p, ["build[v=b]"]).order == ("build[v=b]",)


# -- services --------------------------------------------------------------------------------

WEB = pk.Service(
    "web",
    image="busybox",
    command=["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"],
    healthcheck=["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"],
)


def test_service_is_reachable_by_name_and_removed_afterwards(run_on_docker: Any, docker_client: Any) -> None:
    """A healthy sidecar is reachable from the stage by its name; its container and network go afterwards."""
    p = pk.Pipeline(name="services", image="busybox")

    @p.stage(services=[WEB])
    def client(ctx):
        nets = docker_client.networks.list(filters={"label": f"io.pipekit.run={ctx.run_id}"})
        return ctx.sh("wget -q -O- http://web:8080/").stdout.strip(), len(nets)

    result, _ = run_on_docker(p)
    assert result["client"].output == ("hello-from-web", 1)
    containers, networks = _left(docker_client, result.run_id)
    assert containers == [] and networks == []


def test_unhealthy_service_fails_with_its_logs(run_on_docker: Any, docker_client: Any) -> None:
    """A service that never passes its healthcheck fails the stage with the service's last log lines."""
    sick = pk.Service(
        "db",
        image="busybox",
        command=["sh", "-c", "echo starting db; echo cannot open data dir; sleep 60"],
        healthcheck=["false"],
        healthcheck_timeout=1,
    )
    p = pk.Pipeline(name="sick", image="busybox")

    @p.stage(services=[sick])
    def client(ctx):
        pass

    result, _ = run_on_docker(p)
    error = result["client"].error
    assert "Service 'db' (pipekit-local/busybox:latest) of stage 'client' did not become healthy within 1s" in error
    assert "cannot open data dir" in error
    containers, networks = _left(docker_client, result.run_id)
    assert containers == [] and networks == []


# -- resource locks --------------------------------------------------------------------------

LOCKED = """
import time
import pipekit as pk

@pk.stage(resource="deploy-env")
def one(ctx):
    start = time.time(); time.sleep(0.6)
    with open(ctx.workspace / "spans.txt", "a") as f:
        f.write(f"{start} {time.time()}\\n")

@pk.stage(resource="deploy-env")
def two(ctx):
    start = time.time(); time.sleep(0.6)
    with open(ctx.workspace / "spans.txt", "a") as f:
        f.write(f"{start} {time.time()}\\n")
"""


def test_resource_is_held_by_one_stage_at_a_time_across_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stages of each of two simultaneous runs, all on one resource: no two hold it at once."""
    env = {**os.environ, "PIPEKIT_LOCK_DIR": str(tmp_path / "locks")}
    (tmp_path / "pipeline.py").write_text(LOCKED)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipekit", "run", "-f", str(tmp_path), "-j", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    spans = sorted(tuple(map(float, line.split())) for line in (tmp_path / "spans.txt").read_text().splitlines())
    assert len(spans) == 4
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"two holders at once: {spans}"
    assert any("waiting for resource" in out for out, _ in outs)


# -- interrupts --------------------------------------------------------------------------------

INTERRUPTED = """
import pipekit as pk

def mark(ctx, outcome):
    (ctx.workspace / f"stage-post-{outcome.status}.txt").write_text("ran")

@pk.stage(image="busybox", post={"always": mark})
def slow(ctx):
    ctx.sh("echo started; sleep 60")

@pk.post("failure")
def on_failure(ctx, outcome):
    (ctx.workspace / f"pipeline-post-{outcome.status}.txt").write_text("ran")
"""


def test_post_actions_run_after_an_interrupted_run(tmp_path: Path, busybox_image: str, docker_client: Any) -> None:
    """SIGTERM: the stage's and the pipeline's post actions run, then everything is removed."""
    (tmp_path / "pipeline.py").write_text(INTERRUPTED)
    run = StartedRun(tmp_path, busybox_image)
    run.wait_for_lines("started")
    run.proc.send_signal(signal.SIGTERM)
    _, err = run.finish()
    assert run.proc.returncode == 143, err
    assert (tmp_path / "stage-post-cancelled.txt").exists()
    assert (tmp_path / "pipeline-post-interrupted.txt").exists()
    assert run.run_id is not None
    containers, networks = _left(docker_client, run.run_id)
    assert containers == [] and networks == []


def test_a_stage_stuck_in_python_is_left_behind_after_its_timeout() -> None:
    """A timeout cannot stop Python code; the run fails the stage and goes on instead of hanging."""
    from pipekit.testing import PipelineRunner

    p = pk.Pipeline(name="stuck")

    @p.stage(timeout=0.5)
    def stuck(ctx):
        time.sleep(12)

    @p.stage
    def other(ctx):
        return "ran"

    start = time.monotonic()
    result = PipelineRunner(base_dir=Path(__file__).parent).run(p)
    assert time.monotonic() - start < 10
    assert result.stages["stuck"].status == "failed" and result.stages["stuck"].timed_out
    assert "did not stop and was left running" in result.stages["stuck"].error
    assert result.stages["other"].output == "ran"
