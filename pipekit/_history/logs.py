"""The run history's log files: each stage's events rendered into the stage's file."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipekit._history.store import History

__all__ = ["LogFiles", "strip_prefix"]


class LogFiles:
    """The history's log processor: each stage's events rendered into the stage's log file."""

    def __init__(self, history: History, run_id: str) -> None:
        self._history = history
        self._run_id = run_id

    def __call__(self, _logger: Any, name: str, event: Any) -> Any:
        stage = event.get("stage")
        if stage is None or event.get("event") == "run finished":
            return event
        h = self._history
        if event.get("event") == "stage attempt started":  # for the report's timeline
            when = {"stage": stage, "attempt": event.get("attempt"), "timestamp": event.get("timestamp")}
            h.append_run_file(self._run_id, "attempts.jsonl", json.dumps(when))
        if event.get("event") == "command finished":  # for the report: each command's exit code
            keep = {k: event.get(k) for k in ("command", "exit_code", "duration_s", "timestamp")}
            h.append_run_file(self._run_id, "commands.jsonl", json.dumps({"stage": stage, **keep}))
            return event
        line = h._renderer(None, name, dict(event))
        with h._lock:
            f = h._log_file(self._run_id, stage)
            f.write(strip_prefix(line) + "\n")
            f.flush()
        return event

    def batch_lines(self, stage: str, _stream: str, lines: list[str]) -> list[str]:
        h = self._history
        with h._lock:
            f = h._log_file(self._run_id, stage)
            f.write("\n".join(lines) + "\n")
            f.flush()
        return lines


def strip_prefix(line: str) -> str:
    """Stage log files hold the stage's lines without the 'stage |' prefix of the console."""
    return "\n".join(part.split(" | ", 1)[1] if " | " in part else part for part in line.split("\n"))
