"""The server's git: a mirror of each project, workspaces checked out at exactly one commit, and
what a commit's pipeline says about its triggers.

A project's runs happen in workspaces ``ws-0``, ``ws-1``, ... (one per run going on at once, as
Jenkins' ``workspace@2``): each run gets one checked out at its commit with every other file
removed (``git clean -ffdx``) except ``.pipekit/``, the run history, which keeps the stage cache
across runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pipekit._history_fs import DIRNAME
from pipekit._server_config import Project
from pipekit.exceptions import UsageError

__all__ = ["Git"]


def git(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_git_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"git {args[0]} failed: {e}") from None
    if proc.returncode != 0:
        raise UsageError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _git_env() -> dict[str, str]:
    import os

    return {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


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
        out = git("ls-remote", "--heads", project.repo, timeout=60)
        found = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            found[ref.removeprefix("refs/heads/")] = sha
        return found

    def fetch(self, project: Project) -> Path:
        """The project's mirror, brought up to date."""
        mirror = self.folder(project) / "mirror.git"
        with self._lock(project.name):
            if not (mirror / "HEAD").exists():
                mirror.parent.mkdir(parents=True, exist_ok=True)
                git("clone", "--quiet", "--mirror", project.repo, str(mirror))
            else:
                git("fetch", "--quiet", "--prune", "origin", cwd=mirror)
        return mirror

    def _at(self, project: Project, folder: Path, commit: str) -> Path:
        """A clone of the project's mirror in ``folder``, at exactly ``commit``, nothing else in it
        but ``.pipekit/``."""
        mirror = self.fetch(project)
        if not (folder / ".git").exists():
            git("clone", "--quiet", "--no-checkout", str(mirror), str(folder))
        else:
            git("fetch", "--quiet", "origin", cwd=folder)
        git("checkout", "--quiet", "--force", "--detach", commit, cwd=folder)
        git("clean", "-ffdxq", "-e", DIRNAME, cwd=folder)
        return folder

    def checkout(self, project: Project, commit: str, slot: int) -> Path:
        """Workspace ``slot`` at ``commit`` (its run history stays)."""
        return self._at(project, self.folder(project) / f"ws-{slot}", commit)

    def triggers(self, project: Project, commit: str) -> list[dict[str, Any]]:
        """The pipeline's ``triggers=`` at ``commit`` (read by ``pipekit triggers`` in a process of its
        own: the server never imports a pipeline)."""
        key = (project.name, commit)
        if key in self._triggers:
            return self._triggers[key]
        with self._lock(f"{project.name}/probe"):
            probe = self._at(project, self.folder(project) / "probe", commit)
            proc = subprocess.run(
                [sys.executable, "-m", "pipekit", "triggers", "-f", str(probe / project.pipeline)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=probe,
            )
        if proc.returncode != 0:
            raise UsageError(
                f"cannot read the triggers of {project.name} at {commit[:12]}: {proc.stderr.strip()[-500:]}"
            )
        found: list[dict[str, Any]] = json.loads(proc.stdout)["triggers"]
        self._triggers[key] = found
        return found
