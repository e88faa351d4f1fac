"""pipekit._core.safefile: the workspace read and written without following the links a stage leaves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pipekit._core.safefile import Beneath, UnsafePath, read_regular, write_file


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_link_at_the_target_is_replaced_not_written_through(ws: Path, victim: Path) -> None:
    (ws / "reports").mkdir()
    (ws / "reports" / "pipekit.xml").symlink_to(victim)
    written = write_file(ws / "reports" / "pipekit.xml", "<testsuites/>", root=ws)
    assert victim.read_text() == "precious\n"
    assert not written.is_symlink() and written.read_text() == "<testsuites/>"
    assert sorted(p.name for p in (ws / "reports").iterdir()) == ["pipekit.xml"]  # no temporary file left


def test_a_folder_on_the_way_that_is_a_link_is_refused(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "reports").symlink_to(outside)
    with pytest.raises(UnsafePath, match="reports .* is a link inside the workspace"):
        write_file(ws / "reports" / "pipekit.xml", "x", root=ws)
    (ws / "inside").mkdir()
    (ws / "deep").mkdir()
    (ws / "deep" / "er").symlink_to("../inside")  # even a link that stays inside
    with pytest.raises(UnsafePath):
        write_file(ws / "deep" / "er" / "x.xml", "x", root=ws)
    assert list(outside.iterdir()) == [] and list((ws / "inside").iterdir()) == []


def test_the_users_own_links_outside_the_workspace_are_followed(ws: Path, tmp_path: Path) -> None:
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    write_file(tmp_path / "out" / "sub" / "report.html", "<html>", root=ws)
    assert (real / "sub" / "report.html").read_text() == "<html>"


def test_a_user_link_into_the_workspace_does_not_open_a_way_past_the_check(ws: Path, tmp_path: Path) -> None:
    """A path that enters the workspace through the user's own link is checked from there on."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "build").mkdir()
    (ws / "build" / "reports").symlink_to(outside)  # the stage's link
    (tmp_path / "shortcut").symlink_to(ws / "build")  # the user's link
    with pytest.raises(UnsafePath):
        write_file(tmp_path / "shortcut" / "reports" / "x.xml", "x", root=ws)
    assert list(outside.iterdir()) == []


def test_missing_folders_are_made_and_a_folder_is_not_replaced(ws: Path) -> None:
    assert write_file(ws / "a" / "b" / "c.txt", b"bytes", root=ws).read_bytes() == b"bytes"
    (ws / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_file(ws / "d", "x", root=ws)


def test_reads_follow_links_only_inside(ws: Path, victim: Path) -> None:
    (ws / "dist").mkdir()
    (ws / "dist" / "app.whl").write_text("wheel")
    (ws / "latest").symlink_to("dist")
    (ws / "dist" / "same.whl").symlink_to("../dist/./app.whl")
    (ws / "dist" / "out.whl").symlink_to(victim)
    (ws / "dist" / "up.whl").symlink_to("../../victim.txt")
    with Beneath(ws) as tree:
        assert tree.read("latest/app.whl")[0] == b"wheel"
        assert tree.read("dist/same.whl")[0] == b"wheel"
        with pytest.raises(UnsafePath, match="is a link to .*victim.txt, outside the workspace"):
            tree.read("dist/out.whl")
        with pytest.raises(UnsafePath, match="leads out of the workspace"):
            tree.read("dist/up.whl")
        with pytest.raises(UnsafePath, match="leads out"):
            tree.read("../victim.txt")
        assert tree.kind("dist") == "dir" and tree.kind("nothing") is None


def test_pipekits_state_and_git_are_refused_whatever_the_route(ws: Path) -> None:
    (ws / ".pipekit").mkdir()
    (ws / ".pipekit" / "pipekit.db").write_text("history")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("[core]")
    (ws / "x").symlink_to(".pipekit")
    (ws / "d").symlink_to(".")
    (ws / "sub").mkdir()
    (ws / "sub" / "l1").symlink_to("../d/x")
    with Beneath(ws) as tree:
        for route in (".pipekit/pipekit.db", "x/pipekit.db", "d/.pipekit/pipekit.db", "sub/l1/pipekit.db", "d/x"):
            with pytest.raises(UnsafePath, match=r"under \.pipekit/"):
                tree.read(route)
        with pytest.raises(UnsafePath, match=r"under \.git/"):
            tree.read("d/.git/config")
        walked = list(tree.walk())
    assert not any(n.startswith((".pipekit", ".git")) for n in walked)
    assert "x" in walked  # a link is listed; what it is gets decided when it is opened


def test_a_walk_lists_the_same_files_each_time_and_from_dot(ws: Path) -> None:
    (ws / "a").mkdir()
    (ws / "a" / "one.txt").write_text("1")
    (ws / "two.txt").write_text("2")
    (ws / ".git").write_text("gitdir: elsewhere")  # a worktree's .git is a file
    with Beneath(ws) as tree:
        first, second, dot = list(tree.walk()), list(tree.walk()), list(tree.walk("."))
    assert first == second == dot == ["a/one.txt", "two.txt"]


def test_the_secrets_file_is_refused_by_identity_and_left_out_of_walks(ws: Path) -> None:
    (ws / ".env.ci").write_text("TOKEN=s3cr3t\n")
    (ws / "dist").mkdir()
    (ws / "dist" / "app.whl").write_text("wheel")
    (ws / "dist" / "env").symlink_to("../.env.ci")
    os.link(ws / ".env.ci", ws / "dist" / "hard")
    with Beneath(ws, hidden=[ws / ".env.ci"]) as tree:
        for route in (".env.ci", "dist/env", "dist/hard"):
            with pytest.raises(UnsafePath, match="is the secrets file"):
                tree.read(route)
        assert list(tree.walk()) == ["dist/app.whl", "dist/env"]  # the link is listed, and refused when read
    with Beneath(ws) as tree:
        assert tree.read("dist/env")[0] == b"TOKEN=s3cr3t\n"  # not a secrets file of this run: a file


def test_a_fifo_is_not_a_file_and_does_not_hang(ws: Path) -> None:
    os.mkfifo(ws / "report.xml")
    done = threading.Event()

    def read() -> None:
        with Beneath(ws) as tree, pytest.raises(UnsafePath, match="not a regular file"):
            tree.read("report.xml")
        with pytest.raises(UnsafePath, match="not a regular file"):
            read_regular(ws / "report.xml")
        done.set()

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set()


def test_read_regular_does_not_follow_a_link(ws: Path, victim: Path) -> None:
    (ws / "Dockerfile").symlink_to(victim)
    with pytest.raises(OSError):
        read_regular(ws / "Dockerfile")
