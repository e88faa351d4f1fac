"""Smoke-testing a built image (issue 28 item 3): ``pk.Service(image=<stage>)`` starts the image a
stage built in this run, reachable by name from the stage that uses it; on the real engine,
through the installed ``pipekit`` console script, and in the fake backend."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit.testing import PipelineRunner
from tests.conftest import json_lines
from tests.helpers import run_console

PIPELINE = """
import pipekit as pk

@pk.stage
def build(ctx) -> pk.Image:
    return ctx.docker.build(".", tag="pipekit-test/smoke-app:{token}")

# no healthcheck: healthy once port 8080 accepts connections (the server starts 2 s late)
app = pk.Service("app", image=build, ports=[8080])

@pk.stage(image="{busybox}", services=[app])
def smoke(ctx):
    ctx.sh("wget -q -O- http://app:8080/")
"""

DOCKERFILE = """
FROM {busybox}
RUN mkdir /www && echo "built {token}" > /www/index.html
CMD ["sh", "-c", "sleep 2 && exec httpd -f -p 8080 -h /www"]
"""


def _project(tmp_path: Path, busybox: str, token: str) -> Path:
    (tmp_path / "pipeline.py").write_text(textwrap.dedent(PIPELINE.format(token=token, busybox=busybox)))
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.format(token=token, busybox=busybox))
    return tmp_path


def _left_behind(docker_client: Any, run_id: str) -> list[str]:
    label = {"label": f"io.pipekit.run={run_id}"}
    containers = [c.name for c in docker_client.containers.list(all=True, filters=label)]
    networks = [n.name for n in docker_client.networks.list(filters=label)]
    return containers + networks


@pytest.mark.docker
def test_the_smoke_stage_reaches_the_service_started_from_the_image_just_built(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    token = uuid.uuid4().hex[:12]
    project = _project(tmp_path, busybox_image, token)
    try:
        proc = run_console(["run", "--log-format", "json"], cwd=project, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        events = json_lines(proc.stdout)
        lines = [e["line"] for e in events if e.get("event") == "output" and e.get("stage") == "smoke"]
        assert f"built {token}" in lines  # the page baked into this run's image, served by the service
        [run_id] = {e["run_id"] for e in events if "run_id" in e}
        assert _left_behind(docker_client, run_id) == []
    finally:
        docker_client.images.remove(f"pipekit-test/smoke-app:{token}", force=True)


def test_a_service_from_a_stage_makes_the_stage_depend_on_it(tmp_path: Path) -> None:
    p = pk.Pipeline(name="smoke", image="busybox")

    @p.stage
    def build(ctx: pk.Context) -> pk.Image:
        return ctx.docker.build(".", tag="app:1")

    @p.stage(services=[pk.Service("app", image=build)])
    def smoke(ctx: pk.Context) -> None:
        ctx.sh("wget -q -O- http://app:8000/")

    assert smoke.upstream == ("build",)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = PipelineRunner(base_dir=tmp_path).run(p)
    assert result.order == ("build", "smoke")
    [service] = result.calls("smoke", kind="service")
    assert service.image == result.stages["build"].output.id  # the image built in this run, not a name


def test_a_service_from_a_stage_that_built_no_image_fails_the_stage_clearly(tmp_path: Path) -> None:
    p = pk.Pipeline(name="smoke", image="busybox")

    @p.stage
    def build(ctx: pk.Context) -> str:
        return "app:1"  # a name, not the pk.Image of a build

    @p.stage(services=[pk.Service("app", image=build)])
    def smoke(ctx: pk.Context) -> None:
        ctx.sh("true")

    result = PipelineRunner(base_dir=tmp_path).run(p)
    assert result.stages["smoke"].status == "failed"
    assert result.stages["smoke"].error == (
        "Stage 'smoke' starts service app from the image of stage 'build', which returned str, not a pk.Image."
        " Return ctx.docker.build(...) from 'build'"
    )
    assert result.calls("smoke") == []  # nothing was started


def test_a_service_image_that_is_neither_a_name_nor_a_stage_is_refused() -> None:
    with pytest.raises(pk.PipelineError, match="a stage that returns a pk.Image"):
        pk.Service("app", image=42)  # type: ignore[arg-type]
    with pytest.raises(pk.PipelineError, match=r"ports= takes a list of port numbers like \[8000\], got 8000"):
        pk.Service("app", image="x", ports=8000)  # type: ignore[arg-type]
    assert pk.Service("app", image="x", ports=[8000, 9000]).ports == (8000, 9000)


# -- ctx.docker.run(..., detach=True) ------------------------------------------------------------

DETACHED = """
import pipekit as pk

BUSYBOX = "{busybox}"
SERVE = "sh -c 'mkdir -p /www && echo served-{token} > /www/index.html && exec httpd -f -p 8080 -h /www'"

@pk.stage(image=BUSYBOX)
def smoke(ctx):
    web = ctx.docker.run(BUSYBOX, SERVE, detach=True, name="web")
    ctx.sh("for i in $(seq 1 40); do wget -q -O- http://web:8080/ && exit 0; sleep 0.25; done; exit 1")
    try:
        web.wait(timeout=1)
    except TimeoutError:
        ctx.log.info("web still serving")
    job = ctx.docker.run(BUSYBOX, "sh -c 'echo done-{token}; exit 7'", detach=True, name="job")
    ctx.log.info("job ended", exit_code=job.wait(timeout=60), logs=job.logs())
    ctx.log.info("web stopped", exit_code=web.stop(timeout=1), logs=web.logs())

@pk.stage(image=BUSYBOX, needs=[smoke])
def fails(ctx):
    ctx.docker.run(BUSYBOX, "sleep 300", detach=True, name="sleeper")
    ctx.sh("exit 3")

@pk.stage(needs=[smoke])
def on_host(ctx):
    ctx.docker.run(BUSYBOX, "sleep 300", detach=True, name="lazy")
    raise RuntimeError("the host stage fails too")
"""


@pytest.mark.docker
def test_a_detached_container_is_reachable_by_name_and_removed_when_its_stage_fails(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    token = uuid.uuid4().hex[:12]
    (tmp_path / "pipeline.py").write_text(textwrap.dedent(DETACHED.format(busybox=busybox_image, token=token)))
    proc = run_console(["run", "--log-format", "json"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    events = json_lines(proc.stdout)
    status = {e["stage"]: e["status"] for e in events if e.get("event") == "stage finished"}
    assert status == {"smoke": "succeeded", "fails": "failed", "on_host": "failed"}
    smoke = [e["line"] for e in events if e.get("event") == "output" and e.get("stage") == "smoke"]
    assert f"served-{token}" in smoke  # the stage reached the container by its name
    assert [e for e in events if e.get("event") == "web still serving"]
    [job] = [e for e in events if e.get("event") == "job ended"]
    assert job["exit_code"] == 7 and job["logs"] == f"done-{token}\n"
    [stopped] = [e for e in events if e.get("event") == "web stopped"]
    assert stopped["exit_code"] in (137, 143)  # httpd as PID 1 ignores SIGTERM: killed after 1 s
    started = {e["stage"]: e["container"] for e in events if e.get("event") == "container started"}
    assert set(started) == {"smoke", "fails", "on_host"}
    for stage, prefix in started.items():
        assert docker_client.containers.list(all=True, filters={"id": prefix}) == [], stage
    [run_id] = {e["run_id"] for e in events if "run_id" in e}
    assert _left_behind(docker_client, run_id) == []


def test_detached_containers_in_the_fake_backend(tmp_path: Path) -> None:
    p = pk.Pipeline(name="fake", image="busybox")
    seen: dict[str, Any] = {}

    @p.stage
    def smoke(ctx: pk.Context) -> None:
        web = ctx.docker.run("my-app:1", "python app.py", detach=True, name="web")
        seen["logs"], seen["code"], seen["name"], seen["waited"] = web.logs(), web.stop(), web.name, web.wait()
        ctx.docker.run("my-app:1", "python worker.py", detach=True)  # left for the stage's end to remove

    @p.stage(needs=[smoke])
    def fails(ctx: pk.Context) -> None:
        ctx.docker.run("my-app:1", "python app.py", detach=True, name="web")
        raise RuntimeError("boom")

    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond("python app.py", stdout="listening on 8000", exit_code=143)
    result = runner.run(p)
    assert seen == {"logs": "listening on 8000", "code": 143, "name": "web", "waited": 143}
    assert [c.text for c in result.calls("smoke", kind="detached")] == [
        "web: python app.py",
        "my-app: python worker.py",
    ]
    assert result.stages["fails"].status == "failed"
    assert runner.fake.open_detached == set()  # every one removed, also after the failure


INTERRUPTED = """
import pipekit as pk

@pk.stage(image="busybox")
def in_container(ctx):
    ctx.docker.run("{busybox}", "sleep 300", detach=True, name="bg1")
    ctx.sh("echo started; sleep 60")

@pk.stage
def on_host(ctx):
    ctx.docker.run("{busybox}", "sleep 300", detach=True, name="bg2")
    ctx.sh("echo started; sleep 61")
"""


@pytest.mark.docker
def test_ctrl_c_removes_detached_containers_and_their_networks(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    import signal

    from tests.helpers import StartedRun

    (tmp_path / "pipeline.py").write_text(INTERRUPTED.format(busybox=busybox_image))
    run = StartedRun(tmp_path, busybox_image)
    assert run.wait_for_lines("started", stages=2, timeout=60) == {"in_container", "on_host"}
    assert run.run_id is not None
    running = docker_client.containers.list(filters={"label": f"io.pipekit.run={run.run_id}"})
    assert len(running) == 3  # the stage's container and the two in the background
    run.proc.send_signal(signal.SIGINT)
    _events, err = run.finish(timeout=60)
    assert run.proc.returncode == 130, err
    assert _left_behind(docker_client, run.run_id) == []


def test_a_detached_containers_logs_are_masked(tmp_path: Path) -> None:
    p = pk.Pipeline(name="masked", image="busybox")
    seen: list[str] = []

    @p.stage
    def smoke(ctx: pk.Context) -> None:
        web = ctx.docker.run("my-app:1", "serve", env={"TOKEN": pk.secret("API_TOKEN")}, detach=True)
        seen.append(web.logs())

    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond("serve", stdout="the token is s3cr3t-t0ken-value")
    result = runner.run(p, secrets={"API_TOKEN": "s3cr3t-t0ken-value"})
    assert result.status == "succeeded"
    assert seen and "s3cr3t-t0ken-value" not in seen[0] and seen[0].startswith("the token is ")
    [call] = result.calls("smoke", kind="detached")
    assert "s3cr3t-t0ken-value" not in str(call.env)


TIMED_OUT = """
import pipekit as pk

@pk.stage(image="{busybox}", timeout="3s")
def slow(ctx):
    ctx.docker.run("{busybox}", "sleep 300", detach=True, name="bg")
    ctx.sh("echo started; sleep 60")
"""


@pytest.mark.docker
def test_a_detached_container_is_removed_when_its_stage_times_out(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(TIMED_OUT.format(busybox=busybox_image))
    proc = run_console(["run", "--log-format", "json"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    events = json_lines(proc.stdout)
    [finished] = [e for e in events if e.get("event") == "stage finished"]
    assert finished["status"] == "failed" and "timed out after 3s" in finished["error"]
    [started] = [e["container"] for e in events if e.get("event") == "container started"]
    assert docker_client.containers.list(all=True, filters={"id": started}) == []
    [run_id] = {e["run_id"] for e in events if "run_id" in e}
    assert _left_behind(docker_client, run_id) == []
