"""Recording a run into the history: the scheduler's observer and its stage records."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipekit._core.results import StageStatus
from pipekit._core.testreport import TestReport
from pipekit._history.store import History
from pipekit.exceptions import UsageError

__all__ = ["HistoryRecorder", "Unfailing", "redact_argv"]


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
    ) -> None:
        self.history = history
        self.argv = argv
        self.branch = branch
        self.resumed_from = resumed_from
        self.params = dict(params or {})  # masked by the caller
        self.run_id = ""

    def run_started(self, run_id: str, plan: Any) -> None:
        self.run_id = run_id
        path = plan.pipeline.path or ""
        self.history.start_run(
            run_id,
            pipeline=plan.pipeline.name,
            path=path,
            branch=self.branch,
            git_commit=_git_commit(Path(path).parent if path else Path.cwd()),
            argv=self.argv,
            resumed_from=self.resumed_from,
        )
        self.history.write_plan(run_id, plan, self.params)

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


def _git_commit(workspace: Path) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


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
