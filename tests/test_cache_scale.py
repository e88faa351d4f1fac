"""The stage cache's file fingerprints (issue 25, item 3): each file hashed at most once per run and
only when its stat changed, and a changed file always seen: the traps of a stat cache (racily
clean files, a file replaced by a link, a rename, a deleted or new file, a file an upstream stage
rewrites in the same run)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from helpers import run_console

from pipekit._core.listing import listing
from pipekit._core.safefile import Beneath, UnsafePath
from pipekit._core.statcache import DB_NAME, GLOB_SKIP, RACY_NS, FileDigests, FileSet, KnownFiles, stat_key
from pipekit._dsl.cache import changed, inputs, key_of, stage_inputs
from pipekit._dsl.conditions import glob_filter, glob_match
from pipekit._history.store import History

OLD = RACY_NS / 1e9 + 0.2  # seconds after which a file written now is no longer racily clean


def b3(data: bytes) -> str:
    return "b3:" + blake3(data).hexdigest()


def workspace(tmp_path: Path, files: dict[str, bytes]) -> Path:
    (tmp_path / ".pipekit").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def digests(ws: Path, *patterns: str, run: FileDigests | None = None) -> dict[str, str]:
    return dict((run or FileDigests(ws)).digests(patterns or ("src/**",), glob_filter))


def rows(ws: Path) -> dict[str, tuple[bytes, str, int]]:
    db = sqlite3.connect(ws / ".pipekit" / DB_NAME)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT path, stat, digest, trusted FROM files")}
    finally:
        db.close()


def test_digests_are_blake3_of_the_content_streamed(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)  # more than one 1 MiB piece
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/big.bin": big, "other.txt": b"x"})
    assert digests(ws) == {"src/a.txt": b3(b"alpha"), "src/big.bin": b3(big)}


def test_an_unchanged_file_is_not_read_again_and_a_changed_one_is(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/b.txt": b"beta"})
    time.sleep(OLD)
    first = FileDigests(ws)
    assert digests(ws, run=first) == {"src/a.txt": b3(b"alpha"), "src/b.txt": b3(b"beta")}
    assert first.hashed == 2 and all(trusted for _, _, trusted in rows(ws).values())
    second = FileDigests(ws)  # the next run: the stat cache says both are unchanged
    assert digests(ws, run=second)["src/a.txt"] == b3(b"alpha") and (second.hashed, second.reused) == (0, 2)
    (ws / "src/b.txt").write_bytes(b"BETA")  # same size
    third = FileDigests(ws)
    assert digests(ws, run=third)["src/b.txt"] == b3(b"BETA") and third.hashed == 1


def test_a_racily_clean_entry_is_hashed_again_even_when_its_stat_matches(tmp_path: Path) -> None:
    """git's racy-git rule: content rewritten in the same clock tick as it was hashed keeps size,
    mtime and ctime; an entry whose file was that new when it was hashed is not trusted."""
    ws = workspace(tmp_path, {"src/a.txt": b"old!"})
    assert digests(ws) == {"src/a.txt": b3(b"old!")}
    [(st, _, trusted)] = rows(ws).values()
    assert not trusted  # written just now: racily clean
    before = os.stat(ws / "src/a.txt")
    (ws / "src/a.txt").write_bytes(b"new!")  # same size, the mtime put back: what one tick looks like
    os.utime(ws / "src/a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    now = os.stat(ws / "src/a.txt")
    # whatever the clock did, make the stored stat the file's stat now: only the racy rule is left
    db = sqlite3.connect(ws / ".pipekit" / DB_NAME)
    with db:
        db.execute("UPDATE files SET stat = ? WHERE path = 'src/a.txt'", (stat_key(now),))
    db.close()
    run = FileDigests(ws)
    assert digests(ws, run=run) == {"src/a.txt": b3(b"new!")} and run.hashed == 1
    # the same row marked trusted would have been believed: the racy rule is what saw the change
    db = sqlite3.connect(ws / ".pipekit" / DB_NAME)
    with db:
        db.execute("UPDATE files SET digest = 'b3:stale', trusted = 1 WHERE path = 'src/a.txt'")
    db.close()
    assert digests(ws) == {"src/a.txt": "b3:stale"}


def test_same_size_rewrite_within_the_mtime_granularity_in_one_run(tmp_path: Path) -> None:
    """In one run, an entry of this run is reused only while no stage has run: a stage's write in
    the same tick (same size, same mtime and ctime) is seen by the stage after it."""
    ws = workspace(tmp_path, {"src/a.txt": b"one"})
    run = FileDigests(ws)
    assert digests(ws, run=run) == {"src/a.txt": b3(b"one")}
    assert digests(ws, run=run) == {"src/a.txt": b3(b"one")} and run.hashed == 1  # nothing ran: reused
    with run.writing():  # a stage runs and rewrites the file
        (ws / "src/a.txt").write_bytes(b"two")
        # this kernel gives a changed file a finer timestamp than the one read before (multigrain
        # timestamps); on a coarse clock the stat would not change: make the entry say so
        entry = run._entries["src/a.txt"]  # type: ignore[index]
        run._entries["src/a.txt"] = (entry[0], stat_key(os.stat(ws / "src/a.txt")), *entry[2:])  # type: ignore[index]
    assert digests(ws, run=run) == {"src/a.txt": b3(b"two")} and run.hashed == 2


def test_a_file_replaced_by_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    ws = workspace(tmp_path / "ws", {"src/a.txt": b"alpha", "src/b.txt": b"beta", ".git/config": b"[core]"})
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    time.sleep(OLD)
    assert digests(ws)["src/a.txt"] == b3(b"alpha")
    (ws / "src/a.txt").unlink()
    (ws / "src/a.txt").symlink_to("b.txt")  # inside: counts as what it points to
    assert digests(ws)["src/a.txt"] == b3(b"beta")
    (ws / "src/b.txt").write_bytes(b"BETA")  # the link's target changes, the link does not
    assert digests(ws)["src/a.txt"] == b3(b"BETA")
    (ws / "src/a.txt").unlink()
    (ws / "src/a.txt").symlink_to(outside / "secret")  # out of the workspace: refused, as before
    with pytest.raises(UnsafePath, match="outside the workspace"):
        digests(ws)
    (ws / "src/a.txt").unlink()
    (ws / "src/a.txt").symlink_to("../.git/config")  # into git's state: refused
    with pytest.raises(UnsafePath, match=r"under \.git/"):
        digests(ws)
    (ws / "src/a.txt").unlink()
    os.mkfifo(ws / "src/a.txt")  # a FIFO never counts (and is never waited on)
    assert "src/a.txt" not in digests(ws)


def test_rename_delete_and_new_file(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/b.txt": b"beta", "src/c.txt": b"gamma"})
    time.sleep(OLD)
    before = digests(ws)
    (ws / "src/a.txt").rename(ws / "src/renamed.txt")
    (ws / "src/b.txt").unlink()
    (ws / "src/new.txt").write_bytes(b"new")
    run = FileDigests(ws)
    after = digests(ws, run=run)
    assert after == {"src/renamed.txt": b3(b"alpha"), "src/c.txt": b3(b"gamma"), "src/new.txt": b3(b"new")}
    assert run.hashed == 2  # the renamed file (a new name) and the new one; c.txt is known
    assert changed({"files": before}, {"files": after})["files"] == {
        "new": ["src/new.txt", "src/renamed.txt"],
        "gone": ["src/a.txt", "src/b.txt"],
    }
    # the entries of files gone are dropped by a walk that finds fewer files than there are entries
    assert digests(ws) == after and set(rows(ws)) == set(after)


def test_key_changes_with_the_files_and_not_otherwise(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/sub/b.txt": b"beta"})

    def key(run: FileDigests | None = None) -> str:
        return key_of(
            stage_inputs(
                pipeline="p", stage="s", fn=test_key_changes_with_the_files_and_not_otherwise, image="i", env={},
                params={}, upstream={}, spec=inputs("src/**"), workspace=ws, environ={}, digests=run,
            )
        )  # fmt: skip

    run = FileDigests(ws)
    first = key(run)
    assert key(run) == first == key() and run.hashed == 2
    (ws / "src/sub/b.txt").write_bytes(b"BETA")
    assert key() != first


def test_glob_filter_is_glob_match(tmp_path: Path) -> None:
    names = ["src/a", "src/", "src/a/b", "srcx/a", "src/.x", "src/./a", "src/../a", "src//a", "a/src/b.py", "SRC/a"]
    names += ["src/a.py", "lib/x/y.py", "src/a/.b/c", "x.py", ".github/w.yml"]
    for pattern in ["src/**", "src/**/*.py", "**/*.py", "{src,lib}/**", "src/*", "s?c/**", "src/a/**", "./src/**"]:
        assert glob_filter(pattern, names) == [n for n in names if glob_match(pattern, n)], pattern


def test_walk_starts_where_the_glob_can_match_without_entering_links(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"real/a.txt": b"a", "src/__pycache__/x.pyc": b"c", "src/ok.py": b"ok"})
    (ws / "linked").symlink_to("real")  # the whole tree's walk enters no link: nothing under it
    assert digests(ws, "linked/**") == {}
    assert digests(ws, "src/**") == {"src/ok.py": b3(b"ok")}
    assert digests(ws, ".git/**", "src/__pycache__/**") == {}
    assert digests(ws, "src") == {"src/__pycache__/x.pyc": b3(b"c"), "src/ok.py": b3(b"ok")}  # a folder, as before


def test_the_stat_cache_is_never_opened_through_a_link(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", {"src/a.txt": b"alpha"})
    elsewhere = tmp_path / "elsewhere.db"
    (ws / ".pipekit" / DB_NAME).symlink_to(elsewhere)
    assert digests(ws) == {"src/a.txt": b3(b"alpha")}  # fingerprinted all the same, nothing stored
    assert not elsewhere.exists()
    assert (ws / ".pipekit" / DB_NAME).is_symlink()
    ws2 = workspace(tmp_path / "ws2", {"src/a.txt": b"alpha"})
    (ws2 / ".pipekit").rmdir()
    (ws2 / ".pipekit").symlink_to(tmp_path / "pk")  # a linked .pipekit/ is not used either
    (tmp_path / "pk").mkdir()
    assert digests(ws2) == {"src/a.txt": b3(b"alpha")} and not list((tmp_path / "pk").iterdir())


def _run(ws: Path, *more: str) -> tuple[str, list[int]]:
    done = run_console(["run", "-f", str(ws), "-v", *more], timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out, [int(n) for n in re.findall(r"cache inputs hashed files=\d+ run_hashed=(\d+)", out)]


HOST_STAGES = """
import pipekit as pk

@pk.stage(cache=pk.inputs("src/**"))
def a(ctx):
    return "a"

@pk.stage(cache=pk.inputs("src/**"))
def b(ctx):
    return "b"

@pk.stage(cache=pk.inputs("src/**", "src/m0.txt"))
def c(ctx, a, b):
    return "c"
"""


def test_a_file_is_hashed_once_per_run_whatever_the_stages_naming_it(tmp_path: Path) -> None:
    """Counted by the product's own debug line (`run_hashed`: the files read and hashed so far
    in the run), with the installed console script."""
    ws = workspace(tmp_path, {f"src/m{i}.txt": f"module {i}".encode() for i in range(40)})
    (ws / "pipeline.py").write_text(HOST_STAGES)
    time.sleep(OLD)
    out, counts = _run(ws)
    assert len(counts) == 3 and max(counts) == 40, out  # three stages, 40 files, each read once
    out, counts = _run(ws)
    assert out.count("cached") >= 3 and counts == [0, 0, 0], out  # nothing changed: nothing read
    (ws / "src/m7.txt").write_text("module 7, changed")
    time.sleep(OLD)
    out, counts = _run(ws)
    assert max(counts) == 1, out


MOUNT_STAGES = """
import pipekit as pk

@pk.stage(image="busybox", cache=pk.inputs("src/**"))
def write(ctx):
    ctx.sh("printf new1 > src/x.txt")

@pk.stage(image="busybox", cache=pk.inputs("src/**"))
def read(ctx, write):
    return ctx.sh("cat src/x.txt").stdout.strip()
"""


@pytest.mark.docker
def test_a_file_an_upstream_stage_rewrites_in_the_same_run_is_seen(tmp_path: Path, busybox_image: str) -> None:
    """Mount mode, a real engine: `write` changes src/x.txt (same size) after its own key hashed
    it; the key of `read` has the new digest."""
    ws = workspace(tmp_path, {"src/x.txt": b"old1", "src/y.txt": b"y"})
    (ws / "pipeline.py").write_text(MOUNT_STAGES)
    out, counts = _run(ws, "--workspace", "mount", "--image-map", f"busybox={busybox_image}")
    assert (ws / "src/x.txt").read_bytes() == b"new1"
    history = History(ws)
    try:
        [run] = history.runs(10)
        lines = [json.loads(line) for line in history.run_file(run.id, "cache_inputs.jsonl").read_text().splitlines()]
    finally:
        history.close()
    files: dict[str, Any] = {entry["stage"]: entry["inputs"]["files"] for entry in lines}
    assert files["write"]["src/x.txt"] == b3(b"old1"), out
    assert files["read"]["src/x.txt"] == b3(b"new1"), out
    assert files["read"]["src/y.txt"] == files["write"]["src/y.txt"] == b3(b"y")


# -- sets known by their listing (KnownFiles): a cached rerun loads no entry ----------------------


def fp(ws: Path, *patterns: str, run: FileDigests | None = None) -> FileSet | KnownFiles:
    return (run or FileDigests(ws)).fingerprint(patterns or ("src/**",), glob_filter)


def sets(ws: Path) -> list[tuple[str, str, int]]:
    db = sqlite3.connect(ws / ".pipekit" / DB_NAME)
    try:
        return list(db.execute("SELECT patterns, digest, count FROM sets"))
    finally:
        db.close()


def settled(ws: Path, *patterns: str) -> str:
    """Fingerprinted twice: the first run makes the set (and remembers it), the next one recalls it."""
    first = fp(ws, *patterns)
    assert isinstance(first, FileSet)
    run = FileDigests(ws)
    again = fp(ws, *patterns, run=run)
    assert isinstance(again, KnownFiles) and run.recalled == 1 and run._entries is None  # no entry loaded
    assert again.digest() == first.digest() and len(again) == len(first)
    assert again.whole() == first  # by name when the key misses: the same set
    return first.digest()


def test_an_unchanged_set_is_known_by_its_listing_without_loading_an_entry(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/sub/b.txt": b"beta", "other.txt": b"x"})
    time.sleep(OLD)
    known = settled(ws)
    assert sets(ws) == [('["src/**"]', known, 2)]
    (ws / "other.txt").write_bytes(b"y")  # outside the folder src/** is looked for in: still known
    assert isinstance(fp(ws), KnownFiles)
    (ws / "src/__pycache__").mkdir()  # a folder no walk enters (made in src/: src's own stat changed)
    assert isinstance(fp(ws), FileSet) and isinstance(fp(ws), KnownFiles)
    (ws / "src/__pycache__/x.pyc").write_bytes(b"c")  # what it holds is never listed
    assert isinstance(fp(ws), KnownFiles)


@pytest.mark.parametrize("trap", ["same size", "link", "rename", "rename back", "delete", "new", "new folder"])
def test_a_changed_file_is_seen_by_a_set_known_by_its_listing(tmp_path: Path, trap: str) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "src/b.txt": b"beta", "src/sub/c.txt": b"gamma"})
    time.sleep(OLD)
    settled(ws)
    want = {"src/a.txt": b3(b"alpha"), "src/b.txt": b3(b"beta"), "src/sub/c.txt": b3(b"gamma")}
    a = ws / "src/a.txt"
    if trap == "same size":  # its mtime put back as well: the ctime and the listing still change
        before = os.stat(a)
        a.write_bytes(b"ALPHA")
        os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
        want["src/a.txt"] = b3(b"ALPHA")
    elif trap == "link":
        a.unlink()
        a.symlink_to("b.txt")
        want["src/a.txt"] = b3(b"beta")
    elif trap in ("rename", "rename back"):
        a.rename(ws / "src/sub/a.txt")
        want["src/sub/a.txt"] = want.pop("src/a.txt")
        if trap == "rename back":
            (ws / "src/sub/a.txt").rename(a)
            want["src/a.txt"] = want.pop("src/sub/a.txt")
    elif trap == "delete":
        (ws / "src/sub/c.txt").unlink()
        del want["src/sub/c.txt"]
    elif trap == "new":
        (ws / "src/sub/d.txt").write_bytes(b"delta")
        want["src/sub/d.txt"] = b3(b"delta")
    else:
        (ws / "src/sub/deeper/more").mkdir(parents=True)
        (ws / "src/sub/deeper/more/e.txt").write_bytes(b"eps")
        want["src/sub/deeper/more/e.txt"] = b3(b"eps")
    now = fp(ws)
    assert isinstance(now, FileSet) and now == want


def test_a_set_is_remembered_only_when_made_of_trusted_entries_and_no_link(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "other/d/x.txt": b"x"})
    assert isinstance(fp(ws), FileSet) and sets(ws) == []  # written just now: racily clean
    assert isinstance(fp(ws), FileSet) and sets(ws) == []  # still
    time.sleep(OLD)
    assert isinstance(fp(ws), FileSet) and len(sets(ws)) == 1  # hashed again, trusted: remembered
    assert isinstance(fp(ws), KnownFiles)
    # a link the patterns select: what it leads to is not in the listing; never remembered
    (ws / "src/l").symlink_to("../other/d")  # a folder: selects nothing today
    (ws / ".pipekit" / DB_NAME).unlink()
    time.sleep(OLD)
    assert fp(ws) == {"src/a.txt": b3(b"alpha")} and fp(ws) == {"src/a.txt": b3(b"alpha")} and sets(ws) == []
    (ws / "other/d/x.txt").unlink()
    (ws / "other/d").rmdir()
    (ws / "other/d").write_bytes(b"now a file")  # the link's listing did not change; its target did
    assert fp(ws) == {"src/a.txt": b3(b"alpha"), "src/l": b3(b"now a file")}


def test_a_set_is_not_remembered_when_its_listing_changed_while_it_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipekit._core.statcache as statcache

    ws = workspace(tmp_path, {"src/a.txt": b"alpha"})
    time.sleep(OLD)
    listings = iter([b"before", b"after", b"before", b"before", b"before"])
    monkeypatch.setattr(statcache, "listing", lambda fd, root, skip: next(listings))
    assert isinstance(fp(ws), FileSet) and sets(ws) == []  # listed before and after the walk: not the same
    assert isinstance(fp(ws), FileSet) and len(sets(ws)) == 1  # the same: remembered
    assert isinstance(fp(ws), KnownFiles)


def test_without_gnu_find_every_set_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipekit._core.listing as listing

    ws = workspace(tmp_path, {"src/a.txt": b"alpha"})
    time.sleep(OLD)
    monkeypatch.setattr(listing, "_find", [None])
    assert fp(ws) == {"src/a.txt": b3(b"alpha")} and isinstance(fp(ws), FileSet) and sets(ws) == []


def test_the_listing_leaves_out_what_the_walk_leaves_out_and_enters_no_link(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"a.py": b"a", ".git/config": b"[core]", "real/b.py": b"b", "p/__pycache__": b"f"})
    (ws / ".GIT").mkdir()  # a case-insensitive file system's .git: left out as well
    (ws / "linked").symlink_to("real")
    with Beneath(ws) as tree:
        whole = listing(tree.fd, "", GLOB_SKIP)
        assert whole is not None
        names = {line.split(b" ", 7)[-1] for line in whole.split(b"\0\0", 1)[1].split(b"\0") if line}
        assert names == {b"", b"a.py", b"real", b"real/b.py", b"linked", b"p", b"p/__pycache__"}  # a file so named
        with pytest.raises(OSError):
            listing(tree.fd, "linked", GLOB_SKIP)  # a link on the way: refused
        (ws / ".git/config").write_bytes(b"[core]\n\tfsmonitor = evil")
        (ws / ".pipekit/x").write_bytes(b"x")
        assert listing(tree.fd, "", GLOB_SKIP) == whole  # never read there
        (ws / "real/b.py").write_bytes(b"B")
        assert listing(tree.fd, "", GLOB_SKIP) != whole
    assert fp(ws, "linked/**") == {}  # the walk enters no link: nothing selected, remembered so
    known = fp(ws, "linked/**")
    assert isinstance(known, KnownFiles) and len(known) == 0 and known.whole() == {}
    (ws / "real/c.py").write_bytes(b"c")  # not under a real folder linked/: still nothing
    assert len(known := fp(ws, "linked/**")) == 0 and isinstance(known, KnownFiles)
    (ws / "linked").unlink()
    (ws / "real").rename(ws / "linked")  # now a real folder
    assert fp(ws, "linked/**") == {"linked/b.py": b3(b"B"), "linked/c.py": b3(b"c")}


def test_a_stage_whose_key_misses_keeps_its_files_by_name(tmp_path: Path) -> None:
    """A known set is made by name when the key misses (the history says which files changed);
    with the installed console script."""
    ws = workspace(tmp_path, {f"src/m{i}.txt": f"module {i}".encode() for i in range(20)})
    (ws / "pipeline.py").write_text(HOST_STAGES)
    time.sleep(OLD)
    _run(ws)
    _run(ws)  # remembers the set (trusted entries by now)
    assert [(p, n) for p, _, n in sets(ws)] == [('["src/**"]', 20)]  # c names a file too: never remembered
    (ws / "pipeline.py").write_text(HOST_STAGES.replace('return "a"', 'return "a2"'))
    out, _ = _run(ws)
    assert re.search(r"\nb +cached", out) and re.search(r"\na +succeeded", out), out  # both known: a hit, a miss
    history = History(ws)
    try:
        last = history.runs(1)[0]
        lines = [json.loads(line) for line in history.run_file(last.id, "cache_inputs.jsonl").read_text().splitlines()]
    finally:
        history.close()
    [entry] = [e for e in lines if e["stage"] == "a"]
    assert entry["inputs"]["files"] == {f"src/m{i}.txt": b3(f"module {i}".encode()) for i in range(20)}, out


def test_the_run_asks_git_about_its_checkout_while_it_gets_ready(tmp_path: Path) -> None:
    """``git status`` (a stat of every tracked file) starts when the recorder is made, beside the
    rest of the run's set-up: the commit recorded is the one checked out then."""
    import subprocess

    from pipekit._history.recorder import HistoryRecorder

    ws = workspace(tmp_path, {"src/a.txt": b"alpha", "pipeline.py": b"# p\n"})
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "."], cwd=ws, check=True)
    subprocess.run([*git, "add", "src", "pipeline.py"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=ws, check=True)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    history = History(ws)
    try:
        recorder = HistoryRecorder(history, argv="pipekit run", branch=None, checkout=ws)
        assert recorder._git is not None
        recorder._git[1].join(30)
        (ws / "src/a.txt").write_bytes(b"ALPHA")
        subprocess.run([*git, "commit", "-qam", "two"], cwd=ws, check=True)

        class Plan:
            class pipeline:  # noqa: N801
                name = "p"
                path = str(ws / "pipeline.py")

        recorder.history.write_plan = lambda *a: None  # type: ignore[method-assign]
        recorder.run_started("r1", Plan)
        [run] = history.runs(1)
        assert run.git_commit == first  # asked before the second commit: the early answer was used
        other = HistoryRecorder(history, argv="pipekit run", branch=None)  # no checkout known early
        other.run_started("r2", Plan)
        assert history.runs(1)[0].git_commit != first
    finally:
        history.close()
