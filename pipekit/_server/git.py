"""The server's git: a mirror of each project, workspaces checked out at exactly one commit, and
what a commit's pipeline says about its triggers.

A project's runs happen in workspaces ``ws-0``, ``ws-1``, ... (one per run going on at once, as
Jenkins' ``workspace@2``). A workspace is written by the runs in it, so the server never runs git
in it and never trusts what is there: before each run it removes everything but ``.pipekit/`` (the
run history, which keeps the stage cache across runs), ``.git/`` included, without following a
link; checks the commit out from a fresh clone of the project's mirror (made outside the
workspace, with hooks and fsmonitor off), and moves that clone's ``.git`` in. Every git command
the server runs gets a scrubbed environment (``_server_env.git_env``), ``-c core.hooksPath=/dev/null
-c core.fsmonitor=false``, and only commits that are hex object names, after ``--end-of-options``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pipekit._history.fs import DIRNAME
from pipekit._server.config import Project
from pipekit._server.env import child_env, git_env
from pipekit.exceptions import UsageError

__all__ = ["Git", "check_commit", "git"]

SAFE = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "protocol.ext.allow=never")
HEX = re.compile(r"^[0-9a-f]{4,64}$")


def check_commit(commit: str) -> str:
    """A commit as the server takes it: a hex object name (never an option or a ref expression)."""
    if not HEX.match(commit):
        raise UsageError(f"a commit is a hex object name (4 to 64 of 0-9a-f), got {commit[:80]!r}")
    return commit


def git(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            ["git", *SAFE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=git_env() | (env or {})
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"git {args[0]} failed: {e}") from None
    if proc.returncode != 0:
        raise UsageError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _remove(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder tree, even one a container made
    read-only."""
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    try:
        shutil.rmtree(path)
    except OSError:  # folders a stage made unreadable or read-only: opened up (never through a link), again
        _opened_up(path)
        shutil.rmtree(path)


def _opened_up(root: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(root, 0o700)
    for top, dirs, _files in os.walk(root):
        for name in dirs:
            folder = os.path.join(top, name)
            if not os.path.islink(folder):
                with contextlib.suppress(OSError):
                    os.chmod(folder, 0o700)


def empty(folder: Path, keep: str | None = DIRNAME) -> None:
    """Everything in ``folder`` removed but ``keep`` (when it is a real folder)."""
    for entry in os.scandir(folder):
        if entry.name == keep and entry.is_dir(follow_symlinks=False):
            continue
        _remove(Path(entry.path))


class Git:
    def __init__(self, state_dir: Path) -> None:
        self._root = state_dir / "projects"
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._triggers: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def folder(self, project: Project) -> Path:
        return self._root / project.name

    def heads(self, project: Project) -> dict[str, str]:
        """The repository's branches now: name -> commit (``git ls-remote``)."""
        out = git("ls-remote", "--heads", "--end-of-options", project.repo, timeout=60)
        found = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if HEX.match(sha):
                found[ref.removeprefix("refs/heads/")] = sha
        return found

    def fetch(self, project: Project) -> Path:
        """The project's mirror, brought up to date."""
        mirror = self.folder(project) / "mirror.git"
        with self._lock(project.name):
            if not (mirror / "HEAD").exists():
                mirror.parent.mkdir(parents=True, exist_ok=True)
                git("clone", "--quiet", "--mirror", "--", project.repo, str(mirror))
            else:
                git("fetch", "--quiet", "--prune", "origin", cwd=mirror)
        return mirror

    def resolve(self, project: Project, commit: str) -> str:
        """The full name of ``commit`` in the mirror (an error when it is not a commit there)."""
        mirror = self.fetch(project)
        check_commit(commit)
        try:
            found = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}", cwd=mirror)
        except UsageError:
            raise UsageError(f"{project.name} has no commit {commit}") from None
        return found.strip()

    def checkout(self, project: Project, commit: str, slot: int) -> Path:
        """Workspace ``slot`` at ``commit``, nothing else in it but its run history; its ``.git`` a
        fresh clone of the mirror, never one a run could have written."""
        sha = self.resolve(project, commit)
        folder = self.folder(project) / f"ws-{slot}"
        folder.mkdir(parents=True, exist_ok=True)
        empty(folder)
        staging = self.folder(project) / f"ws-{slot}.clone"
        _remove(staging)
        git("clone", "--quiet", "--no-checkout", "--no-hardlinks", "--", str(self.folder(project) / "mirror.git"),
            str(staging))  # fmt: skip
        dotgit = staging / ".git"
        git(f"--git-dir={dotgit}", f"--work-tree={folder}", "checkout", "--quiet", "--force", "--detach", sha, "--")
        os.rename(dotgit, folder / ".git")
        _remove(staging)
        return folder

    def _export(self, project: Project, folder: Path, sha: str) -> None:
        """The files of ``sha`` in ``folder`` (emptied first), with no ``.git``: read from the mirror
        through an index of the server's own."""
        mirror = self.fetch(project)
        folder.mkdir(parents=True, exist_ok=True)
        empty(folder, keep=None)
        index = folder.parent / f"{folder.name}.index"
        index.unlink(missing_ok=True)
        git(f"--git-dir={mirror}", f"--work-tree={folder}", "read-tree", "--reset", "-u", sha,
            env={"GIT_INDEX_FILE": str(index)})  # fmt: skip

    def triggers(self, project: Project, commit: str) -> list[dict[str, Any]]:
        """The pipeline's ``triggers=`` at ``commit``, read by ``pipekit triggers`` in a process of its
        own (the server never imports a pipeline) with nothing of the server's environment; its answer
        comes through a file of its own, whatever the pipeline prints. A UsageError says why not."""
        key = (project.name, commit)
        if key in self._triggers:
            return self._triggers[key]
        with self._lock(f"{project.name}/probe"):
            sha = self.resolve(project, commit)
            probe = self.folder(project) / "probe"
            self._export(project, probe, sha)
            found = _probe(project, probe, f"{project.name} at {commit[:12]}")
        self._triggers[key] = found
        return found


def _probe(project: Project, probe: Path, what: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="pipekit-probe-") as answers:
        answer = Path(answers) / "triggers.json"
        command = [sys.executable, "-m", "pipekit", "triggers", "-f", str(probe / project.pipeline), "--output",
                   str(answer)]  # fmt: skip
        proc = subprocess.Popen(
            command, cwd=probe, env=child_env(()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            _, errors = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise UsageError(f"cannot read the triggers of {what}: pipeline.py took more than 120 s to load") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise UsageError(f"cannot read the triggers of {what}: {errors.strip()[-1500:]}")
        try:
            data = json.loads(answer.read_text(encoding="utf-8"))
            found = data["triggers"]
            if not isinstance(found, list) or not all(isinstance(t, dict) and isinstance(t.get("kind"), str)
                                                      for t in found):  # fmt: skip
                raise ValueError("not a list of triggers")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"cannot read the triggers of {what}: pipekit triggers gave no answer ({e})") from None
    return found
