"""The host side of copy mode's bring-back (pipekit._workspace.hosttree): nothing is ever written through a
link, links are resolved against the real tree, and private places stay out of reach."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipekit._workspace.hosttree import HostTree, TreeRefused, is_private


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / ".pipekit").mkdir()
    (folder / ".git" / "hooks").mkdir(parents=True)
    (folder / "sub").mkdir()
    (tmp_path / "victim.txt").write_text("precious\n")
    return folder


@pytest.fixture
def tree(ws: Path) -> Iterator[HostTree]:
    t = HostTree(str(ws))
    yield t
    t.close()


def _write(tree: HostTree, name: str, data: bytes, unchanged: str | None = None) -> tuple[str, bool]:
    return tree.write_file(name, io.BytesIO(data), len(data), 0o644, unchanged)


@pytest.mark.parametrize(
    ("name", "target", "pending", "leads_to"),
    [
        ("x", "sub", {}, "sub"),
        ("sub/up", "..", {}, ""),
        ("d", ".", {}, ""),
        ("l1", "d/..", {"d": "."}, None),  # each looks inside; together they leave
        ("v", "l1/victim.txt", {"d": ".", "l1": "d/.."}, None),
        ("w", "d/d/d/sub", {"d": "."}, "sub"),
        ("x", ".pipekit", {}, None),
        ("x", "sub/../.pipekit/logs", {}, None),
        ("x", ".git/hooks", {}, None),
        ("x", "y/hooks", {"y": ".git"}, None),
        ("x", "secrets/.env.ci", {}, "secrets/.env.ci"),
        ("a", "b", {"a": "b", "b": "a"}, None),  # a loop
        ("x", "/etc/passwd", {}, None),
        ("x", "gone/file", {"gone": None}, "gone/file"),  # a refused link's name is free
    ],
)
def test_links_are_resolved_against_the_real_tree(
    tree: HostTree, name: str, target: str, pending: dict[str, str | None], leads_to: str | None
) -> None:
    assert tree.resolve(name, target, pending) == leads_to


def test_a_link_already_on_the_host_is_followed_when_resolving(tree: HostTree, ws: Path) -> None:
    (ws / "d").symlink_to(".")
    assert tree.resolve("l1", "d/..", {}) is None
    assert tree.resolve("l1", "d/sub", {}) == "sub"
    assert tree.resolve("l1", "d/sub", {"d": None}) == "d/sub"  # d is about to go


def test_a_file_replaces_a_link_and_never_writes_through_it(tree: HostTree, ws: Path, tmp_path: Path) -> None:
    (ws / "f").symlink_to(tmp_path / "victim.txt")
    assert _write(tree, "f", b"pwned\n")[1]
    assert not (ws / "f").is_symlink() and (ws / "f").read_bytes() == b"pwned\n"
    assert (tmp_path / "victim.txt").read_text() == "precious\n"


def test_a_link_on_the_way_is_refused(tree: HostTree, ws: Path, tmp_path: Path) -> None:
    (ws / "out").symlink_to(tmp_path)
    with pytest.raises(TreeRefused, match="out is not a folder"):
        _write(tree, "out/victim.txt", b"pwned\n")
    with pytest.raises(TreeRefused):
        tree.make_link("out/l", "x")
    assert (tmp_path / "victim.txt").read_text() == "precious\n"
    assert not tree.remove("out/victim.txt")
    assert (tmp_path / "victim.txt").exists()


def test_a_folder_replaces_a_link_to_a_folder(tree: HostTree, ws: Path, tmp_path: Path) -> None:
    (ws / "x").symlink_to(ws / ".pipekit")
    assert tree.make_dir("x", 0o755)
    _write(tree, "x/forged", b"forged\n")
    assert (ws / "x").is_dir() and not (ws / "x").is_symlink()
    assert list((ws / ".pipekit").iterdir()) == []


def test_a_hard_linked_file_is_replaced_not_written_into(tree: HostTree, ws: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.js"
    store.write_text("the store\n")
    os.link(store, ws / "linked.js")
    digest, written = _write(tree, "linked.js", b"changed\n")
    assert written and (ws / "linked.js").read_text() == "changed\n"
    assert store.read_text() == "the store\n"


def test_nothing_is_written_when_the_content_is_the_same_or_unchanged(tree: HostTree, ws: Path) -> None:
    (ws / "same.txt").write_bytes(b"same\n")
    before = (ws / "same.txt").stat().st_ino
    digest, written = _write(tree, "same.txt", b"same\n")
    assert not written and (ws / "same.txt").stat().st_ino == before
    (ws / "other.txt").write_bytes(b"changed here by someone else\n")
    assert not _write(
        tree, "other.txt", b"as the stage got it\n", unchanged=_write(tree, "t", b"as the stage got it\n")[0]
    )[1]
    assert (ws / "other.txt").read_bytes() == b"changed here by someone else\n"
    assert not [p for p in ws.iterdir() if p.name.startswith(".pipekit-tmp-")]  # no temporary file left


def test_a_stages_setuid_bit_stays_in_the_stage(tree: HostTree, ws: Path) -> None:
    tree.write_file("suid", io.BytesIO(b"#!/bin/sh\n"), 10, 0o4755, None)
    tree.make_dir("sgid", 0o2777)
    assert (ws / "suid").stat().st_mode & 0o7777 == 0o755
    assert not (ws / "sgid").stat().st_mode & 0o7000


def test_runs_of_zeros_stay_holes(tree: HostTree, ws: Path) -> None:
    data = bytes(16 << 20) + b"tail"
    _write(tree, "sparse.img", data)
    st = (ws / "sparse.img").stat()
    assert st.st_size == len(data) and st.st_blocks * 512 < 1 << 20


def test_a_file_that_became_a_folder_and_back(tree: HostTree, ws: Path) -> None:
    (ws / "build").write_text("a file\n")
    assert tree.make_dir("build", 0o755)
    _write(tree, "build/out", b"inside\n")
    (ws / "dist").mkdir()
    (ws / "dist" / "old.whl").write_text("old\n")
    shipped = HostTree(str(ws), shipped={"dist", "dist/old.whl"})  # what pipekit gave the stage
    try:
        _write(shipped, "dist", b"now a file\n")
    finally:
        shipped.close()
    assert (ws / "build" / "out").read_text() == "inside\n" and (ws / "dist").read_text() == "now a file\n"


@pytest.mark.parametrize("kept", ["conf/ci.env", "conf/deep/new.txt"])
def test_a_folder_made_a_file_or_a_link_loses_only_what_pipekit_shipped(ws: Path, kept: str) -> None:
    """The secrets file (hidden), or a name pipekit never shipped, stops the folder's removal: nothing
    of it is deleted, and the refusal names it."""
    for name in ("conf/deep/old.txt", "conf/a.txt", kept):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(name)
    shipped = {"conf", "conf/a.txt", "conf/deep", "conf/deep/old.txt", "conf/ci.env"}
    tree = HostTree(str(ws), shipped=shipped, hidden=("conf/ci.env",))
    try:
        with pytest.raises(TreeRefused, match=rf"{kept} would be deleted: the stage made conf a file") as e:
            _write(tree, "conf", b"a file\n")
        assert e.value.advice == f"Move {kept} out of conf on this machine, or leave conf a folder in the stage"
        with pytest.raises(TreeRefused, match=kept):
            tree.make_link("conf", "sub")
    finally:
        tree.close()
    assert sorted(p.relative_to(ws).as_posix() for p in (ws / "conf").rglob("*") if p.is_file()) == sorted(
        {"conf/deep/old.txt", "conf/a.txt", kept}
    )
    assert not [p for p in ws.iterdir() if p.name.startswith(".pipekit-tmp-")]


def test_a_folder_holding_a_git_is_not_removed_to_make_room(tree: HostTree, ws: Path) -> None:
    (ws / "vendor" / ".git").mkdir(parents=True)
    with pytest.raises(TreeRefused, match=r"vendor/\.git would be deleted"):
        _write(tree, "vendor", b"a file\n")
    assert (ws / "vendor" / ".git").is_dir()
    assert not [p for p in ws.iterdir() if p.name.startswith(".pipekit-tmp-")]


def test_private_names() -> None:
    assert is_private(".pipekit/pipekit.db") and is_private(".git") and is_private("vendor/dep/.git/config")
    assert is_private("ci/deploy.env", ("ci/deploy.env",)) and not is_private(
        "ci/deploy.env.example", ("ci/deploy.env",)
    )
    assert not is_private("src/.gitignore") and not is_private(".github/workflows/ci.yml")


def test_the_tree_stream_keeps_hard_links_and_leaves_the_secrets_file_out(ws: Path) -> None:
    """What copy mode ships: hard-linked files as a hard link to the first name, the secrets file
    left out under any name it has, .pipekit/ left out; a streamed, valid tar."""
    import tarfile

    from pipekit._workspace.archive import PRIVATE_DIRS, TreeStream

    (ws / "a.txt").write_text("a\n")
    os.link(ws / "a.txt", ws / "sub" / "b.txt")
    (ws / ".env.ci").write_text("TOKEN=secret-value\n")
    os.link(ws / ".env.ci", ws / "sub" / "copy.env")
    (ws / ".pipekit" / "pipekit.db").write_text("history\n")
    stream = TreeStream(ws, exclude={*PRIVATE_DIRS, ".env.ci"}, hidden=(str(ws / ".env.ci"),))
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar}
    assert ".env.ci" not in members and "sub/copy.env" not in members
    assert not [n for n in members if n.startswith(".pipekit")]
    assert members["a.txt"].isreg() and members["sub/b.txt"].islnk() and members["sub/b.txt"].linkname == "a.txt"
    assert stream.manifest["sub/b.txt"] == stream.manifest["a.txt"] and stream.manifest["sub"] == "/"
    assert b"secret-value" not in data


def _bring_back(ws: Path, stage_tree: bytes, known: dict[str, str]) -> None:
    """A whole-copy bring-back (sync._Apply) of ``stage_tree`` (a tar of the stage's folder, named
    as the engine names them: ``workspace/...``) into ``ws``."""
    import tarfile

    import structlog

    from pipekit._workspace.sync import _Apply

    tree = HostTree(str(ws), shipped=known, hidden=())
    try:
        with tarfile.open(fileobj=io.BytesIO(stage_tree), mode="r|") as tar:
            _Apply(tree, known, (), structlog.get_logger()).run(tar)
    finally:
        tree.close()


def _as_shipped(ws: Path) -> tuple[bytes, dict[str, str]]:
    """What a stage got (its folder as a tar, as it would come back unchanged) and the manifest."""
    import tarfile

    from pipekit._workspace.archive import TreeStream

    stream = TreeStream(ws, exclude={".pipekit", ".git"})
    data = b"".join(stream)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            content = src.extractfile(member) if member.isreg() else None
            member.name = "workspace/" + member.name
            dst.addfile(member, content)
    return out.getvalue(), stream.manifest


def test_what_a_stage_kept_as_it_got_it_is_not_brought_back_over_a_parallel_stages_change(ws: Path) -> None:
    """Two stages at once in copy mode: one renamed a folder and replaced a file with a folder
    (its bring-back came first); the other, which left all of it as it got it, does not bring the
    old names back, nor make an empty folder where the first removed one."""
    (ws / "moved").mkdir()
    (ws / "moved" / "m").write_text("m\n")
    (ws / "deep" / "er").mkdir(parents=True)
    (ws / "deep" / "er" / "f").write_text("f\n")
    (ws / "file").write_text("was a file\n")
    stage_tree, known = _as_shipped(ws)
    (ws / "moved").rename(ws / "moved-here")  # the first stage's bring-back
    (ws / "deep" / "er" / "f").unlink()
    (ws / "deep" / "er").rmdir()
    (ws / "deep").rmdir()
    (ws / "file").unlink()
    (ws / "file").mkdir()
    (ws / "file" / "inside").write_text("made by the first stage\n")
    _bring_back(ws, stage_tree, known)
    assert not (ws / "moved").exists() and (ws / "moved-here" / "m").read_text() == "m\n"
    assert not (ws / "deep").exists()
    assert (ws / "file" / "inside").read_text() == "made by the first stage\n"


def test_a_file_a_stage_changed_comes_back_into_a_folder_a_parallel_stage_removed(ws: Path) -> None:
    """...into the folder made again, with the mode the stage's folder has (a private folder stays private)."""
    (ws / "dir").mkdir(mode=0o700)
    os.chmod(ws / "dir", 0o700)
    (ws / "dir" / "a").write_text("a\n")
    _stage_tree, known = _as_shipped(ws)
    (ws / "dir" / "a").write_text("changed by the stage\n")  # (the stage's folder, as a tar)
    stage_tree, _ = _as_shipped(ws)
    (ws / "dir" / "a").unlink()  # a parallel stage removed the folder first
    (ws / "dir").rmdir()
    _bring_back(ws, stage_tree, known)
    assert (ws / "dir" / "a").read_text() == "changed by the stage\n"
    assert (ws / "dir").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in ws.iterdir() if p.name.startswith(".pipekit-tmp")] == []


def test_a_users_own_link_out_of_the_workspace_survives_a_stage_that_kept_it(ws: Path, tmp_path: Path) -> None:
    """A link the user has (to a tool, a shared folder) travels to the stage as a link; a stage
    that did not touch it must not make the bring-back delete it. A link the stage made that
    leads out is still refused (test_links_are_resolved_against_the_real_tree)."""
    os.symlink(str(tmp_path), ws / "shared")
    stage_tree, known = _as_shipped(ws)
    _bring_back(ws, stage_tree, known)
    assert os.readlink(ws / "shared") == str(tmp_path)
