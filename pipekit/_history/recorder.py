"""Recording a run into the history: the scheduler's observer and its stage records."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipekit._core.results import StageStatus
from pipekit._core.testreport import TestReport
from pipekit._history.store import History
from pipekit.exceptions import UsageError

__all__ = ["HistoryRecorder", "Unfailing", "git_state", "redact_argv"]


def redact_argv(argv: list[str], mask: Callable[[str], str]) -> str:
    """The command line as recorded, with every known secret value masked."""
    return " ".join(mask(a) for a in argv)


class HistoryRecorder:
    """Records a run into a :class:`History`: the executor's observer and its stage records."""

    def __init__(
        self,
        history: History,
        *,
        argv: str,
        branch: str | None,
        resumed_from: str | None = None,
        params: Mapping[str, Any] | None = None,
        checkout: Path | None = None,
    ) -> None:
        """``checkout``: the folder the run's pipeline is in, when known before the run starts:
        git is asked about it at once, in a thread, while the run gets ready (on a large checkout
        ``git status`` stats every tracked file)."""
        self.history = history
        self._git: tuple[Path, threading.Thread, list[tuple[str | None, bool | None]]] | None = None
        if checkout is not None:
            found: list[tuple[str | None, bool | None]] = []
            thread = threading.Thread(
                target=lambda: found.append(git_state(checkout)), name="pipekit-git-state", daemon=True
            )
            thread.start()
            self._git = (checkout, thread, found)
        self.argv = argv
        self.branch = branch
        self.resumed_from = resumed_from
        self.params = dict(params or {})  # masked by the caller
        self.run_id = ""

    def run_started(self, run_id: str, plan: Any) -> None:
        self.run_id = run_id
        path = plan.pipeline.path or ""
        commit, dirty = self._git_state(Path(path).parent if path else Path.cwd())
        self.history.start_run(
            run_id,
            pipeline=plan.pipeline.name,
            path=path,
            branch=self.branch,
            git_commit=commit,
            dirty=dirty,
            argv=self.argv,
            resumed_from=self.resumed_from,
        )
        self.history.write_plan(run_id, plan, self.params)

    def _git_state(self, checkout: Path) -> tuple[str | None, bool | None]:
        if self._git is not None and self._git[0] == checkout:
            self._git[1].join()
            if self._git[2]:
                return self._git[2][0]
        return git_state(checkout)

    def stage_started(self, run_id: str, name: str, position: int) -> None:
        self.history.stage_started(run_id, name, position)

    def stage_finished(self, run_id: str, result: Any, position: int) -> None:
        self.history.stage_finished(
            run_id,
            result.name,
            position,
            status=result.status,
            attempts=result.attempts,
            duration_s=result.duration_s,
            exit_code=result.exit_code,
            error=result.error,
            reason=result.reason,
            cache_hit=result.status == StageStatus.CACHED,
            cache_key=result.cache_key,
            output=result.output_json,
        )
        if result.cache_key and result.cache_inputs:
            line = json.dumps({"stage": result.name, "key": result.cache_key, "inputs": result.cache_inputs})
            self.history.append_run_file(run_id, "cache_inputs.jsonl", line)

    def run_finished(self, run_id: str, result: Any) -> None:
        self.history.finish_run(run_id, result.status)

    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        return self.history.add_artifact(self.run_id, stage, path, data)

    def add_tests(self, stage: str, report: TestReport) -> None:
        self.history.add_tests(self.run_id, stage, report)


#: what git sees of the user's environment when pipekit asks it about the workspace
_GIT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: git with no hook and no fsmonitor, whatever a .git/config a stage wrote says (command-line config wins)
_GIT_SAFE = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false"}


def _git(workspace: Path, *args: str, config: dict[str, str] | None = None) -> str | None:
    """``git ARGS`` in the workspace, its output, or None when it fails. A scrubbed environment
    (no GIT_DIR of the caller's), hooks, fsmonitor and (``config``) filters off."""
    import os
    import subprocess

    values = {**_GIT_SAFE, **(config or {})}
    env = {k: os.environ[k] for k in _GIT_ENV if k in os.environ}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_COUNT=str(len(values)))
    for i, (key, value) in enumerate(values.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    try:
        proc = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(workspace: Path) -> tuple[str | None, bool | None]:
    """The commit checked out in ``workspace`` and whether its tracked files have uncommitted
    changes (untracked files do not count, as for ``git describe --dirty``); (None, None) outside
    git. ``git status`` may run a filter driver's ``clean`` command that a ``.git/config`` names (a
    stage may have written one): every driver configured is switched off for it."""
    status = _git(
        workspace,
        "status",
        "--porcelain=v2",
        "--branch",
        "--untracked-files=no",
        "--ignore-submodules=dirty",
        config=_filters_off(workspace),
    )
    if status is None:
        return None, None
    lines = status.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), "")
    if not re.fullmatch(r"[0-9a-f]{40,64}", commit):  # "(initial)": no commit yet
        return None, None
    return commit, any(line and not line.startswith("#") for line in lines)


def _filters_off(workspace: Path) -> dict[str, str]:
    """``filter.NAME.clean`` (and ``process``, ``smudge``) set to nothing for every driver git's
    configuration names; no git call when the checkout's own config names none (the usual case)."""
    try:
        local = (workspace / ".git" / "config").read_text(encoding="utf-8", errors="replace").lower()
    except OSError:
        local = "filter include"  # (a worktree, a subfolder of the checkout: ask git)
    if "filter" not in local and "include" not in local:
        return {}
    drivers = _git(workspace, "config", "--get-regexp", r"^filter\..*\.(clean|process|smudge)$") or ""
    return {line.split()[0]: "" for line in drivers.splitlines() if line.strip()}


class Unfailing:
    """Wraps the history's recorder and log writer so that a write error (a full disk) never
    crashes the run nor turns its outcome: the first one is reported, every later record is still
    tried (space may come back), and the run ends with its true exit code. The database is kept."""

    def __init__(self, recorder: HistoryRecorder, warn: Callable[[str], None]) -> None:
        self._recorder = recorder
        self._warn = warn
        self.broken: str | None = None

    def _guard(self, write: Callable[[], Any], default: Any = None) -> Any:
        import sqlite3

        try:
            return write()
        except (OSError, sqlite3.Error, UsageError) as e:
            if self.broken is not None:
                return default
            text = str(e)
            full = "full" in text.lower() or getattr(e, "errno", None) == 28
            self.broken = "the disk is full" if full else "a write failed"
            self._warn(
                f"the run history in {self._recorder.history.dir} could not be written ({self.broken}: {text});"
                " the run goes on; what could not be written is missing from its record"
            )
            return default

    def run_started(self, run_id: str, plan: Any) -> None:
        self._guard(lambda: self._recorder.run_started(run_id, plan))

    def stage_started(self, run_id: str, name: str, position: int) -> None:
        self._guard(lambda: self._recorder.stage_started(run_id, name, position))

    def stage_finished(self, run_id: str, result: Any, position: int) -> None:
        self._guard(lambda: self._recorder.stage_finished(run_id, result, position))

    def run_finished(self, run_id: str, result: Any) -> None:
        self._guard(lambda: self._recorder.run_finished(run_id, result))

    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        stored: str = self._guard(lambda: self._recorder.add_artifact(stage, path, data), digest)
        return stored

    def add_tests(self, stage: str, report: TestReport) -> None:
        self._guard(lambda: self._recorder.add_tests(stage, report))

    def log_processor(self, run_id: str) -> Any:
        return _GuardedProcessor(self, self._recorder.history.log_processor(run_id))


class _GuardedProcessor:
    """The history's log processor, whose failures become one warning instead of the run's end."""

    def __init__(self, owner: Unfailing, write: Any) -> None:
        self._owner = owner
        self._write = write

    def __call__(self, logger: Any, name: str, event: Any) -> Any:
        self._owner._guard(lambda: self._write(logger, name, dict(event)))
        return event

    def batch_lines(self, stage: str, stream: str, lines: list[str]) -> list[str]:
        self._owner._guard(lambda: self._write.batch_lines(stage, stream, lines))
        return lines
