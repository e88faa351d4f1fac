"""Structured logs for a run: a structlog logger made per run, never configured globally.

Event names (the documented set):

``run started`` (run_id, pipeline, stages, jobs), ``stage started`` (stage, status, image),
``command`` (stage, command: each ``ctx.sh`` before its output), ``output`` (stage, line, stream),
``command finished`` (stage, command, exit_code, duration_s: not shown on the console),
``stage finished`` (stage, status, duration_s, error), ``run finished`` (run_id, status,
duration_s, stages: a list of {stage, status, duration_s}).
Every event carries ``timestamp`` and ``level``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from json.encoder import encode_basestring_ascii as _quote  # type: ignore[attr-defined]
from typing import IO, Any

from pipekit._console.imports import import_structlog

structlog = import_structlog()

__all__ = ["LOG_FORMATS", "make_logger"]

LOG_FORMATS = ("console", "json")
EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], EventDict]


_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


class _StripEscapes:
    """Terminal escape codes (colours, cursor moves) out of every text field: a build's or a
    tool's colours never reach a JSON line, a stored log or a plain console."""

    def __call__(self, _logger: Any, _name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            if isinstance(value, str) and "\x1b" in value:
                event_dict[key] = _ESCAPES.sub("", value)
        return event_dict

    def batch_lines(self, _stage: str, _stream: str, lines: list[str]) -> list[str]:
        text = "\n".join(lines)
        return _ESCAPES.sub("", text).split("\n") if "\x1b" in text else lines


strip_escapes = _StripEscapes()


def _status_mark(status: str) -> str:
    return {
        "succeeded": "ok",
        "failed": "FAILED",
        "skipped": "skipped",
        "cancelled": "cancelled",
        "allowed_failure": "failed (allowed to fail)",
        "awaiting_approval": "AWAITING APPROVAL",
        "running": "started",
    }.get(status, status)


#: ANSI colours of statuses on a terminal
_COLOURS = {
    "succeeded": "32",
    "cached": "32",
    "restored": "32",
    "failed": "1;31",
    "interrupted": "1;31",
    "allowed_failure": "33",
    "awaiting_approval": "1;33",
    "skipped": "2",
    "cancelled": "35",
    "running": "36",
}
MAX_WIDTH = 40


def use_colour(file: Any) -> bool:
    """Colour when writing to a terminal, unless NO_COLOR or TERM=dumb say not; FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "0") not in ("", "0"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


class ConsoleRenderer:
    """One readable line (or block) per event, each line prefixed with its stage.

    The stage column is as wide as the run's longest stage name (at least ``width``, at most 40)
    from the run's first line to its last.
    """

    def __init__(self, width: int = 12, colour: bool = False) -> None:
        self.width = width
        self.colour = colour
        self._fixed = False

    def _prefix(self, stage: str) -> str:
        if len(stage) > self.width:
            if self._fixed:
                stage = stage[: self.width - 1] + "~"
            else:
                self.width = min(len(stage), MAX_WIDTH)
        return f"{stage:<{self.width}} |"

    def _paint(self, text: str, status: str) -> str:
        code = _COLOURS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def __call__(self, _logger: Any, _name: str, ed: EventDict) -> str:
        event = ed.pop("event", "")
        stage = ed.pop("stage", None)
        ed.pop("timestamp", None)
        level = ed.pop("level", "info")
        if stage is not None and event in _STAGE_EVENTS:
            return self._continued(stage, _STAGE_EVENTS[event](self, stage, ed))
        if event == "run finished":
            return _summary_table(ed, self._paint)
        if event == "run started":
            stages = ed.get("stages", [])
            self.width = max(self.width, min(MAX_WIDTH, max((len(n) for n in stages), default=0)))
            self._fixed = True
            return (
                f"pipekit: running {ed.get('pipeline')} ({_count(len(stages), 'stage')},"
                f" {ed.get('jobs')} at a time, run {ed.get('run_id')})"
            )
        rest = " ".join(f"{k}={v}" for k, v in ed.items())
        where = f"{self._prefix(stage)} " if stage else ""
        marker = "" if level == "info" else f"[{level}] "
        text = f"{where}{marker}{event}{' ' + rest if rest else ''}"
        return self._continued(stage, text) if stage else text

    def _continued(self, stage: str, text: str) -> str:
        """Every line of a multi-line message keeps the stage's prefix (a continuation line is
        indented under the first)."""
        if "\n" not in text:
            return text
        prefix = self._prefix(stage)
        first, *rest = text.split("\n")
        return "\n".join([first, *(line if line.startswith(prefix) else f"{prefix}   {line}" for line in rest)])

    def _output(self, stage: str, ed: EventDict) -> str:
        return f"{self._prefix(stage)} {ed.get('line', '')}"

    def batch_lines(self, stage: str, _stream: str, lines: list[str]) -> str:
        """A batch of a stage's output lines, rendered as :meth:`_output` renders each."""
        prefix = f"\n{self._prefix(stage)} "
        return prefix[1:] + prefix.join(lines)

    def _command(self, stage: str, ed: EventDict) -> str:
        lines = str(ed.get("command", "")).splitlines() or [""]
        shown = [f"{self._prefix(stage)} $ {lines[0]}", *(f"{self._prefix(stage)}   {line}" for line in lines[1:])]
        return "\n".join(shown)

    def _started(self, stage: str, ed: EventDict) -> str:
        where = ed.get("image") or "host"
        return f"{self._prefix(stage)} {self._paint('>', 'running')} started ({where})"

    def _finished(self, stage: str, ed: EventDict) -> str:
        status = str(ed.get("status", ""))
        duration = ed.get("duration_s")
        took = f" in {duration:.2f}s" if isinstance(duration, (int, float)) else ""
        attempts = ed.get("attempts")
        tries = f" after {attempts} attempts" if attempts else ""
        head = f"{self._prefix(stage)} = {self._paint(_status_mark(status), status)}{took}{tries}"
        reason = ed.get("reason")
        if reason:
            head += f" ({reason})"
        error = ed.get("error")
        if error:
            body = "\n".join(f"{self._prefix(stage)}   {line}" for line in str(error).splitlines())
            return f"{head}\n{body}"
        return head


_STAGE_EVENTS: dict[str, Callable[[ConsoleRenderer, str, EventDict], str]] = {
    "command finished": lambda _self, _stage, _ed: "",  # for the history and JSON: the console has the output
    "output": ConsoleRenderer._output,
    "command": ConsoleRenderer._command,
    "stage started": ConsoleRenderer._started,
    "stage finished": ConsoleRenderer._finished,
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary_table(ed: EventDict, paint: Callable[[str, str], str] = lambda text, _status: text) -> str:
    rows = [("STAGE", "STATUS", "DURATION")]
    for s in ed.get("stages", []):
        d = s.get("duration_s")
        status = str(s["status"]) + (f" ({s['attempts']} attempts)" if s.get("attempts") else "")
        rows.append((s["stage"], status, f"{d:.2f}s" if d is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [""]
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        if n:
            cells[1] = paint(cells[1], str(ed["stages"][n - 1]["status"]))
        lines.append("  ".join(cells).rstrip())
    total = ed.get("duration_s")
    took = f" in {total:.2f}s" if isinstance(total, (int, float)) else ""
    for warning in ed.get("warnings", []):
        lines.append(f"warning: {warning}")
    status = str(ed.get("status"))
    lines.append(f"run {ed.get('run_id')} {paint(status, status)}{took}")
    return "\n".join(lines)


class JsonLines:
    """The JSON renderer's batch form: the same line per output event as structlog's renderer gives
    (keys in the same order, ASCII-escaped), with one timestamp per batch."""

    def __call__(self, _logger: Any, _name: str, event_dict: EventDict) -> str:
        return json.dumps(event_dict, default=str)

    def batch_lines(self, stage: str, stream: str, lines: list[str]) -> str:
        now = datetime.datetime.now(tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        head = f'{{"stage": {_quote(stage)}, "line": '
        tail = f', "stream": {_quote(stream)}, "event": "output", "level": "info", "timestamp": "{now}"}}'
        return "\n".join(head + _quote(line) + tail for line in lines)


class _Writer:
    """Where a run's log goes: one lock for the events structlog renders and for the batches of
    output lines, so that neither cuts into the other."""

    def __init__(self, file: IO[str], batches: list[Callable[[str, str, list[str]], Any]] | None) -> None:
        self._file = file
        self._lock = threading.Lock()
        #: the chain's batch forms (the renderer's last), or None when a processor has none
        self.batches = batches

    def msg(self, message: str) -> None:
        if not message:  # a renderer that keeps an event for later (a CI's group) prints nothing now
            return
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


def _output_lines(self: Any, stream: str, lines: list[str]) -> None:
    """Log a batch of a stage's output lines: one ``output`` event per line. When every processor
    has a batch form (pipekit's own always do) the batch goes through the chain at once, in one
    write; otherwise (a test collecting events) each line is an event of its own."""
    writer = self._logger
    batches = getattr(writer, "batches", None)
    context = self._context
    if batches is None or len(context) != 1 or "stage" not in context or not lines:
        for line in lines:
            self.info("output", line=line, stream=stream)
        return
    stage = context["stage"]
    value: Any = lines
    for step in batches:
        value = step(stage, stream, value)
    writer.msg(value)


def _write_raw(self: Any, text: str) -> None:
    """Text straight to the run's output, past every processor (a CI's own commands), under the
    same lock as the log's lines."""
    self._logger.msg(text)


def make_logger(
    log_format: str = "console",
    *,
    file: IO[str] | None = None,
    level: int = logging.INFO,
    processors: Iterable[Processor] = (),
    console: ConsoleRenderer | None = None,
) -> Any:
    """A structlog logger for one run; ``processors`` run before rendering (masking, recording).
    ``console``: the renderer of the console format (a CI's); pipekit's own by default.

    Its ``output_lines(stream, lines)`` logs a batch of output lines of the stage it is bound to.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    renderer: Any
    if log_format == "json":
        renderer = JsonLines()
    else:
        renderer = console or ConsoleRenderer(colour=use_colour(file if file is not None else sys.stdout))
    processors = list(processors)
    forms = [getattr(p, "batch_lines", None) for p in [strip_escapes, *processors, renderer]]
    batches = forms if all(forms) else None
    chain: list[Any] = [
        strip_escapes,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *processors,
        renderer,
    ]
    base: Any = structlog.make_filtering_bound_logger(level)
    wrapper = type("RunLogger", (base,), {"output_lines": _output_lines, "write_raw": _write_raw})
    return structlog.wrap_logger(
        _Writer(file if file is not None else sys.stdout, batches),  # type: ignore[arg-type]
        processors=chain,
        wrapper_class=wrapper,
        cache_logger_on_first_use=False,
    )
