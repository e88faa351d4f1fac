"""Threat model: what a stage leaves on the machine running pipekit, and the files that come out of it."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

import pipekit as pk
from pipekit._cli.main import main


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent is gone too
        return f.read().split()[2] != "Z"


def test_a_background_process_of_a_host_stage_ends_with_the_stage(tmp_path: Path) -> None:
    """`server &` in a host stage does not outlive the stage (its process group is ended)."""
    p = pk.Pipeline(name="bg", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def start(ctx):
        ctx.sh("sleep 300 >/dev/null 2>&1 &\necho $! > bg.pid")

    result = pk.run(p, log_file=io.StringIO())
    assert result.status == "succeeded"
    pid = int((tmp_path / "bg.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


@pytest.mark.docker
def test_a_stage_cannot_reach_pipekits_own_state(tmp_path: Path, busybox_image: str) -> None:
    """.pipekit/ is covered by an empty read-only folder in every container: a stage can neither read
    the history nor plant a link that pipekit would later write through."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n\n@pk.stage(image='busybox')\ndef attack(ctx):\n"
        "    listing = ctx.sh('ls -A .pipekit').stdout\n"
        "    planted = ctx.sh('mkdir -p .pipekit/logs && ln -s /etc/hostname .pipekit/logs/x', check=False)\n"
        "    return [listing, planted.exit_code]\n"
    )
    assert _cli("run", "-f", str(tmp_path), "--image-map", f"busybox={busybox_image}")[0] == 0  # makes a history
    code, out, err = _cli("run", "-f", str(tmp_path), "--image-map", f"busybox={busybox_image}")
    assert code == 0, out + err
    from pipekit._history.store import History

    h = History(tmp_path)
    run_id = h.resolve("last")
    [row] = h.stages(run_id)
    h.close()
    listing, planted_exit = __import__("json").loads(row.output)
    assert listing == ""
    assert planted_exit != 0
    assert not (tmp_path / ".pipekit" / "logs" / "x").is_symlink()


def test_pipekits_files_are_private(tmp_path: Path) -> None:
    """.pipekit/ is 700, its database and logs 600."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n\n@pk.stage\ndef a(ctx):\n    ctx.sh('echo hi')\n")
    assert _cli("run", "-f", str(tmp_path))[0] == 0
    state = tmp_path / ".pipekit"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "pipekit.db").stat().st_mode & 0o777 == 0o600
    [log] = list((state / "logs").rglob("a.log"))
    assert log.stat().st_mode & 0o777 == 0o600


def test_a_planted_link_in_the_log_folder_is_never_written_through(tmp_path: Path) -> None:
    """Were a link planted where a stage's log goes, pipekit refuses to write through it."""
    from pipekit._history.store import History

    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    h = History(tmp_path)
    target = h.log_path("run1", "b")
    target.parent.mkdir(parents=True)
    target.symlink_to(victim)
    write = h.log_processor("run1")
    with pytest.raises(pk.UsageError, match="never writes through a link"):
        write(None, "info", {"stage": "b", "event": "output", "line": "appended?"})
    h.close()
    assert victim.read_text() == "untouched\n"


def test_a_dangling_pipekit_link_is_a_clear_error(tmp_path: Path) -> None:
    """A .pipekit that is a link pointing nowhere gives a message and exit 2, not FileExistsError."""
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n\n@pk.stage\ndef a(ctx):\n    pass\n")
    (tmp_path / ".pipekit").symlink_to(tmp_path / "nowhere")
    code, _, err = _cli("run", "-f", str(tmp_path))
    assert code == 2
    assert "is a symbolic link" in err


@pytest.mark.docker
def test_archive_refuses_a_link_a_stage_made_to_a_host_file(tmp_path: Path, busybox_image: str) -> None:
    """`ln -s /root/secret dist/app.whl` in a container, then ctx.archive("dist/*"): refused, and
    the host file is not archived."""
    secret = tmp_path.parent / f"{tmp_path.name}-host-secret.txt"
    secret.write_text("host only\n")
    p = pk.Pipeline(name="links", image="busybox", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def package(ctx):
        ctx.sh(f"mkdir -p dist && ln -s {secret} dist/app.whl")
        ctx.archive("dist/*")

    result = pk.run(p, image_map={"busybox": busybox_image}, log_file=io.StringIO(), record=True)
    assert result["package"].status == "failed"
    assert "dist/app.whl is a link to" in (result["package"].error or "")
    from pipekit._history.store import History

    h = History(tmp_path)
    assert h.artifacts(result.run_id) == []
    h.close()


def test_artifacts_dest_checks_every_path_before_writing(tmp_path: Path) -> None:
    """A stored artifact whose path would leave --dest stops the copy before any file is written."""
    from pipekit._history.store import History

    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n")
    h = History(tmp_path)
    h.start_run("r1", pipeline="p", path=str(tmp_path / "pipeline.py"), branch=None, git_commit=None, argv="x")
    h.add_artifact("r1", "s", "a/good.txt", b"good")
    h.add_artifact("r1", "s", "../../escape.txt", b"bad")
    h.finish_run("r1", "succeeded")
    h.close()
    dest = tmp_path / "out"
    code, _, err = _cli("artifacts", "r1", "-f", str(tmp_path), "--dest", str(dest))
    assert code == 2 and "would leave" in err
    assert not (dest / "a" / "good.txt").exists()
