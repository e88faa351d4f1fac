"""The run history's log files: each stage's events rendered into the stage's file."""

from __future__ import annotations

import json
from typing import Any, Protocol

from pipekit._console.log import ConsoleRenderer

__all__ = ["LogFiles", "RunFiles", "strip_prefix"]


class RunFiles(Protocol):
    """Where a run's log files are written (the history)."""

    def append_run_file(self, run_id: str, name: str, line: str) -> None: ...

    def append_stage_log(self, run_id: str, stage: str, text: str) -> None: ...


class LogFiles:
    """The history's log processor: each stage's events rendered into the stage's log file."""

    def __init__(self, files: RunFiles, run_id: str) -> None:
        self._files = files
        self._run_id = run_id
        self._renderer = ConsoleRenderer(width=0)

    def __call__(self, _logger: Any, name: str, event: Any) -> Any:
        stage = event.get("stage")
        if stage is None or event.get("event") == "run finished":
            return event
        h = self._files
        if event.get("event") == "stage attempt started":  # for the report's timeline
            when = {"stage": stage, "attempt": event.get("attempt"), "timestamp": event.get("timestamp")}
            h.append_run_file(self._run_id, "attempts.jsonl", json.dumps(when))
        if event.get("event") == "command finished":  # for the report: each command's exit code
            keep = {k: event.get(k) for k in ("command", "exit_code", "duration_s", "timestamp")}
            h.append_run_file(self._run_id, "commands.jsonl", json.dumps({"stage": stage, **keep}))
            return event
        line = self._renderer(None, name, dict(event))
        h.append_stage_log(self._run_id, stage, strip_prefix(line))
        return event

    def batch_lines(self, stage: str, _stream: str, lines: list[str]) -> list[str]:
        self._files.append_stage_log(self._run_id, stage, "\n".join(lines))
        return lines


def strip_prefix(line: str) -> str:
    """Stage log files hold the stage's lines without the 'stage |' prefix of the console."""
    return "\n".join(part.split(" | ", 1)[1] if " | " in part else part for part in line.split("\n"))
