"""Copy mode by difference (issue 25): the workspace goes once per run to an engine as a base copy,
each stage sees it through a layer of its own, only changes travel, and everything made for it
goes at the end of the run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import run_console

import pipekit as pk
from pipekit._backends.docker.backend import DockerBackend
from pipekit._backends.docker.engine import LABEL_MANAGED, LABEL_OWNER, LABEL_RUN
from pipekit._backends.docker.layers import LABEL_BASE, LABEL_BASE_OK, LABEL_BASE_PATH, LABEL_LOWER
from pipekit._workspace.delta import changed_since, shipped, stat_tree, topmost
from pipekit._workspace.keptbase import base_key, base_path_label, records_dir

ROOT = Path(__file__).parent.parent

# a stage that deletes a file, makes a folder anew (opaque), changes one kind into another; two
# stages at once that must not see each other's writes; a last one that sees everything
PIPELINE = """
import pipekit as pk

pipeline = pk.Pipeline(name="delta", image="busybox")


@pipeline.stage
def first(ctx):
    ctx.sh("echo a > a.txt && rm old.txt && rm -rf remade && mkdir remade && echo n > remade/new")
    ctx.sh("rm -rf shape && echo now-a-file > shape && rm file-to-dir && mkdir file-to-dir && echo x > file-to-dir/x")
    ctx.sh("echo temp > temp.txt")
    ctx.archive("temp.txt")  # brings the stage's files back before it goes on
    ctx.sh("rm temp.txt && echo temp2 > temp2.txt")  # a name that came back, then went


@pipeline.stage
def left(ctx, first):
    ctx.sh("cat a.txt && test ! -e old.txt && test ! -e remade/f1 && cat remade/new shape file-to-dir/x")
    ctx.sh("echo left > left.txt && sleep 2 && test ! -e right.txt && test ! -e temp.txt")
    ctx.sh("rm keep/k1 && echo changed > keep/k2 && mv moved moved-here && chmod 600 moved-here/m")


@pipeline.stage
def right(ctx, first):
    ctx.sh("echo right > right.txt && sleep 2 && test ! -e left.txt && test -e keep/k1 && rm temp2.txt")


@pipeline.stage
def last(ctx, left, right):
    ctx.sh("cat left.txt right.txt keep/k2 && test ! -e keep/k1 && test ! -e temp2.txt && test ! -e old.txt")
    ctx.sh("test ! -e moved && cat moved-here/m")
"""


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(PIPELINE)
    (folder / "old.txt").write_text("old\n")
    # (a folder renamed by a stage: its content must come back whole, not as an overlay redirect)
    for name, files in {"remade": ["f1", "f2"], "keep": ["k1", "k2"], "shape": ["s"], "moved": ["m"]}.items():
        (folder / name).mkdir()
        for f in files:
            (folder / name / f).write_text(f"{name}/{f}\n")
    (folder / "file-to-dir").write_text("a file\n")
    return folder


def _run(folder: Path, backend: DockerBackend, busybox_image: str) -> tuple[pk.RunResult, list[dict[str, Any]]]:
    log = io.StringIO()
    result = pk.run(
        str(folder / "pipeline.py"),
        backend=backend,
        image_map={"busybox": busybox_image},
        log_format="json",
        log_file=log,
        verbose=True,
        record=True,
        jobs=4,
    )
    return result, [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]


def _tree(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".pipekit"):
            continue
        found[rel] = "/" if path.is_dir() else path.read_text()
    return found


def _bases(client: Any, folder: Path) -> list[str]:
    """The complete bases of ``folder`` the engine keeps (their names, newest first)."""
    listing = (client.api.volumes(filters={"label": LABEL_BASE}) or {}).get("Volumes") or []
    path = base_path_label(folder)
    mine = [v for v in listing if (v.get("Labels") or {}).get(LABEL_BASE_PATH) == path]
    ok = {(v.get("Labels") or {}).get(LABEL_BASE_OK) for v in mine}
    bases = sorted((v for v in mine if v["Name"] in ok), key=lambda v: v.get("CreatedAt", ""), reverse=True)
    return [v["Name"] for v in bases]


def _volumes(client: Any, run_id: str) -> list[str]:
    listing = client.api.volumes(filters={"label": f"{LABEL_RUN}={run_id}"}) or {}
    return [v["Name"] for v in listing.get("Volumes") or []]


EXPECTED = {
    "a.txt": "a\n",
    "file-to-dir": "/",
    "file-to-dir/x": "x\n",
    "keep": "/",
    "keep/k2": "changed\n",
    "left.txt": "left\n",
    "moved-here": "/",
    "moved-here/m": "moved/m\n",
    "remade": "/",
    "remade/new": "n\n",
    "right.txt": "right\n",
    "shape": "now-a-file\n",
}


@pytest.mark.docker
@pytest.mark.parametrize("packed", [True, False], ids=["erofs-image", "unpacked"])
def test_only_differences_travel_and_parallel_stages_are_isolated(
    docker_client: Any, busybox_image: str, tmp_path: Path, packed: bool
) -> None:
    """Both kinds of base: an EROFS image the engine mounts (a kernel that can), the workspace
    unpacked in the volume (any other)."""
    folder = _folder(tmp_path)
    backend = DockerBackend(docker_client, workspace="copy")
    if packed and not backend.layers._packs():
        pytest.skip("this engine's kernel does not mount EROFS image files (Linux 6.12+)")
    backend.layers.packed = packed
    result, events = _run(folder, backend, busybox_image)
    (base,) = _bases(docker_client, folder)
    assert _base_mount(docker_client, base)[1] == ("ws" if packed else ".")
    assert result.status == "succeeded", result.stages
    assert {k: v for k, v in _tree(folder).items() if k != "pipeline.py"} == EXPECTED
    assert (folder / "moved-here" / "m").stat().st_mode & 0o777 == 0o600  # a chmod comes back too
    shipped_in = {e["stage"]: e for e in events if e.get("event") == "workspace changes copied in"}
    assert set(shipped_in) == {"first", "left", "right", "last"}, "every stage went by difference"
    assert len({e["base"] for e in shipped_in.values()}) == 1, "one base copy for the whole run"
    assert shipped_in["first"]["files"] == 0 and shipped_in["first"]["bytes"] == 0
    # what `first` changed, not the whole tree (the base holds it)
    assert 0 < shipped_in["left"]["files"] <= 10
    assert _volumes(docker_client, result.run_id) == [], "the run's volumes are removed at its end"
    assert _containers(docker_client, result.run_id) == [], "and its containers (the holder of the image's mount)"


def _containers(client: Any, run_id: str) -> list[str]:
    return [c["Names"][0] for c in client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})]


@pytest.mark.docker
def test_an_engine_that_does_not_mount_the_image_gets_an_unpacked_base(
    docker_client: Any, busybox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's mount fails (here: an option the kernel does not know, as on a kernel without
    file-backed EROFS): the run makes an unpacked base instead, goes on and succeeds, and leaves
    neither the image nor its mount's volume."""
    monkeypatch.setattr("pipekit._backends.docker.layers.EROFS_OPTIONS", "ro,no_such_option")
    folder = _folder(tmp_path)
    backend = DockerBackend(docker_client, workspace="copy")
    backend.layers.packed = True
    result, events = _run(folder, backend, busybox_image)
    assert result.status == "succeeded", result.stages
    assert backend.layers.packed is False
    assert {k: v for k, v in _tree(folder).items() if k != "pipeline.py"} == EXPECTED
    (base,) = _bases(docker_client, folder)
    assert _base_mount(docker_client, base) == (base, ".")
    listing = (docker_client.api.volumes(filters={"label": "io.pipekit.workspace-base.fs"}) or {}).get("Volumes") or []
    assert not [v["Name"] for v in listing if v["Name"].startswith(base[:25])], "no image volume left"
    assert _containers(docker_client, result.run_id) == []


@pytest.mark.docker
def test_the_whole_copy_is_still_right_where_overlays_do_not_mount(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """Also a folder one of two parallel stages moves away: the other stage, which left it as it
    got it, does not bring it back (its whole tree comes back; what it kept as it was is left as
    it is here)."""
    folder = _folder(tmp_path)
    backend = DockerBackend(docker_client, workspace="copy")
    backend.layers.works = False  # what an engine whose overlay volumes do not mount falls back to
    result, events = _run(folder, backend, busybox_image)
    assert result.status == "succeeded", result.stages
    assert {k: v for k, v in _tree(folder).items() if k != "pipeline.py"} == EXPECTED
    assert not [e for e in events if e.get("event") == "workspace changes copied in"]


@pytest.mark.docker
def test_a_failed_run_removes_its_volumes_and_a_lost_runs_volumes_are_swept(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(
        'import pipekit as pk\n\n\n@pk.stage(image="busybox")\ndef boom(ctx):\n    ctx.sh("echo x > x && exit 3")\n'
    )
    backend = DockerBackend(docker_client, workspace="copy")
    result, events = _run(folder, backend, busybox_image)
    assert result.status == "failed"
    assert [e for e in events if e.get("event") == "workspace changes copied in"]
    assert _volumes(docker_client, result.run_id) == []
    # a run killed with -9 leaves volumes only: the sweep of lost runs finds and removes them
    lost = "deltalost" + os.urandom(3).hex()
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {LABEL_MANAGED: "true", LABEL_RUN: lost, LABEL_OWNER: f"{socket.gethostname()}:{dead.pid}"}
    docker_client.api.create_volume(f"pipekit-{lost}-x-base", labels=labels)
    assert lost in backend.leftovers()
    assert lost in backend.sweep()
    assert _volumes(docker_client, lost) == []


@pytest.mark.docker
def test_the_remote_engine_takes_the_workspace_by_difference(remote_engine: Any, tmp_path: Path) -> None:
    import docker

    folder = _folder(tmp_path)
    client = docker.DockerClient(base_url=remote_engine.host)
    try:
        backend = DockerBackend(client, host=remote_engine.host)
        assert backend.capabilities.layered_workspace
        result, events = _run(folder, backend, "pipekit-local/busybox:latest")
        assert result.status == "succeeded", result.stages
        assert backend.layers.works, "overlay volumes mount on the remote engine"
        assert {k: v for k, v in _tree(folder).items() if k != "pipeline.py"} == EXPECTED
        assert _volumes(client, result.run_id) == []
    finally:
        client.close()


REBASE = """
import pipekit as pk

pipeline = pk.Pipeline(name="rebase", image="busybox")


@pipeline.stage
def many(ctx):
    ctx.sh("mkdir made && for i in 1 2 3 4 5 6; do echo $i > made/$i; done && rm gone.txt")


@pipeline.stage
def middle(ctx, many):
    ctx.sh("cat made/6 && test ! -e gone.txt")


@pipeline.stage
def end(ctx, middle):
    ctx.sh("sleep 1")


@pipeline.stage
def final(ctx, end):
    ctx.sh("cat made/1 made/6 && test ! -e gone.txt")
"""


@pytest.mark.docker
def test_a_new_base_is_made_when_the_workspace_moved_far_from_it(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(REBASE)
    (folder / "gone.txt").write_text("deleted by the first stage\n")
    backend = DockerBackend(docker_client, workspace="copy")
    backend.layers.rebase_at = (3, 1 << 20)
    result, events = _run(folder, backend, busybox_image)
    assert result.status == "succeeded", result.stages
    shipped_in = {e["stage"]: e for e in events if e.get("event") == "workspace changes copied in"}
    assert shipped_in["middle"]["base"] == shipped_in["many"]["base"] and shipped_in["middle"]["files"] >= 7
    # (``end`` may have been prepared before ``middle`` started; ``final`` was prepared after)
    assert shipped_in["final"]["base"] != shipped_in["many"]["base"], "a new base after 7 names on top of the first"
    assert shipped_in["final"]["files"] == 0 and shipped_in["final"]["gone"] == 0
    assert _volumes(docker_client, result.run_id) == []


# -- the manifests, without an engine ---------------------------------------------------------
def test_a_stat_manifest_sees_every_change_without_reading_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("one")
    (tmp_path / "same").write_text("same")
    (tmp_path / ".pipekit").mkdir()
    (tmp_path / ".pipekit" / "state").write_text("never travels")
    secret = tmp_path / "secrets.env"
    secret.write_text("TOKEN=x")
    os.link(secret, tmp_path / "secret-again")
    before = shipped(tmp_path, [str(secret)])
    assert set(before) == {"d", "d/f", "same"}, "not .pipekit, not the secrets file under any name"
    st = (tmp_path / "d" / "f").stat()
    (tmp_path / "d" / "f").write_text("two")  # same size, and the mtime put back: the ctime still moves
    os.utime(tmp_path / "d" / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    (tmp_path / "same").rename(tmp_path / "renamed")
    (tmp_path / "link").symlink_to("d")
    changed, gone = changed_since(before, shipped(tmp_path, [str(secret)]))
    assert changed == ["d/f", "link", "renamed"]
    assert gone == ["same"]


def test_a_gone_folder_is_one_name_and_a_folder_is_not_changed_by_what_is_in_it(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_text("c")
    (tmp_path / "k").mkdir()
    before = stat_tree(tmp_path, (), ())
    for p in [tmp_path / "a" / "b" / "c", tmp_path / "a" / "b", tmp_path / "a"]:
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "k" / "new").write_text("n")
    changed, gone = changed_since(before, stat_tree(tmp_path, (), ()))
    assert changed == ["k/new"] and gone == ["a"]
    assert topmost(["x/y", "x", "xy", "z/1", "z/2"]) == ["x", "xy", "z/1", "z/2"]


@pytest.mark.docker
def test_a_kept_stage_keeps_its_view_of_the_workspace_until_it_is_cleaned_up(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(
        'import pipekit as pk\n\n\n@pk.stage(image="busybox")\ndef boom(ctx):\n    ctx.sh("echo mine > x && exit 3")\n'
    )
    (folder / "given.txt").write_text("from the base\n")
    backend = DockerBackend(docker_client, workspace="copy")
    result = pk.run(
        str(folder / "pipeline.py"),
        backend=backend,
        image_map={"busybox": busybox_image},
        log_format="json",
        log_file=io.StringIO(),
        keep_failed=True,
    )
    assert result.status == "failed"
    try:
        kept = backend.kept_container(result.run_id, "boom")
        assert kept is not None
        run = docker_client.api.exec_create(kept, ["cat", "/workspace/given.txt", "/workspace/x"])
        assert docker_client.api.exec_start(run) == b"from the base\nmine\n", "the kept view still has its base"
        base = _bases(docker_client, folder)[0]
        mounts = docker_client.api.inspect_container(kept)["Mounts"]
        assert base not in {m.get("Name") for m in mounts}, "a base is never mounted where a stage runs"
        assert backend.drop_workspace_bases(folder) == [], "a base a kept view stacks stays"
        assert _bases(docker_client, folder) == [base]
    finally:
        backend.drop_kept(result.run_id)
    assert _volumes(docker_client, result.run_id) == []
    assert backend.drop_workspace_bases(folder) == [base] and _bases(docker_client, folder) == []


NOT_ROOT = """
import pipekit as pk

pipeline = pk.Pipeline(name="notroot", image="busybox")


@pipeline.stage
def delete(ctx):
    ctx.sh("rm old.txt")


@pipeline.stage(image="{image}")
def after(ctx, delete):
    ctx.sh("true")
"""


@pytest.mark.docker
def test_a_stage_that_cannot_remove_what_was_deleted_is_told_why(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """Deletions since the base copy are made with the image's `rm`, as the stage's user: when that
    fails (here a user that may not write in /workspace), the stage fails with a message that says
    what to do (not a traceback)."""
    tag = f"pipekit-test-not-root:{os.getpid()}"
    docker_client.images.build(fileobj=io.BytesIO(f"FROM {busybox_image}\nUSER 65534\n".encode()), tag=tag, rm=True)
    try:
        folder = tmp_path / "ws"
        folder.mkdir()
        (folder / "pipeline.py").write_text(NOT_ROOT.replace("{image}", tag))
        (folder / "old.txt").write_text("deleted by the first stage\n")
        backend = DockerBackend(docker_client, workspace="copy")
        result, _events = _run(folder, backend, busybox_image)
        assert result.stages["delete"].status == "succeeded"
        error = result.stages["after"].error or ""
        assert "could not be removed from its copy" in error and "Permission denied" in error, error
        assert "with the image's `rm`, as the stage's user" in error
        assert _volumes(docker_client, result.run_id) == []
    finally:
        docker_client.images.remove(tag, force=True)


# -- the base kept across runs ----------------------------------------------------------------
AGAIN = """
import pipekit as pk

pipeline = pk.Pipeline(name="again", image="busybox")


@pipeline.stage
def look(ctx):
    ctx.sh("cat a.txt new.txt && test ! -e gone.txt && cat d/f5 && echo a > a.txt")


@pipeline.stage
def then(ctx, look):
    ctx.sh("rm -rf d && echo mine > a.txt")
"""


@pytest.mark.docker
def test_the_next_run_ships_only_what_changed_since_the_base_it_left(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """A run leaves its base copy in the engine; the next run of the folder uses it and ships only
    what changed on this machine since (a change, a new file, a deletion); what stages did in the
    first run never reaches the base (they wrote in their own layers)."""
    folder = tmp_path / "ws"
    (folder / "d").mkdir(parents=True)
    (folder / "pipeline.py").write_text(AGAIN.replace("cat a.txt new.txt && ", "cat a.txt && "))
    (folder / "a.txt").write_text("first\n")
    (folder / "gone.txt").write_text("g\n")
    for i in range(10):
        (folder / "d" / f"f{i}").write_text(f"{i}\n")
    first, events = _run(folder, DockerBackend(docker_client, workspace="copy"), busybox_image)
    assert first.status == "failed"  # (gone.txt is still there: `look` fails, `then` never runs)
    made = [e for e in events if e.get("event") == "workspace changes copied in"]
    assert made[0]["base_kept"] is False and made[0]["base_bytes"] > 0
    assert _bases(docker_client, folder) == [made[0]["base"]], "the base stays after the run"
    record = json.loads((records_dir(folder) / f"{made[0]['base']}.json").read_text())
    assert record["created"] == docker_client.api.inspect_volume(made[0]["base"])["CreatedAt"]
    assert _volumes(docker_client, first.run_id) == [], "the stages' volumes go at the run's end"

    (folder / "pipeline.py").write_text(AGAIN)
    (folder / "new.txt").write_text("new\n")
    (folder / "gone.txt").unlink()
    second, events = _run(folder, DockerBackend(docker_client, workspace="copy"), busybox_image)
    assert second.status == "succeeded", second.stages
    shipped_in = {e["stage"]: e for e in events if e.get("event") == "workspace changes copied in"}
    look = shipped_in["look"]
    assert look["base"] == made[0]["base"] and look["base_kept"] is True, "the first run's base, used again"
    assert (look["files"], look["gone"]) == (2, 1), "pipeline.py and new.txt in, gone.txt out: nothing else"
    assert shipped_in["then"]["base"] == look["base"]
    assert (folder / "a.txt").read_text() == "mine\n" and not (folder / "d").exists()
    assert _volumes(docker_client, second.run_id) == []

    # what the stages of both runs wrote is in no base: a helper reads the base itself
    base = _bases(docker_client, folder)[0]
    volume, top = _base_mount(docker_client, base)
    out = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", f"cd /b/{top} && cat a.txt d/f5 gone.txt"],
        volumes={volume: {"bind": "/b", "mode": "ro"}},
        remove=True,
    )
    assert out == b"first\n5\ng\n", "the base is as this machine sent it"


def _base_mount(client: Any, base: str) -> tuple[str, str]:
    """The volume that shows what ``base`` holds, and the folder in it: the volume that mounts its
    EROFS image (``ws`` in it), or the base itself (unpacked)."""
    import docker.errors

    try:
        client.api.inspect_volume(f"{base}-fs")
    except docker.errors.NotFound:
        return base, "."
    return f"{base}-fs", "ws"


@pytest.mark.docker
def test_a_base_whose_record_does_not_match_is_never_used(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """What a base holds is what this machine's record says, for that very volume: a record that
    names another volume's creation (a volume made again under the name) makes a new base; so does
    a secrets file that moved into the workspace (another key: a base that holds it is not used)."""
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(AGAIN.replace("cat a.txt new.txt && test ! -e gone.txt && cat d/f5 && ", ""))
    _run(folder, DockerBackend(docker_client, workspace="copy"), busybox_image)
    base = _bases(docker_client, folder)[0]
    record = records_dir(folder) / f"{base}.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "created": "2000-01-01T00:00:00Z"}))
    _result, events = _run(folder, DockerBackend(docker_client, workspace="copy"), busybox_image)
    look = next(e for e in events if e.get("event") == "workspace changes copied in")
    assert look["base"] != base and look["base_kept"] is False
    assert base_key(folder, []) != base_key(folder, [str(folder / "a.txt")])


@pytest.mark.docker
def test_the_sweep_removes_replaced_and_unfinished_bases_never_one_in_use(docker_client: Any, tmp_path: Path) -> None:
    """Of one folder's bases: the newest complete one stays (the next run's), an older one goes,
    one never completed by a process now gone goes, one being made (its process alive) stays, and
    one a stage's view stacks stays whatever its age."""
    backend = DockerBackend(docker_client, workspace="copy")
    backend.layers.drop_grace = 0  # (other processes' sweeps keep the default: they leave these alone)
    key, path = f"test-{os.getpid()}-{tmp_path.name}"[:40], base_path_label(tmp_path)
    api = docker_client.api
    names = {
        what: f"pipekit-base-test-{os.urandom(4).hex()}-{what}" for what in ("old", "used", "new", "dead", "alive")
    }
    labels = {LABEL_MANAGED: "true", LABEL_BASE: key, LABEL_BASE_PATH: path}
    try:
        for what in ("old", "used", "new"):  # complete, oldest first
            api.create_volume(names[what], labels={**labels, LABEL_OWNER: "nowhere:1"})
            api.create_volume(names[what] + "-ok", labels={**labels, LABEL_BASE_OK: names[what]})
            time.sleep(1.1)  # (CreatedAt has seconds)
        api.create_volume(names["dead"], labels={**labels, LABEL_OWNER: f"{socket.gethostname()}:999999999"})
        api.create_volume(names["alive"], labels={**labels, LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}"})
        api.create_volume(names["used"] + "-view", labels={LABEL_MANAGED: "true", LABEL_LOWER: names["used"]})
        backend.sweep()  # (the bases go in a thread of their own: off the run's critical path)
        expected = {names["used"], names["used"] + "-ok", names["new"], names["new"] + "-ok", names["alive"]}
        deadline = time.monotonic() + 60
        while True:
            listing = (api.volumes(filters={"label": f"{LABEL_BASE}={key}"}) or {}).get("Volumes") or []
            left = {v["Name"] for v in listing}
            if left == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left == expected
    finally:
        for name in [n + "-view" for n in names.values()] + [n + "-ok" for n in names.values()] + list(names.values()):
            with contextlib.suppress(Exception):
                api.remove_volume(name)


@pytest.mark.docker
def test_an_image_base_without_its_mount_volume_is_gone_not_unpacked(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """A base that is an image, whose ``NAME-fs`` went (half removed by a sweep or by hand), is
    never taken for an unpacked base (its stages would see ``base.erofs`` as the workspace): the
    next run makes a new base and its stage sees the folder."""
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text(
        'import pipekit as pk\n\n\n@pk.stage(image="busybox")\ndef look(ctx):\n    ctx.sh("cat a.txt")\n'
    )
    (folder / "a.txt").write_text("a\n")
    backend = DockerBackend(docker_client, workspace="copy")
    if not backend.layers._packs():
        pytest.skip("this engine's kernel does not mount EROFS image files (Linux 6.12+)")
    first, _ = _run(folder, backend, busybox_image)
    assert first.status == "succeeded", first.stages
    (base,) = _bases(docker_client, folder)
    docker_client.api.remove_volume(f"{base}-fs")
    second, events = _run(folder, DockerBackend(docker_client, workspace="copy"), busybox_image)
    assert second.status == "succeeded", second.stages
    used = {e["base"] for e in events if e.get("event") == "workspace changes copied in"}
    assert used and base not in used, "a new base, not the one without its mount"


@pytest.mark.docker
def test_the_volume_that_mounted_a_gone_base_is_swept(docker_client: Any) -> None:
    """A base removed by hand (or by an older pipekit) leaves the volume that mounted its image:
    the sweep removes it; one whose base is there stays."""
    from pipekit._backends.docker.layers import LABEL_BASE_FS

    api = docker_client.api
    gone, kept = (f"pipekit-base-test-{os.urandom(4).hex()}" for _ in range(2))
    api.create_volume(kept, labels={LABEL_MANAGED: "true", LABEL_BASE: "test-fs-sweep"})
    for base in (gone, kept):
        api.create_volume(f"{base}-fs", labels={LABEL_MANAGED: "true", LABEL_BASE_FS: base})
    try:
        DockerBackend(docker_client, workspace="copy").layers.drop_bases(folder="nowhere:/nothing")
        names = {v["Name"] for v in (api.volumes() or {}).get("Volumes") or []}
        assert f"{gone}-fs" not in names and f"{kept}-fs" in names
    finally:
        for name in (f"{gone}-fs", f"{kept}-fs", kept):
            with contextlib.suppress(Exception):
                api.remove_volume(name)


@pytest.mark.docker
def test_a_base_a_run_holds_outlives_a_newer_one_until_the_run_ends(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """A run holds the base it chose (a volume of the run's) from before it looks at it again: a
    newer base of the same folder (another run's) does not make the sweep remove it, however long
    ago that one was made, until the run is over. A base replaced a moment ago stays even with no
    hold (the run that chose it may not have held it yet)."""
    from pipekit.backend import StageSpec

    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    ours, theirs = DockerBackend(docker_client, workspace="copy"), DockerBackend(docker_client, workspace="copy")
    spec = StageSpec(run_id=f"hold{os.urandom(4).hex()}", stage="s", image=busybox_image, workspace=folder)
    other = StageSpec(run_id=f"hold{os.urandom(4).hex()}", stage="s", image=busybox_image, workspace=folder)
    api = docker_client.api
    mine = base_path_label(folder)  # (only this test's bases: other tests' run beside it)
    try:
        held = ours.layers.base_for(spec).name
        (folder / "b.bin").write_bytes(os.urandom(1 << 20))
        theirs.layers.rebase_at = (0, 0)  # (the other run makes a base of its own)
        time.sleep(1.1)  # (CreatedAt has seconds)
        newer = theirs.layers.base_for(other).name
        assert newer != held
        theirs.layers.cleanup(other.run_id)
        ours.layers.drop_grace = 3600
        assert held not in ours.layers.drop_bases(folder=mine), "replaced a moment ago: it stays"
        ours.layers.drop_grace = 0
        assert held not in ours.layers.drop_bases(folder=mine), "held by a run that still goes"
        api.inspect_volume(held)
        ours.layers.cleanup(spec.run_id)
        assert held in ours.layers.drop_bases(folder=mine)
        assert newer not in ours.layers.drop_bases(folder=mine), "the newest stays for the next run"
    finally:
        for run in (spec.run_id, other.run_id):
            ours.layers.cleanup(run)
        ours.drop_workspace_bases(folder)


@pytest.mark.docker
def test_cleanup_all_removes_the_copies_of_this_folder_the_engine_keeps(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """`pipekit cleanup --all` (the console script, in the folder) removes the base copies of that
    folder the engine kept for the next runs, and no other folder's."""
    folders = []
    for name in ("one", "other"):
        folders.append(tmp_path / name)
        folders[-1].mkdir()
        (folders[-1] / "pipeline.py").write_text(
            AGAIN.replace("cat a.txt new.txt && test ! -e gone.txt && cat d/f5 && ", "")
        )
        _run(folders[-1], DockerBackend(docker_client, workspace="copy"), busybox_image)
    kept = _bases(docker_client, folders[0])
    assert len(kept) == 1 and len(_bases(docker_client, folders[1])) == 1
    done = run_console(["cleanup", "--all"], cwd=folders[0])
    assert done.returncode == 0, done.stderr
    assert "removed 1 copies of this workspace kept in the engine" in done.stdout
    assert _bases(docker_client, folders[0]) == [] and len(_bases(docker_client, folders[1])) == 1
    assert not (records_dir(folders[0]) / f"{kept[0]}.json").exists(), "and this machine's record of it"
