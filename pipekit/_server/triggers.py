"""What starts runs besides a webhook or the API: polling the repositories, and cron schedules.

A push (from a webhook or seen by polling) runs when its branch matches the project's
``branches`` and, if the pipeline declares ``pk.on_push(...)`` triggers, one of them; otherwise the
server log says why nothing started. Cron schedules are read from the pipeline at the head of the
project's first branch, in the server's local time zone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pipekit._dsl.conditions import glob_match
from pipekit._server.config import Project, ServerConfig
from pipekit._server.git import Git
from pipekit._server.store import Store
from pipekit._server.work import Work
from pipekit.exceptions import UsageError

__all__ = ["Triggers"]


class Triggers:
    def __init__(self, config: ServerConfig, store: Store, git: Git, work: Work, log: Callable[[str], None]) -> None:
        self.config, self.store, self.git, self.work, self.log = config, store, git, work, log
        self._polled: dict[str, float] = {}
        self._schedules: dict[str, list[tuple[Any, str, str]]] = {}  # project -> (croniter, branch, expr)
        self._stop = threading.Event()

    def push(
        self, project: Project, branch: str, sha: str, trigger: str = "push", by: str | None = None
    ) -> tuple[int | None, str]:
        """Queue a run for a push, or say why not; ``by``: what saw it (``webhook:github``, ``server:poll``)."""
        by = by or f"server:{trigger}"
        self.store.set_head(project.name, branch, sha)
        if not any(glob_match(b, branch) for b in project.branches):
            why = f"no branch filter of the project matches {branch} (branches: {', '.join(project.branches)})"
            self.log(f"{trigger} to {project.name} {branch} {sha[:12]} ignored: {why}")
            return None, why
        if branch == self._cron_branch(project):
            try:
                self._load_schedules(project, sha)
            except UsageError as e:
                self.log(f"{project.name}: schedules not read: {e}")
        try:
            declared = self.git.triggers(project, sha)
        except Exception as e:  # a pipeline that does not load: a run recorded with why, never a lost push
            self.log(f"{project.name} {sha[:12]}: {e}")
            return self.work.refused(project, branch, sha, trigger, str(e) or type(e).__name__, by), "error"
        wanted = [t for t in declared if t["kind"] == "push"]
        if wanted and not any(
            not t.get("branches") or any(glob_match(b, branch) for b in t["branches"]) for t in wanted
        ):
            filters = ", ".join(b for t in wanted for b in t.get("branches", []))
            why = f"the pipeline's pk.on_push(branches=[{filters}]) does not match {branch}"
            self.log(f"{trigger} to {project.name} {branch} {sha[:12]} ignored: {why}")
            return None, why
        return self.work.submit(project, branch, sha, trigger, by=by), "queued"

    # -- the thread that polls and keeps the schedules --------------------------------------
    def start(self) -> None:
        for project in self.config.projects:
            try:
                branch = self._cron_branch(project)
                sha = self.git.heads(project).get(branch) if branch else None
                if sha:
                    self._load_schedules(project, sha)
            except Exception as e:
                self.log(f"cannot read the schedules of {project.name}: {e}")
        threading.Thread(target=self._loop, name="pipekit-serve-triggers", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for project in self.config.projects:
                try:
                    self._poll(project)
                    self._cron(project)
                except Exception as e:
                    self.log(f"{project.name}: {e}")

    def _poll(self, project: Project) -> None:
        if project.poll is None or time.monotonic() - self._polled.get(project.name, -1e9) < project.poll:
            return
        self._polled[project.name] = time.monotonic()
        known = self.store.heads(project.name)
        for branch, sha in self.git.heads(project).items():
            if not any(glob_match(b, branch) for b in project.branches):
                continue
            if not known:
                self.store.set_head(project.name, branch, sha)  # the first poll only learns the heads
            elif known.get(branch) != sha:
                self.push(project, branch, sha, "poll")

    def _cron_branch(self, project: Project) -> str | None:
        concrete = [b for b in project.branches if not any(c in b for c in "*?[")]
        return concrete[0] if concrete else None

    def _load_schedules(self, project: Project, sha: str) -> None:
        from croniter import croniter

        schedules = []
        for t in self.git.triggers(project, sha):
            if t["kind"] == "cron":
                branch = t.get("branch") or self._cron_branch(project)
                if branch:
                    schedules.append((croniter(t["schedule"], time.time()), branch, t["schedule"]))
        known = [s[2] for s in self._schedules.get(project.name, [])]
        if known != [s[2] for s in schedules]:
            self.log(f"{project.name}: schedules {', '.join(s[2] for s in schedules) or '(none)'}")
            self._schedules[project.name] = schedules
            for it, _branch, _expr in schedules:
                it.get_next(float)

    def _cron(self, project: Project) -> None:
        for it, branch, expr in self._schedules.get(project.name, []):
            if time.time() >= it.get_current(float):
                it.get_next(float)
                sha = self.git.heads(project).get(branch)
                if sha is None:
                    self.log(f"{project.name}: schedule '{expr}' found no branch {branch}")
                    continue
                self.work.submit(project, branch, sha, "cron", by="server:cron")
