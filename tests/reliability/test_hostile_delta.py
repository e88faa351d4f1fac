"""Threat model, copy mode by difference (issue 25, item 4): what a stage's own layer holds is
hostile. Its deletions (overlay whiteouts) delete only names pipekit shipped, never ``.git/``,
``.pipekit/`` or the secrets file; devices and fifos it makes stay in its container; a folder it
turns into a link to a place outside is never written through; memory stays flat with a large
sparse file. Runs the installed ``pipekit`` console script against the real engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
ROOT = Path(__file__).parent.parent.parent
GIT = ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.com"]


def _pipekit(folder: Path, busybox_image: str, mode: str, *args: str) -> tuple[int, str, float]:
    """Exit code, output, and peak RSS in MiB of one ``pipekit run``."""
    exe = shutil.which("pipekit")
    assert exe is not None, "the pipekit console script is not installed"
    argv = [exe, "run", "--progress", "plain", "--workspace", mode, "--image-map", f"busybox={busybox_image}", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        output = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, output, usage.ru_maxrss / 1024


def _folder(tmp_path: Path, pipeline: str) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text("import pipekit as pk\n\n" + textwrap.dedent(pipeline))
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    seen = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            seen[rel] = "->" + os.readlink(path)
        elif path.is_dir():
            seen[rel] = "/"
        else:
            seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


WIPE = """
@pk.stage(image="busybox")
def wipe(ctx):
    ctx.sh("rm -rf .git src README .pipekit .env.ci || true")
    # fake whiteouts (the kernel refuses them through an overlay; a plain copy brings no device back)
    ctx.sh("for n in .git .env.ci .pipekit planted src/keep.txt; do mknod $n c 0 0 2>/dev/null || true; done")
    ctx.sh("mknod null-device c 1 3 2>/dev/null || true; mkfifo fifo || true; echo made > made.txt")

@pk.stage(image="busybox", needs=["wipe"])
def after(ctx):
    ctx.sh("test -e made.txt && test ! -e README && test ! -e src/keep.txt")
"""


@pytest.mark.parametrize("mode", ["mount", "copy"])
def test_a_stage_that_deletes_everything_deletes_only_what_it_was_given(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    folder = _folder(tmp_path, WIPE)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "README").write_text("a project\n")
    (folder / "src").mkdir()
    (folder / "src" / "keep.txt").write_text("source\n")
    subprocess.run([*GIT, "-C", str(folder), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(folder), "commit", "-qm", "first"], check=True)
    (folder / ".env.ci").write_text("TOKEN=do-not-lose-me\n")
    (folder / "pyproject.toml").write_text('[tool.pipekit]\nsecrets-file = ".env.ci"\n')
    (folder / ".pipekit").mkdir()
    (folder / ".pipekit" / "mine").write_text("pipekit's own\n")
    git_before = _snapshot(folder / ".git")
    code, output, _rss = _pipekit(folder, busybox_image, mode)
    assert code == 0, output
    assert _snapshot(folder / ".git") == git_before, "the host's .git changed"
    assert (folder / ".env.ci").read_text() == "TOKEN=do-not-lose-me\n"
    assert (folder / ".pipekit" / "mine").read_text() == "pipekit's own\n"
    assert (folder / "made.txt").read_text() == "made\n"
    assert not (folder / "README").exists() and not (folder / "src" / "keep.txt").exists()  # it did delete those
    if mode == "copy":
        assert not os.path.lexists(folder / "null-device") and not os.path.lexists(folder / "fifo")
        assert not os.path.lexists(folder / "planted")


LINK_OUT = """
@pk.stage(image="busybox")
def swap(ctx):
    ctx.sh("rm -rf data && ln -s {victim} data && ln -s ../../.. up && echo x > data-sibling")

@pk.stage(image="busybox", needs=["swap"])
def write_through(ctx):
    ctx.sh("rm -rf data && mkdir data && echo overwritten > data/file.txt")
"""


def test_a_folder_turned_into_a_link_out_is_never_written_through(tmp_path: Path, busybox_image: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("outside the workspace\n")
    folder = _folder(tmp_path, LINK_OUT.format(victim=victim))
    (folder / "data").mkdir()
    (folder / "data" / "file.txt").write_text("in the workspace\n")
    code, output, _rss = _pipekit(folder, busybox_image, "copy")
    assert code == 0, output
    assert (victim / "file.txt").read_text() == "outside the workspace\n"
    assert not os.path.islink(folder / "data") and not os.path.lexists(folder / "up")
    assert (folder / "data" / "file.txt").read_text() == "overwritten\n"
    assert "link not copied back" in output


SPARSE = """
@pk.stage(image="busybox")
def read(ctx):
    ctx.sh("test $(stat -c %s big.img) = 1073741842 && tail -c 18 big.img")

@pk.stage(image="busybox", needs=["read"])
def touch_it(ctx):
    ctx.sh("echo small > small.txt")
"""


def test_a_large_sparse_file_travels_in_flat_memory(tmp_path: Path, busybox_image: str) -> None:
    """A 1 GiB sparse file in the workspace reaches the stages (once, in the run's base copy)
    without pipekit's memory growing with it; it stays as it was on the host."""
    (tmp_path / "empty").mkdir()
    empty = _folder(
        tmp_path / "empty", SPARSE.replace("test $(stat -c %s big.img) = 1073741842 && tail -c 18 big.img", "true")
    )
    code, output, empty_rss = _pipekit(empty, busybox_image, "copy")
    assert code == 0, output
    folder = _folder(tmp_path, SPARSE)
    with open(folder / "big.img", "wb") as f:
        f.truncate(1 << 30)
        f.write(b"the end of the file")  # (at 0: a hole after it)
        f.seek((1 << 30) - 1)
        f.write(b"\n")
    with open(folder / "big.img", "ab") as f:
        f.write(b"seventeen bytes!\n\n")
    code, output, rss = _pipekit(folder, busybox_image, "copy")
    assert code == 0, output
    assert "seventeen bytes!" in output
    assert rss <= empty_rss + 40, f"peak RSS {rss:.0f} MiB with a 1 GiB file, {empty_rss:.0f} MiB without"
    assert (folder / "big.img").stat().st_blocks * 512 < 16 << 20, "the file is no longer sparse"


BASE_ATTACK = """
@pk.stage(image="busybox")
def attack(ctx):
    # the base's folder on the engine, as the overlay names it, is not there for a stage
    ctx.sh("lower=$(grep ' /workspace overlay ' /proc/mounts | sed -n 's/.*lowerdir=\\\\([^,:]*\\\\).*/\\\\1/p');"
           " echo lower=$lower;"
           " if (echo evil > $lower/given.txt) 2>/dev/null; then echo WROTE-THE'-'BASE; fi;"
           " { ls $lower 2>&1 || true; }")
    ctx.sh("echo evil > given.txt && chmod 777 given.txt && rm -f other.txt && mkdir -p sub && echo x > sub/new")
"""


def test_a_stage_cannot_change_the_base_copy_kept_in_the_engine(
    tmp_path: Path, busybox_image: str, docker_client: object
) -> None:
    """The base copy of the workspace that the engine keeps across runs is never written by a
    stage: the overlay holds it read-only below the stage's own layer, it is mounted in no stage's
    container, and its folder on the engine is not reachable from one. After a stage rewrote and
    deleted files, the base holds them as this machine sent them, and the next run uses it."""
    from docker import DockerClient

    assert isinstance(docker_client, DockerClient)
    folder = _folder(tmp_path, BASE_ATTACK)
    (folder / "given.txt").write_text("as sent\n")
    (folder / "other.txt").write_text("other\n")
    code, output, _rss = _pipekit(folder, busybox_image, "copy", "-v")
    assert code == 0, output
    assert "lower=/" in output, "the overlay's lower folder is named in the container's mounts"
    assert "WROTE-THE-BASE" not in output
    assert (folder / "given.txt").read_text() == "evil\n" and not (folder / "other.txt").exists()
    listing = (docker_client.api.volumes(filters={"label": "io.pipekit.workspace-base"}) or {}).get("Volumes") or []
    path = f"{os.uname().nodename}:{os.path.realpath(folder)}"
    bases = [v["Name"] for v in listing if (v.get("Labels") or {}).get("io.pipekit.workspace-base.path") == path]
    base = next(n for n in bases if not n.endswith("-ok"))
    # (an EROFS image, where the kernel mounts one: what it holds is seen through NAME-fs, in ws/)
    packed = any(v["Name"] == f"{base}-fs" for v in (docker_client.api.volumes() or {}).get("Volumes") or [])
    volume, top = (f"{base}-fs", "/b/ws") if packed else (base, "/b")
    out = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", f"cd {top} && cat given.txt other.txt; stat -c %a given.txt; test ! -e sub && echo no-sub"],
        volumes={volume: {"bind": "/b", "mode": "ro"}},
        remove=True,
    )
    assert out.decode().split() == ["as", "sent", "other", "644", "no-sub"], out
