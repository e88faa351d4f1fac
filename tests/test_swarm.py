"""The Swarm backend on a real three-node swarm on this machine (tests/swarm_lab.py).

Each node is an engine of its own that cannot see the tests' folders, so every file a stage reads
came through pipekit's workspace copy. Tests that take a node away (drain, a killed engine) put it
back before they end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import StartedRun, exec_events

pytestmark = pytest.mark.docker

ROOT = Path(__file__).parent.parent
BUSYBOX = "pipekit-local/busybox:latest"
WHERE = 'sed -n "s#.*/pk-\\([a-z0-9]*\\)/.*#node=\\1#p" /proc/self/cgroup | head -1'


def _cli(
    lab: Any, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**lab.env(), **(env or {})},
    )


def _run(
    lab: Any, folder: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    proc = _cli(
        lab, "run", "-f", str(folder), "--log-format", "json", "--image-map", f"busybox={BUSYBOX}", *args, env=env
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def _nodes_of(events: list[dict[str, Any]]) -> dict[str, str]:
    """stage -> the node its commands said they ran on (the cgroup parent of each lab engine)."""
    found = {}
    for e in events:
        m = re.fullmatch(r"node=(\w+)", str(e.get("line", "")))
        if e["event"] == "output" and m:
            found[e["stage"]] = m.group(1)
    return found


def _pipeline(tmp_path: Path, code: str) -> Path:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.py").write_text("import pipekit as pk\n\n" + code)
    return folder


def _execs(lab: Any, since: float) -> list[dict[str, Any]]:
    """The exec events of every node's engine since ``since``."""
    import docker

    found = []
    for node in lab.nodes:
        client = docker.DockerClient(base_url=node.host)
        try:
            found += exec_events(client, since)
        finally:
            client.close()
    return found


def _no_leftovers(lab: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (left := lab.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_stages_go_where_their_constraints_say_and_files_travel_between_nodes(swarm: Any, tmp_path: Path) -> None:
    """A stage on worker1 writes a file; its dependent on worker2 reads it; the file is also back
    in the pipeline's folder; nothing stays on any node."""
    folder = _pipeline(
        tmp_path,
        f"""
@pk.stage(image="busybox", placement=["node.labels.lab==worker1"])
def write(ctx):
    ctx.sh({WHERE!r})
    ctx.sh("mkdir -p out && echo written-on-worker1 > out/made.txt")

@pk.stage(image="busybox", placement=["node.labels.lab==worker2"], needs=[write])
def read(ctx):
    ctx.sh({WHERE!r})
    return ctx.sh("cat out/made.txt").stdout.strip()
""",
    )
    since = time.time() - 0.01
    code, events, err = _run(swarm, folder)
    assert code == 0, err
    assert _nodes_of(events) == {"write": "worker1", "read": "worker2"}
    assert _execs(swarm, since) == []  # the commands went to each container's own shell
    assert [e["where"].split(",")[0] for e in events if e["event"] == "stage placed"] == [
        "node pk-worker1",
        "node pk-worker2",
    ]
    assert any(e["event"] == "output" and e.get("line") == "written-on-worker1" for e in events)
    assert (folder / "out" / "made.txt").read_text() == "written-on-worker1\n"
    _no_leftovers(swarm)


def test_swarm_spreads_stages_without_constraints(swarm: Any, tmp_path: Path) -> None:
    """Six stages with no placement: Swarm spreads them over more than one node."""
    folder = _pipeline(
        tmp_path,
        "".join(
            f"""
@pk.stage(image="busybox", name="s{i}")
def s{i}(ctx):
    ctx.sh({WHERE!r} + '; sleep 1')
"""
            for i in range(6)
        ),
    )
    code, events, err = _run(swarm, folder, "-j", "6")
    assert code == 0, err
    nodes = _nodes_of(events)
    assert len(nodes) == 6 and len(set(nodes.values())) >= 2, nodes


def test_services_are_reachable_by_name_across_the_overlay(swarm: Any, tmp_path: Path) -> None:
    folder = _pipeline(
        tmp_path,
        """
GREETER = pk.Service(
    "greeter", image="busybox", command=["sh", "-c", "while true; do echo hello-from-greeter | nc -l -p 7000; done"]
)

@pk.stage(image="busybox", services=[GREETER])
def client(ctx):
    ctx.sh("for i in $(seq 1 20); do nc greeter 7000 </dev/null && exit 0; sleep 0.5; done; exit 1")
""",
    )
    code, events, err = _run(swarm, folder)
    assert code == 0, err
    assert any(e["event"] == "output" and e.get("line") == "hello-from-greeter" for e in events)
    _no_leftovers(swarm)


def test_cache_dirs_are_volumes_on_the_stages_node(swarm: Any, tmp_path: Path) -> None:
    """A cache volume keeps its files between runs of a stage on the same node."""
    folder = _pipeline(
        tmp_path,
        """
@pk.stage(image="busybox", placement=["node.labels.lab==worker1"], cache_dirs=["/cache"])
def warm(ctx):
    ctx.sh("cat /cache/seen 2>/dev/null || echo cold; echo warm > /cache/seen")
""",
    )
    assert _run(swarm, folder, "--no-cache")[0] == 0
    code, events, err = _run(swarm, folder, "--no-cache")
    assert code == 0, err
    assert [e["line"] for e in events if e["event"] == "output"] == ["warm"]
    volumes = swarm.node("worker1").docker("volume", "ls", "-q", "--filter", "label=io.pipekit.cache").stdout.split()
    assert volumes
    swarm.node("worker1").docker("volume", "rm", *volumes)


def test_seed_flow_runs_unchanged_with_its_image_going_through_the_registry(
    swarm: Any, python_base_image: str, tmp_path: Path
) -> None:
    """examples/seed-flow: the image built on the manager is pushed to the swarm's registry and the
    smoke stage runs in it on a worker (the manager is drained), pulled by digest."""
    swarm.load(python_base_image)
    folder = tmp_path / "seed-flow"
    shutil.copytree(ROOT / "examples" / "seed-flow", folder)
    login = {"PIPEKIT_REGISTRY_USER": swarm.registry_user, "PIPEKIT_REGISTRY_PASSWORD": swarm.registry_password}
    env = {**login, "REGISTRY_USER": swarm.registry_user, "REGISTRY_PASSWORD": swarm.registry_password}
    swarm.manager.docker("node", "update", "--availability", "drain", "pk-manager")
    try:
        code, events, err = _run(
            swarm,
            folder,
            "--branch",
            "main",
            "--registry",
            swarm.registry,
            "--param",
            f"registry={swarm.registry}",
            "--param",
            f"base_image={python_base_image}",
            env=env,
        )
    finally:
        swarm.manager.docker("node", "update", "--availability", "active", "pk-manager")
    assert code == 0, err + "\n".join(json.dumps(e) for e in events[-20:])
    [placed] = [e for e in events if e["event"] == "stage placed" and e["stage"] == "smoke"]
    node = placed["where"].split(",")[0].removeprefix("node pk-")
    assert node in ("worker1", "worker2")
    pulled = swarm.node(node).docker("image", "ls", "--digests", "--format", "{{.Repository}}@{{.Digest}}").stdout
    assert f"{swarm.registry}/pipekit/build@sha256:" in pulled
    assert any(e["event"] == "output" and e.get("line") == "{'message': 'hello, world'}" for e in events)
    assert any(e["event"] == "image pushed" for e in events)
    assert swarm.registry_password not in json.dumps(events) + err
    _no_leftovers(swarm)


def test_a_pipeline_that_builds_its_image_needs_a_registry_before_anything_starts(swarm: Any, tmp_path: Path) -> None:
    folder = tmp_path / "seed-flow"
    shutil.copytree(ROOT / "examples" / "seed-flow", folder)
    code, events, err = _run(swarm, folder, env={"PIPEKIT_REGISTRY": ""})
    assert code == 2
    assert "stage 'smoke' runs in the image of stage build" in err and "--registry" in err
    assert not any(e["event"] == "stage started" for e in events)


def test_a_constraint_no_node_satisfies_fails_the_stage_naming_it(swarm: Any, tmp_path: Path) -> None:
    folder = _pipeline(
        tmp_path,
        """
@pk.stage(image="busybox", placement=["node.labels.gpu==true"])
def train(ctx):
    ctx.sh("true")

@pk.stage(image="busybox", resources=pk.Resources(cpus=64))
def huge(ctx):
    ctx.sh("true")
""",
    )
    started = time.monotonic()
    code, events, err = _run(swarm, folder, env={"PIPEKIT_SWARM_PLACEMENT_TIMEOUT": "2"})
    assert code == 1 and time.monotonic() - started < 30
    errors = {e["stage"]: e["error"] for e in events if e["event"] == "stage finished"}
    assert "No node of the swarm satisfies the placement of stage 'train': node.labels.gpu==true" in errors["train"]
    assert "No node of the swarm can run stage 'huge': it asks for 64 CPUs" in errors["huge"]
    _no_leftovers(swarm)


def test_an_engine_that_is_not_a_manager_exits_3(docker_client: Any, tmp_path: Path) -> None:
    folder = _pipeline(tmp_path, '@pk.stage(image="busybox")\ndef s(ctx):\n    ctx.sh("true")\n')
    env = {**os.environ, "DOCKER_HOST": "unix:///var/run/docker.sock"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipekit", "run", "-f", str(folder), "--backend", "swarm"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "is not a swarm manager (swarm: inactive). Run `docker swarm init`" in proc.stderr
    assert "Traceback" not in proc.stderr


LONG = """
@pk.stage(image="busybox", name="{name}", placement=["node.labels.lab=={node}"])
def {name}(ctx):
    ctx.sh("echo up; sleep 60")
"""


@pytest.mark.parametrize("how", ["sigint", "sigterm", "kill"])
def test_nothing_stays_on_any_node_after_sigint_or_kill_and_cleanup(swarm: Any, tmp_path: Path, how: str) -> None:
    """Stages on all three nodes; SIGINT removes everything of the run everywhere. After a kill -9,
    `pipekit cleanup RUN --backend swarm` does."""
    code = "".join(LONG.format(name=f"on_{n}", node=n) for n in ("manager", "worker1", "worker2"))
    folder = _pipeline(tmp_path, code)
    run = StartedRun(folder, BUSYBOX, env=swarm.env())
    assert run.wait_for_lines("up", stages=3) == {"on_manager", "on_worker1", "on_worker2"}
    assert sorted(swarm.where(f"io.pipekit.run={run.run_id}")) == ["manager", "worker1", "worker2"]
    assert sorted({v.split(":")[0] for v in _run_volumes(swarm, run.run_id or "")}) == [
        "manager",
        "worker1",
        "worker2",
    ], "each node holds the run's base copy and the stage's view"
    if how in ("sigint", "sigterm"):
        run.proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        run.finish()
        assert run.proc.returncode == (130 if how == "sigint" else 143)
    else:
        run.proc.kill()
        run.finish()
        assert swarm.leftovers()
        proc = _cli(swarm, "cleanup", run.run_id or "", "-f", str(folder), "--backend", "swarm")
        assert proc.returncode == 0, proc.stderr
        # the history, opened first, finds the run dead and removes what it left; or cleanup does
        assert f"run {run.run_id} left" in proc.stdout
    _no_leftovers(swarm)
    assert _run_volumes(swarm, run.run_id or "") == []


def _run_volumes(lab: Any, run_id: str) -> list[str]:
    """The run's volumes (workspace bases and views) on every node."""
    found = []
    for node in lab.nodes:
        out = node.docker("volume", "ls", "-q", "--filter", f"label=io.pipekit.run={run_id}", check=False).stdout
        found += [f"{node.name}: {v}" for v in out.split()]
    return found


def _retried_elsewhere(events: list[dict[str, Any]], why: str) -> str:
    placed = [e["where"].split(",")[0] for e in events if e["event"] == "stage placed"]
    assert len(placed) == 2 and placed[0] != placed[1], placed
    [retry] = [e for e in events if e["event"] == "stage retrying"]
    assert f"Node {placed[0].removeprefix('node ')} {why} while stage 'long' ran `echo up; sleep 20`" in retry["error"]
    return placed[0].removeprefix("node pk-")


RETRIED = """
@pk.stage(image="busybox", placement=["node.role==worker"], retries=1)
def long(ctx):
    ctx.sh("echo up; sleep 20")
"""


def test_a_drained_node_fails_its_stage_and_the_retry_runs_on_another(swarm: Any, tmp_path: Path) -> None:
    folder = _pipeline(tmp_path, RETRIED)
    run = StartedRun(folder, BUSYBOX, env=swarm.env())
    [placed] = run.wait_for_events("stage placed")
    node = placed["where"].split(",")[0].removeprefix("node ")
    run.wait_for_lines("up")
    swarm.manager.docker("node", "update", "--availability", "drain", node)
    try:
        run.finish(timeout=90)
    finally:
        swarm.manager.docker("node", "update", "--availability", "active", node)
    assert run.proc.returncode == 0
    _retried_elsewhere(run.events, "was drained")
    _no_leftovers(swarm)


def test_a_worker_that_goes_down_fails_its_stage_naming_it(swarm: Any, tmp_path: Path) -> None:
    """The engine of the stage's node is killed mid-stage: the attempt fails naming the node, the
    retry runs on the other worker. When the node is back, `pipekit cleanup` removes what it kept."""
    folder = _pipeline(tmp_path, RETRIED)
    run = StartedRun(folder, BUSYBOX, env=swarm.env())
    [placed] = run.wait_for_events("stage placed")
    name = placed["where"].split(",")[0].removeprefix("node pk-")
    run.wait_for_lines("up")
    node = swarm.node(name)
    node.kill()
    try:
        run.finish(timeout=90)
        assert run.proc.returncode == 0
        _retried_elsewhere(run.events, "went down")
    finally:
        node.start()
    proc = _cli(swarm, "cleanup", "--all", "--backend", "swarm")
    assert proc.returncode == 0, proc.stderr
    _no_leftovers(swarm)


def test_the_stage_cache_artifacts_and_resume_work_unchanged(swarm: Any, tmp_path: Path) -> None:
    """On a swarm: a cached stage starts no task on the re-run; a failed stage resumed runs alone,
    and its upstream's output (and files) come back from the first run."""
    folder = _pipeline(
        tmp_path,
        """
@pk.stage(image="busybox", placement=["node.labels.lab==worker1"], cache=pk.inputs("src.txt"))
def make(ctx):
    ctx.sh("cat src.txt > made.txt")
    ctx.archive("made.txt")
    return ctx.sh("cat made.txt").stdout.strip()

@pk.stage(image="busybox", placement=["node.labels.lab==worker2"])
def use(ctx, make):
    ctx.sh("test -f go")
    return make + "+" + ctx.sh("cat made.txt").stdout.strip()
""",
    )
    (folder / "src.txt").write_text("v1\n")
    code, events, _ = _run(swarm, folder)
    assert code == 1  # `use` fails: no file named go
    first = events[0]["run_id"]
    (folder / "go").write_text("")
    code, events, err = _run(swarm, folder, "--resume")
    assert code == 0, err
    finished = {e["stage"]: e["status"] for e in events if e["event"] == "stage finished"}
    assert finished.get("use") == "succeeded" and "make" not in {
        e["stage"] for e in events if e["event"] == "stage placed"
    }
    (folder / "go").write_text("")
    code, events, err = _run(swarm, folder)
    assert code == 0, err
    statuses = {e["stage"]: e["status"] for e in events if e["event"] == "stage finished"}
    assert statuses == {"make": "cached", "use": "succeeded"}
    assert [e["stage"] for e in events if e["event"] == "stage placed"] == ["use"]
    proc = _cli(swarm, "artifacts", first, "-f", str(folder), "--dest", str(tmp_path / "got"))
    assert proc.returncode == 0, proc.stderr
    assert [p.read_text() for p in (tmp_path / "got").rglob("made.txt")] == ["v1\n"]
    _no_leftovers(swarm)


def test_an_unreachable_manager_exits_3(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path, '@pk.stage(image="busybox")\ndef s(ctx):\n    ctx.sh("true")\n')
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-manager.sock", "PIPEKIT_BACKEND": "swarm"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipekit", "run", "-f", str(folder)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 3
    assert "Cannot reach a Docker engine at unix://" in proc.stderr and "Traceback" not in proc.stderr


def test_resources_become_the_tasks_limits(swarm: Any, tmp_path: Path) -> None:
    """pk.Resources on a swarm: the memory and process limits of the stage's container."""
    folder = _pipeline(
        tmp_path,
        """
@pk.stage(image="busybox", resources=pk.Resources(memory="96m", pids=64))
def limited(ctx):
    ctx.sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max")
""",
    )
    code, events, err = _run(swarm, folder)
    assert code == 0, err
    assert [e["line"] for e in events if e["event"] == "output"] == [str(96 * 2**20), "64"]


def test_fail_fast_stops_the_stages_on_other_nodes_and_leaves_nothing(swarm: Any, tmp_path: Path) -> None:
    folder = _pipeline(
        tmp_path,
        """
@pk.stage(image="busybox", placement=["node.labels.lab==worker1"])
def breaks(ctx):
    ctx.sh("sleep 2; exit 3")

@pk.stage(image="busybox", placement=["node.labels.lab==worker2"])
def long(ctx):
    ctx.sh("sleep 60")
""",
    )
    started = time.monotonic()
    code, events, err = _run(swarm, folder, "--fail-fast")
    assert code == 1 and time.monotonic() - started < 40, err
    statuses = {e["stage"]: e["status"] for e in events if e["event"] == "stage finished"}
    assert statuses["breaks"] == "failed" and statuses["long"] in ("failed", "cancelled", "interrupted"), statuses
    _no_leftovers(swarm)
