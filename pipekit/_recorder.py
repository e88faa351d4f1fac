"""Recording a run into the history: the scheduler's observer and its stage records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipekit._history import History
from pipekit._reports import TestReport
from pipekit._results import StageStatus

__all__ = ["HistoryRecorder", "redact_argv"]


def redact_argv(argv: list[str], mask: Callable[[str], str]) -> str:
    """The command line as recorded, with every known secret value masked."""
    return " ".join(mask(a) for a in argv)


class HistoryRecorder:
    """Records a run into a :class:`History`: the executor's observer and its stage records."""

    def __init__(self, history: History, *, argv: str, branch: str | None, resumed_from: str | None = None) -> None:
        self.history = history
        self.argv = argv
        self.branch = branch
        self.resumed_from = resumed_from
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
