"""The workspace by difference on a swarm (issue 25, item 1): pipekit pins each stage to a node it
chooses, keeps the run's base copy of the workspace there, and ships and brings back only
differences, on the real three-node swarm of tests/swarm_lab.py (each node an engine of its own,
with its own data root, that cannot see the tests' folders)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_workspace_delta import EXPECTED, _folder, _tree

import pipekit as pk
from pipekit._backends.swarm.layered import constraint_holds

ROOT = Path(__file__).parent.parent
BUSYBOX = "pipekit-local/busybox:latest"
GIT = ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.com"]


def _backend(lab: Any) -> Any:
    import docker

    from pipekit._backends.swarm.backend import SwarmBackend

    return SwarmBackend(docker.DockerClient(base_url=lab.manager.host), host=lab.manager.host)


def _run(folder: Path, backend: Any, jobs: int = 4) -> tuple[pk.RunResult, list[dict[str, Any]]]:
    log = io.StringIO()
    result = pk.run(
        str(folder / "pipeline.py"),
        backend=backend,
        image_map={"busybox": BUSYBOX},
        log_format="json",
        log_file=log,
        verbose=True,
        jobs=jobs,
    )
    return result, [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]


def _volumes(lab: Any, run_id: str) -> list[str]:
    """The run's volumes on every node."""
    found = []
    for node in lab.nodes:
        out = node.docker("volume", "ls", "-q", "--filter", f"label=io.pipekit.run={run_id}", check=False).stdout
        found += [f"{node.name}: {v}" for v in out.split()]
    return found


def _placed(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["stage"]: e["where"].split(",")[0] for e in events if e.get("event") == "stage placed"}


@pytest.mark.docker
def test_swarm_stages_take_the_workspace_by_difference_and_parallel_ones_are_isolated(
    swarm: Any, tmp_path: Path
) -> None:
    """The delta pipeline of test_workspace_delta.py on the swarm: deletions, folders made anew,
    two stages at once on one node that never see each other's writes; a 4 MB file in the
    workspace travels once (in the base), never again; nothing stays on any node."""
    folder = _folder(tmp_path)
    (folder / "big.bin").write_bytes(os.urandom(4 << 20))
    result, events = _run(folder, _backend(swarm))
    assert result.status == "succeeded", result.stages
    tree = _tree_without(folder, "big.bin")
    assert {k: v for k, v in tree.items() if k != "pipeline.py"} == EXPECTED
    shipped_in = {e["stage"]: e for e in events if e.get("event") == "workspace changes copied in"}
    assert set(shipped_in) == {"first", "left", "right", "last"}, "every stage went by difference"
    assert len({e["base"] for e in shipped_in.values()}) == 1, "one base copy for the whole run"
    assert shipped_in["first"]["base_bytes"] > 4 << 20  # the workspace went once, into the base
    assert shipped_in["first"]["bytes"] == 0
    for stage in ("left", "right", "last"):  # then only what upstream stages changed
        assert 0 < shipped_in[stage]["files"] <= 12 and shipped_in[stage]["bytes"] < 64 << 10, shipped_in[stage]
    placed = _placed(events)
    assert placed["left"] == placed["right"], "the two parallel stages ran on one node (the base's)"
    assert swarm.leftovers() == []
    assert _volumes(swarm, result.run_id) == []


def _tree_without(folder: Path, name: str) -> dict[str, str]:
    data = (folder / name).read_bytes()
    (folder / name).unlink()
    try:
        return _tree(folder)
    finally:
        (folder / name).write_bytes(data)


@pytest.mark.docker
def test_a_node_where_the_overlay_does_not_mount_gets_the_whole_copy(
    swarm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlay the node's kernel refuses (here: an option it does not know) fails the task's
    start; the stage is placed again by Swarm with the whole workspace copied, and succeeds."""
    monkeypatch.setattr("pipekit._backends.docker.layers.OVERLAY_OPTIONS", "no_such_overlay_option")
    folder = _folder(tmp_path)
    backend = _backend(swarm)
    result, events = _run(folder, backend)
    assert result.status == "succeeded", result.stages
    assert {k: v for k, v in _tree(folder).items() if k != "pipeline.py"} == EXPECTED
    assert backend.node_layers.broken, "the node was marked as one without overlays"
    copied = [e for e in events if e.get("event") == "workspace copied in"]
    assert copied, "stages took the whole copy"
    assert swarm.leftovers() == [] and _volumes(swarm, result.run_id) == []


PINNED = """
import pipekit as pk

@pk.stage(image="busybox", placement=["node.labels.lab==worker1"])
def only_on_worker1(ctx):
    ctx.sh("cat data.txt && echo done > out.txt")
"""


@pytest.mark.docker
def test_a_stage_pinned_to_a_node_that_cannot_take_it_is_placed_by_swarm_with_the_whole_copy(
    swarm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned task that Swarm cannot place (here: pipekit's choice made to contradict the
    stage's own constraint) is given up after a few seconds and placed by Swarm, whole copy."""
    from pipekit._backends.swarm.layered import NodeLayers

    worker2 = swarm.node("worker2").docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()
    monkeypatch.setattr(NodeLayers, "choose", lambda self, spec, limits, avoid: self.busy.update([worker2]) or worker2)
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(PINNED)
    (folder / "data.txt").write_text("data\n")
    result, events = _run(folder, _backend(swarm))
    assert result.status == "succeeded", result.stages
    assert _placed(events) == {"only_on_worker1": "node pk-worker1"}
    assert [e for e in events if e.get("event") == "workspace copied in"], "the whole copy"
    assert not [e for e in events if e.get("event") == "workspace changes copied in"]
    assert (folder / "out.txt").read_text() == "done\n"
    assert swarm.leftovers() == [] and _volumes(swarm, result.run_id) == []


FAILS = """
import pipekit as pk

@pk.stage(image="busybox")
def first(ctx):
    ctx.sh("echo one > one.txt")

@pk.stage(image="busybox", needs=["first"])
def breaks(ctx):
    ctx.sh("echo two > two.txt && exit 3")
"""


@pytest.mark.docker
def test_a_failed_run_leaves_no_volume_on_any_node(swarm: Any, tmp_path: Path) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(FAILS)
    result, events = _run(folder, _backend(swarm))
    assert result.status == "failed"
    assert [e for e in events if e.get("event") == "workspace changes copied in"]
    assert swarm.leftovers() == [] and _volumes(swarm, result.run_id) == []


WIPE_AND_LINK = """
import pipekit as pk

@pk.stage(image="busybox")
def wipe(ctx):
    ctx.sh("rm -rf .git src README .pipekit .env.ci data || true")
    ctx.sh("for n in .git .env.ci .pipekit planted; do mknod $n c 0 0 2>/dev/null || true; done")
    ctx.sh("ln -s {victim} data && ln -s ../../.. up && echo made > made.txt")

@pk.stage(image="busybox", needs=["wipe"])
def write_through(ctx):
    ctx.sh("test -e made.txt && test ! -e README && test ! -e src/keep.txt")
    ctx.sh("rm -rf data && mkdir data && echo overwritten > data/file.txt")
"""


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.docker
def test_hostile_deletions_and_links_on_a_swarm_node_change_nothing_private(swarm: Any, tmp_path: Path) -> None:
    """Run as users do (the console script, DOCKER_HOST at the manager): a stage deletes .git,
    .pipekit and the secrets file, plants fake whiteouts and turns a folder into a link out; the
    next one writes through that name. The host's private places are as they were, nothing is
    written outside, and what the stage really deleted is deleted."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("outside\n")
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(WIPE_AND_LINK.replace("{victim}", str(victim)))
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "README").write_text("a project\n")
    (folder / "src").mkdir()
    (folder / "src" / "keep.txt").write_text("source\n")
    (folder / "data").mkdir()
    (folder / "data" / "file.txt").write_text("in the workspace\n")
    subprocess.run([*GIT, "-C", str(folder), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(folder), "commit", "-qm", "first"], check=True)
    (folder / ".env.ci").write_text("TOKEN=keep\n")
    (folder / "pyproject.toml").write_text('[tool.pipekit]\nsecrets-file = ".env.ci"\n')
    (folder / ".pipekit").mkdir()
    (folder / ".pipekit" / "mine").write_text("own\n")
    git_before = _digests(folder / ".git")
    proc = subprocess.run(
        [sys.executable, "-m", "pipekit", "run", "-v", "--log-format", "json", "--image-map", f"busybox={BUSYBOX}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**swarm.env(), "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {e["stage"] for e in events if e.get("event") == "workspace changes copied in"} == {"wipe", "write_through"}
    assert _digests(folder / ".git") == git_before, "the host's .git changed"
    assert (folder / ".env.ci").read_text() == "TOKEN=keep\n"
    assert (folder / ".pipekit" / "mine").read_text() == "own\n"
    assert (victim / "file.txt").read_text() == "outside\n"
    assert not os.path.lexists(folder / "planted") and not os.path.lexists(folder / "up")
    assert (folder / "data" / "file.txt").read_text() == "overwritten\n" and not os.path.islink(folder / "data")
    assert not (folder / "README").exists() and not (folder / "src" / "keep.txt").exists()
    assert any(e.get("event") == "link not copied back" for e in events)
    assert swarm.leftovers() == []


NODE = {
    "ID": "abc123",
    "Description": {
        "Hostname": "Build-1",
        "Platform": {"OS": "linux", "Architecture": "x86_64"},
        "Engine": {"Labels": {"gpu": "yes"}},
    },
    "Spec": {"Role": "worker", "Labels": {"lab": "worker1"}},
}


@pytest.mark.parametrize(
    ("constraint", "holds"),
    [
        ("node.labels.lab==worker1", True),
        ("node.labels.lab == Worker1", True),
        ("node.labels.lab!=worker1", False),
        ("node.labels.missing==x", False),
        ("node.labels.missing!=x", True),
        ("node.hostname==build-1", True),
        ("node.role==manager", False),
        ("node.id!=abc123", False),
        ("node.platform.os==linux", True),
        ("engine.labels.gpu==yes", True),
        ("node.ip==10.0.0.1", None),  # pipekit does not evaluate it: Swarm places that stage
        ("nonsense", None),
    ],
)
def test_placement_constraints_are_read_as_swarm_reads_them(constraint: str, holds: bool | None) -> None:
    assert constraint_holds(NODE, constraint) is holds
