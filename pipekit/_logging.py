"""Structured logs for a run: a structlog logger made per run, never configured globally.

Event names (the documented set):

``run started`` (run_id, pipeline, stages, jobs), ``stage started`` (stage, status, image),
``output`` (stage, line, stream), ``stage finished`` (stage, status, duration_s, error),
``run finished`` (run_id, status, duration_s, stages: a list of {stage, status, duration_s}).
Every event carries ``timestamp`` and ``level``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import IO, Any

import structlog

__all__ = ["LOG_FORMATS", "make_logger"]

LOG_FORMATS = ("console", "json")
EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]


_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_escapes(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Terminal escape codes (colours, cursor moves) out of every text field: a build's or a
    tool's colours never reach a JSON line, a stored log or a plain console."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "\x1b" in value:
            event_dict[key] = _ESCAPES.sub("", value)
    return event_dict


def _status_mark(status: str) -> str:
    return {
        "succeeded": "ok",
        "failed": "FAILED",
        "skipped": "skipped",
        "cancelled": "cancelled",
        "allowed_failure": "failed (allowed to fail)",
        "running": "started",
    }.get(status, status)


class ConsoleRenderer:
    """One readable line (or block) per event, each line prefixed with its stage."""

    def __init__(self, width: int = 12) -> None:
        self.width = width

    def _prefix(self, stage: str) -> str:
        if len(stage) > self.width:
            self.width = min(len(stage), 40)
        return f"{stage:<{self.width}} |"

    def __call__(self, _logger: Any, _name: str, ed: EventDict) -> str:
        event = ed.pop("event", "")
        stage = ed.pop("stage", None)
        ed.pop("timestamp", None)
        level = ed.pop("level", "info")
        if event == "output" and stage is not None:
            return f"{self._prefix(stage)} {ed.get('line', '')}"
        if event == "stage started" and stage is not None:
            where = ed.get("image") or "host"
            return f"{self._prefix(stage)} > started ({where})"
        if event == "stage finished" and stage is not None:
            status = ed.get("status", "")
            duration = ed.get("duration_s")
            took = f" in {duration:.2f}s" if isinstance(duration, (int, float)) else ""
            attempts = ed.get("attempts")
            tries = f" after {attempts} attempts" if attempts else ""
            head = f"{self._prefix(stage)} = {_status_mark(status)}{took}{tries}"
            reason = ed.get("reason")
            if reason:
                head += f" ({reason})"
            error = ed.get("error")
            if error:
                body = "\n".join(f"{self._prefix(stage)}   {line}" for line in str(error).splitlines())
                return f"{head}\n{body}"
            return head
        if event == "run finished":
            return _summary_table(ed)
        if event == "run started":
            return (
                f"pipekit: running {ed.get('pipeline')} ({_count(len(ed.get('stages', [])), 'stage')},"
                f" {ed.get('jobs')} at a time, run {ed.get('run_id')})"
            )
        rest = " ".join(f"{k}={v}" for k, v in ed.items())
        where = f"{self._prefix(stage)} " if stage else ""
        marker = "" if level == "info" else f"[{level}] "
        return f"{where}{marker}{event}{' ' + rest if rest else ''}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary_table(ed: EventDict) -> str:
    rows = [("STAGE", "STATUS", "DURATION")]
    for s in ed.get("stages", []):
        d = s.get("duration_s")
        status = s["status"] + (f" ({s['attempts']} attempts)" if s.get("attempts") else "")
        rows.append((s["stage"], status, f"{d:.2f}s" if d is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [""]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    total = ed.get("duration_s")
    took = f" in {total:.2f}s" if isinstance(total, (int, float)) else ""
    for warning in ed.get("warnings", []):
        lines.append(f"warning: {warning}")
    lines.append(f"run {ed.get('run_id')} {ed.get('status')}{took}")
    return "\n".join(lines)


def make_logger(
    log_format: str = "console",
    *,
    file: IO[str] | None = None,
    level: int = logging.INFO,
    processors: Iterable[Processor] = (),
) -> Any:
    """A structlog logger for one run; ``processors`` run before rendering (masking, recording)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(default=str)  # type: ignore[assignment]
    else:
        renderer = ConsoleRenderer()  # type: ignore[assignment]
    chain: list[Any] = [
        strip_escapes,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *processors,
        renderer,
    ]
    return structlog.wrap_logger(
        structlog.PrintLogger(file if file is not None else sys.stdout),  # type: ignore[arg-type]
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
