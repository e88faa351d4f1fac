"""History retention (issue 28 item 4): `pipekit prune` and keep-runs/keep-days, through the
installed console script, measuring `.pipekit/` before and after."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from pipekit._core.safefile import UnsafePath, remove_beneath
from pipekit._history.prune import size_of
from tests.helpers import run_console

# host stages: no engine needed. `blob` is new every run (an artifact only that run refers to),
# `shared.txt` is the same every run (one stored file that every run refers to); `cached` is a
# stage-cache entry keyed on src.txt.
PIPELINE = """
import os
import pipekit as pk

@pk.stage
def make(ctx):
    os.makedirs("dist", exist_ok=True)
    with open("dist/blob.bin", "wb") as f:
        f.write(os.urandom(300_000))
    with open("dist/shared.txt", "w") as f:
        f.write("the same in every run")
    ctx.archive("dist/blob.bin", "dist/shared.txt")

@pk.stage(cache=pk.inputs("src.txt"))
def cached(ctx):
    return open("src.txt").read()
"""


def _project(tmp_path: Path, pyproject: str = "") -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "src.txt").write_text("v1")
    if pyproject:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    return tmp_path


def _run(project: Path, *args: str) -> str:
    proc = run_console(["run", "--progress", "plain", *args], cwd=project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    return proc.stderr


def _db(project: Path) -> sqlite3.Connection:
    return sqlite3.connect(project / ".pipekit" / "pipekit.db")


def _run_ids(project: Path) -> list[str]:
    with _db(project) as db:
        return [r[0] for r in db.execute("SELECT id FROM runs ORDER BY started")]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and "pipekit.db" not in p.name
    }


def test_prune_keeps_the_newest_runs_and_frees_what_only_the_others_used(tmp_path: Path) -> None:
    project = _project(tmp_path)
    for _ in range(4):
        _run(project)
    (project / "src.txt").write_text("v2")  # a new cache entry; the v1 entry is used by runs 1-4 only
    _run(project)
    runs = _run_ids(project)
    assert len(runs) == 5
    history = project / ".pipekit"
    before, files_before = size_of(history), _tree(history)
    with _db(project) as db:
        rows_before = db.execute("SELECT count(*) FROM stages").fetchone()[0]

    dry = run_console(["prune", "--keep", "1", "--dry-run"], cwd=project)
    assert dry.returncode == 0, dry.stderr
    assert "would remove 4 run(s), 4 archived file(s) and 1 cached stage result(s)" in dry.stdout
    assert all(f"  {r}" in dry.stdout for r in runs[:4])
    assert _tree(history) == files_before and size_of(history) == before  # --dry-run changed nothing
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM stages").fetchone()[0] == rows_before
    assert _run_ids(project) == runs

    proc = run_console(["prune", "--keep", "1"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "removed 4 run(s), 4 archived file(s) and 1 cached stage result(s) no kept run uses" in proc.stdout
    after = size_of(history)
    assert before - after >= 4 * 300_000, (before, after)  # the four blobs only pruned runs had
    assert _run_ids(project) == runs[4:]
    assert not any((history / "logs" / r).exists() for r in runs[:4])
    assert (history / "logs" / runs[4]).is_dir()

    # what the kept run refers to is all there: its blob, the shared file, its cache entry
    out = tmp_path / "out"
    got = run_console(["artifacts", "last", "--dest", str(out)], cwd=project)
    assert got.returncode == 0, got.stderr
    assert (out / "dist" / "shared.txt").read_text() == "the same in every run"
    assert (out / "dist" / "blob.bin").stat().st_size == 300_000
    listed = run_console(["cache", "list"], cwd=project)
    assert "1 cached stage results" in listed.stdout and runs[4] in listed.stdout

    again = run_console(["prune", "--keep", "1"], cwd=project)
    assert again.returncode == 0 and "nothing to prune" in again.stdout


def test_a_cache_entry_a_kept_run_took_a_hit_on_stays(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _run(project)  # makes the entry
    _run(project)  # takes a hit on it
    first = _run_ids(project)[0]
    proc = run_console(["prune", "--keep", "1"], cwd=project)
    assert "removed 1 run(s), 1 archived file(s) and 0 cached stage result(s)" in proc.stdout
    with _db(project) as db:
        assert db.execute("SELECT run_id FROM cache").fetchall() == [(first,)]


def test_running_and_awaiting_runs_are_never_pruned_and_older_than_goes_by_age(tmp_path: Path) -> None:
    project = _project(tmp_path)
    for _ in range(4):
        _run(project)
    old, running, awaiting, newest = _run_ids(project)
    long_ago = time.time() - 40 * 86400
    with _db(project) as db:
        db.execute("UPDATE runs SET started = ? WHERE id IN (?, ?, ?)", (long_ago, old, running, awaiting))
        # a run in progress on this machine (its process is alive: this one), and one awaiting approval
        db.execute(
            "UPDATE runs SET status = 'running', pid = ?, host = ? WHERE id = ?",
            (os.getpid(), socket.gethostname(), running),
        )
        db.execute("UPDATE runs SET status = 'awaiting_approval' WHERE id = ?", (awaiting,))

    proc = run_console(["prune", "--older-than", "30d"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 run(s)" in proc.stdout
    assert set(_run_ids(project)) == {running, awaiting, newest}

    proc = run_console(["prune", "--keep", "0"], cwd=project)
    assert "removed 1 run(s)" in proc.stdout
    assert set(_run_ids(project)) == {running, awaiting}


def test_keep_runs_in_pyproject_prunes_after_each_run(tmp_path: Path) -> None:
    project = _project(tmp_path, "[tool.pipekit]\nkeep-runs = 2\n")
    for _ in range(3):
        said = _run(project)
    assert len(_run_ids(project)) == 2
    assert "history: removed 1 run(s)" in said and "keep-runs=2" in said
    sizes = []
    for _ in range(3):
        _run(project)
        sizes.append(size_of(project / ".pipekit"))
    assert len(_run_ids(project)) == 2
    assert max(sizes) - min(sizes) < 300_000  # it no longer grows by a blob a run


def test_prune_refuses_without_a_rule_and_with_a_bad_age(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _run(project)
    proc = run_console(["prune"], cwd=project)
    assert proc.returncode == 2 and "--keep N" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_console(["prune", "--older-than", "soon"], cwd=project)
    assert proc.returncode == 2 and "an age like 30d" in proc.stderr


def test_prune_never_follows_a_link_in_the_history(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    project = _project(tmp_path / "p")
    _run(project)
    _run(project)
    first = _run_ids(project)[0]
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    logs = project / ".pipekit" / "logs" / first
    for f in logs.iterdir():
        f.unlink()
    logs.rmdir()
    logs.symlink_to(outside)  # a link where the run's logs were
    proc = run_console(["prune", "--keep", "1"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert not logs.is_symlink() and (outside / "keep.txt").read_text() == "mine"


def test_remove_beneath_never_leaves_its_root_through_a_link(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "RUN").mkdir(parents=True)
    (outside / "RUN" / "x.log").write_text("x")
    root.mkdir()
    (root / "logs").symlink_to(outside)  # a folder on the way that is a link: refused
    with pytest.raises(UnsafePath, match="not a folder"):
        remove_beneath(root, "logs/RUN")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"12345")
    (root / "a" / "link").symlink_to(outside)  # inside what is removed: the link goes, not its target
    assert remove_beneath(root, "a") == 5
    assert not (root / "a").exists() and (outside / "RUN" / "x.log").read_text() == "x"
    assert remove_beneath(root, "a") == 0
    with pytest.raises(UnsafePath):
        remove_beneath(root, "../outside")
