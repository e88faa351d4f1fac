"""The workspace as an EROFS image (pipekit._workspace.erofs), checked by what consumes it: the
kernel mounts it (as the engine does) and ``fsck.erofs`` reads every inode, and what the mount
shows is compared with the tree, name by name: kind, content, mode, owner, time, link target,
hard links. On a tree made of the traps, and on a real one at real size (this Python's standard
library: thousands of files, real names)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipekit._workspace.archive import TreeStream
from pipekit._workspace.erofs import TOP, ErofsImage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting an image needs root")


def _image(root: Path, out: Path, **kwargs: object) -> ErofsImage:
    image = ErofsImage(root, **kwargs)  # type: ignore[arg-type]
    with open(out, "wb") as f:
        for piece in image:
            f.write(piece)
    assert out.stat().st_size == image.size, "the size announced before the first byte"
    return image


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the image file, the folder it is mounted on): mount it with :func:`_mount`."""
    where = tmp_path / "mnt"
    where.mkdir()
    yield tmp_path / "image.erofs", where
    subprocess.run(["umount", str(where)], capture_output=True, check=False)


def _mount(image: Path, where: Path) -> Path:
    done = subprocess.run(["mount", "-t", "erofs", "-o", "ro", str(image), str(where)], capture_output=True, text=True)
    if done.returncode != 0 and "erofs" in done.stderr and "unknown" in done.stderr:
        pytest.skip(f"this kernel does not mount EROFS images: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return where / TOP


def _fsck(image: Path, tmp_path: Path) -> None:
    if shutil.which("fsck.erofs") is None:
        pytest.fail("fsck.erofs is missing: scripts/setup.sh installs erofs-utils")
    done = subprocess.run(
        ["fsck.erofs", f"--extract={tmp_path / 'fsck-out'}", str(image)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _described(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[object, ...]]:
    """Every name under ``root``: what it is, its mode, owner, seconds of mtime and content or target."""
    found: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(folder, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                continue
            st = os.lstat(full)
            what: object
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                what = Path(full).read_bytes()
            else:
                what = "dir" if stat.S_ISDIR(st.st_mode) else "other"
            found[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                int(st.st_mtime),
                what,
            )
    return found


def _traps(root: Path) -> None:
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "one-block").write_bytes(os.urandom(4096))
    (root / "large").write_bytes(os.urandom(3 * (1 << 20) + 7))
    with open(root / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
    (root / ("x" * 255)).write_text("the longest name\n")
    (root / "ünï cødé").write_text("utf-8\n")
    (root / os.fsdecode(b"latin-\xe9")).write_text("not utf-8\n")
    (root / "many").mkdir()
    for i in range(700):  # entries over several directory blocks
        (root / "many" / f"entry-with-a-name-of-some-length-{i:04d}").write_text(f"{i}\n")
    deep = root
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep\n")
    os.symlink("large", root / "link")
    os.symlink("/etc/passwd", root / "out")
    os.symlink("many/../nowhere", root / "dangling")
    os.link(root / "one-block", root / "many" / "hard")
    (root / "private").mkdir(mode=0o700)
    (root / "script").write_text("#!/bin/sh\n")
    os.chmod(root / "script", 0o4755)
    os.chown(root / "script", 1234, 5678)
    os.utime(root / "empty", ns=(1_000_000_000, 1_500_000_000_123))
    os.mkfifo(root / "fifo")  # never travels
    (root / ".pipekit").mkdir()
    (root / ".pipekit" / "state").write_text("never travels\n")
    (root / "secrets.env").write_text("TOKEN=s3cr3t\n")
    os.link(root / "secrets.env", root / "many" / "secrets-again")


def test_the_image_holds_the_tree_as_it_is(tmp_path: Path, mounted: tuple[Path, Path]) -> None:
    root = tmp_path / "ws"
    _traps(root)
    out, where = mounted
    _image(root, out, exclude={".pipekit"}, hidden=[str(root / "secrets.env")])
    _fsck(out, tmp_path)
    inside = _mount(out, where)
    want = _described(root, skip=frozenset({".pipekit", "secrets.env", "many/secrets-again", "fifo"}))
    assert _described(inside) == want
    assert os.stat(inside / "many" / "hard").st_ino == os.stat(inside / "one-block").st_ino
    assert os.stat(inside / "many" / "hard").st_nlink == 2
    assert os.stat(inside / "empty").st_mtime_ns == 1_500_000_000_123
    assert not os.path.lexists(inside / "fifo") and not os.path.lexists(inside / ".pipekit")
    assert sorted(os.listdir(where)) == [TOP]


def test_manifest_and_stats_are_what_the_tar_stream_records(tmp_path: Path) -> None:
    """The record of a base (the bring-back's digests, the next run's stat keys) does not depend
    on how the base travelled."""
    root = tmp_path / "ws"
    _traps(root)
    hidden = [str(root / "secrets.env")]
    image = ErofsImage(root, exclude={".pipekit"}, hidden=hidden)
    for _piece in image:
        pass
    stream = TreeStream(root, exclude={".pipekit"}, hidden=hidden)
    for _piece in stream:
        pass
    assert image.manifest == stream.manifest
    assert image.stats == stream.stats


def test_a_file_that_changes_while_it_is_read_keeps_the_image_whole(tmp_path: Path, mounted: tuple[Path, Path]) -> None:
    """A file that grows or shrinks between the walk and its read is cut or padded to the size the
    layout gave it: the image stays valid (the next run sees the file changed and sends it)."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "grows").write_bytes(b"a" * 5000)
    (root / "shrinks").write_bytes(b"b" * 9000)
    (root / "goes").write_bytes(b"c" * 100)
    out, where = mounted
    image = ErofsImage(root)
    (root / "grows").write_bytes(b"A" * 20000)
    (root / "shrinks").write_bytes(b"B" * 10)
    (root / "goes").unlink()
    with open(out, "wb") as f:
        for piece in image:
            f.write(piece)
    _fsck(out, tmp_path)
    inside = _mount(out, where)
    assert (inside / "grows").read_bytes() == b"A" * 5000
    assert (inside / "shrinks").read_bytes() == b"B" * 10 + bytes(8990)
    assert (inside / "goes").read_bytes() == bytes(100)


def test_a_real_tree_at_real_size(tmp_path: Path, mounted: tuple[Path, Path]) -> None:
    """This Python's standard library (thousands of files and folders, real names and sizes), as
    a workspace: mounted, every name, mode and byte is there."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, where = mounted
    _image(root, out, exclude={"site-packages"})
    _fsck(out, tmp_path)
    inside = _mount(out, where)
    want = _described(root, skip=frozenset({"site-packages"}))
    assert len(want) > 2000, f"{root} is smaller than expected ({len(want)} names; Python {sys.version})"
    assert _described(inside) == want


def test_what_is_swapped_after_the_walk_is_never_read_through(tmp_path: Path, mounted: tuple[Path, Path]) -> None:
    """Between the walk and the read (a parallel stage's bring-back may change the folder): a
    folder swapped for a link to a folder outside, a file swapped for a FIFO (would block), for a
    folder, or for a link to a file outside. Nothing outside is read, nothing hangs, the image
    stays valid, and those files' stat keys are dropped (the next run sends them again)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    (root / "d" / "secret").write_text("in the workspace\n")
    for name in ("fifo", "folder", "link"):
        (root / name).write_text("x" * 20)
    out, where = mounted
    image = ErofsImage(root)
    os.rename(root / "d", tmp_path / "d-aside")
    os.symlink(outside, root / "d")
    (root / "fifo").unlink()
    os.mkfifo(root / "fifo")
    (root / "folder").unlink()
    (root / "folder").mkdir()
    (root / "link").unlink()
    os.symlink(outside / "secret", root / "link")
    with open(out, "wb") as f:
        for piece in image:
            f.write(piece)
    _fsck(out, tmp_path)
    inside = _mount(out, where)
    assert (inside / "d" / "secret").read_bytes() == bytes(len("in the workspace\n"))
    for name in ("fifo", "folder", "link"):
        assert (inside / name).read_bytes() == bytes(20)
        assert name not in image.stats
    assert "d/secret" not in image.stats


def test_a_folder_swapped_before_it_is_listed_is_not_listed_through(tmp_path: Path) -> None:
    """The walk found ``a/b``; before it lists it, ``a`` becomes a link to a folder outside that
    has a ``b`` of its own: the image has ``a/b`` empty, never what is outside."""
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "secret").write_text("host secret\n")
    root = tmp_path / "ws"
    (root / "a" / "b").mkdir(parents=True)

    class Swapped(ErofsImage):
        def _open(self, node: Any, flags: int) -> int:
            if node.rel == "a/b" and not os.path.islink(root / "a"):
                shutil.rmtree(root / "a")
                os.symlink(outside, root / "a")
            return super()._open(node, flags)

    image = Swapped(root)
    assert os.path.islink(root / "a"), "the swap happened"
    assert image.manifest.get("a/b") == "/" and "a/b/secret" not in image.stats


def test_times_before_1970_and_a_workspace_reached_through_a_link(tmp_path: Path, mounted: tuple[Path, Path]) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "old").write_text("old\n")
    os.utime(real / "old", ns=(-86_400 * 10**9, -86_400 * 10**9 + 5))
    os.symlink(real, tmp_path / "ws")
    out, where = mounted
    _image(tmp_path / "ws", out)
    _fsck(out, tmp_path)
    inside = _mount(out, where)
    assert os.stat(inside / "old").st_mtime_ns == -86_400 * 10**9 + 5
