"""The live view of a run on a terminal (rich): what runs, what waits for what, what ended.

It is a console renderer like the others: it reads the run's events. It never prints a stage's
output line by line: it keeps each running stage's last line (a batch of output costs it one
assignment) and redraws a few times a second from its own thread, so a stage printing 50 MB does not
slow the run. Finished stages are printed once above the live area, one line each; a failed stage
keeps its last lines on screen. The full log still goes to the history.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from pipekit._console.log import ConsoleRenderer, EventDict

__all__ = ["LiveRenderer"]

TAIL = 8  # a failed stage's last lines kept on screen
WAITING_SHOWN = 12  # waiting stages listed; the rest are counted
NAME_WIDTH = 40  # the stage column: as wide as the run's longest name, at most this
TIME_WIDTH = 8  # the time column: '1234.56s'
#: lines that say nothing about where a stage is: blank lines, and BuildKit's bookkeeping (layer
#: digests, DONE/CACHED marks, export steps); never shown as a stage's last line
NOISE = re.compile(
    r"^\s*$|^#\d+ (?:sha256:[0-9a-f]+|DONE [\d.]+s|CACHED|extracting sha256:|resolve |exporting layers"
    r"|writing image|naming to|\.\.\.)"
)
SYMBOLS = {
    "succeeded": ("✔", "green"),
    "cached": ("✔", "green"),
    "restored": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "interrupted": ("✘", "bold red"),
    "allowed_failure": ("!", "yellow"),
    "awaiting_approval": ("?", "bold yellow"),
    "skipped": ("○", "dim"),
    "cancelled": ("○", "magenta"),
}


class LiveRenderer(ConsoleRenderer):
    """Renders a run as a live view on ``file`` (a terminal, or any file for tests)."""

    def __init__(
        self,
        file: IO[str],
        needs: Mapping[str, list[str]],
        *,
        width: int | None = None,
        height: int | None = None,
        refresh_per_second: float = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(colour=True)
        from rich.console import Console

        self.console = Console(file=file, width=width, height=height, force_terminal=True, highlight=False)
        self.needs = needs
        self.clock = clock
        self.refresh_per_second = refresh_per_second
        self._lock = threading.Lock()
        self._order: list[str] = list(needs)
        self._running: dict[str, float] = {}
        self._last: dict[str, str] = {}
        self._tails: dict[str, collections.deque[str]] = {}
        self._done: dict[str, str] = {}
        self._live: Any = None
        self._header = ""
        self._jobs = 0  # stages at once (from the run's first event); 0: not known
        self._spinners: dict[str, Any] = {}  # one per running stage, kept so that it turns
        self._width = min(NAME_WIDTH, max((len(n) for n in needs), default=0))

    # -- events -----------------------------------------------------------------------------
    def __call__(self, logger: Any, name: str, ed: EventDict) -> str:
        event, stage = ed.get("event"), ed.get("stage")
        if event == "run started":
            self._header = super().__call__(logger, name, dict(ed))
            self._order = list(ed.get("stages", self._order))
            self._width = min(NAME_WIDTH, max((len(n) for n in self._order), default=self._width))
            self._jobs = int(ed.get("jobs") or 0)
            self._start()
        elif event == "run finished":
            self.close()
            self._summary(ed)
        elif stage is not None and event == "stage started":
            with self._lock:
                self._running[stage] = self.clock()
        elif stage is not None and event == "stage finished":
            self._finished_line(stage, ed)
        elif stage is not None and event == "output":
            self._line(stage, str(ed.get("line", "")))
        elif stage is not None and event == "command":
            self._line(stage, "$ " + str(ed.get("command", "")).splitlines()[0])
        elif event not in ("command finished",) and ed.get("level") in ("warning", "error"):
            self.console.print(super().__call__(logger, name, dict(ed)), markup=False, highlight=False, soft_wrap=True)
        return ""  # nothing for the writer: the view draws itself

    def batch_lines(self, stage: str, _stream: str, lines: list[str]) -> str:
        shown = [line for line in lines[-4 * TAIL :] if not NOISE.match(line)][-TAIL:]
        if shown:
            with self._lock:
                self._last[stage] = shown[-1]
                self._tails.setdefault(stage, collections.deque(maxlen=TAIL)).extend(shown)
        return ""

    def _line(self, stage: str, line: str) -> None:
        if NOISE.match(line):
            return
        with self._lock:
            self._last[stage] = line
            self._tails.setdefault(stage, collections.deque(maxlen=TAIL)).append(line)

    def _row(self, mark: Any, stage: str, took: str, text: Any) -> Any:
        """One line of the view, in the columns every kind of line shares: mark, stage, time, text."""
        from rich.text import Text

        name = stage if len(stage) <= self._width else stage[: self._width - 1] + "~"
        row = Text.assemble(mark, " ", (name.ljust(self._width), "bold"), " ")
        row.append(took.rjust(TIME_WIDTH), "dim")
        return row.append(" ").append_text(text if isinstance(text, Text) else Text(str(text)))

    def _finished_line(self, stage: str, ed: EventDict) -> None:
        from rich.text import Text

        status = str(ed.get("status", ""))
        symbol, style = SYMBOLS.get(status, ("·", ""))
        took = ed.get("duration_s")
        what = Text(status, style)
        if ed.get("reason"):
            what.append(f"  ({str(ed['reason']).splitlines()[0]})", "dim")
        text = self._row(Text(symbol, style), stage, f"{took:.2f}s" if isinstance(took, (int, float)) else "", what)
        with self._lock:
            self._running.pop(stage, None)
            self._spinners.pop(stage, None)
            self._done[stage] = status
            tail = list(self._tails.pop(stage, ()))
            self._last.pop(stage, None)
        lines: list[Any] = [text]
        if status in ("failed", "interrupted"):
            error = str(ed.get("error") or "").splitlines()
            under = " " * (self._width + TIME_WIDTH + 4)  # the text column of :meth:`_row`
            lines += [Text(f"{under}{line}", "red") for line in error[:1]]
            lines += [Text(f"{under}│ {line}", "dim") for line in tail]
        for line in lines:
            self.console.print(line, highlight=False)

    # -- the live area ----------------------------------------------------------------------
    def _start(self) -> None:
        from rich.live import Live

        self.console.print(self._header, markup=False, highlight=False, soft_wrap=True)
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            transient=True,
            redirect_stdout=False,
        )
        self._live.start()

    def close(self) -> None:
        """Stop redrawing (the run ended, or was interrupted): the live area goes away."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def __rich__(self) -> Any:
        return self.render()

    def render(self) -> Any:
        """What the live area shows now: running stages, then waiting ones."""
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))  # the columns of :meth:`_row`
        table.add_column(width=1, no_wrap=True)
        table.add_column(width=self._width, no_wrap=True, overflow="ellipsis")
        table.add_column(width=TIME_WIDTH, justify="right", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        now = self.clock()
        with self._lock:
            running = sorted(self._running.items(), key=lambda item: item[1])
            last = dict(self._last)
            done = set(self._done)
        for stage, since in running:
            line = Text(last.get(stage, ""), "dim")
            spinner = self._spinners.setdefault(stage, Spinner("dots", style="cyan"))
            table.add_row(spinner, Text(stage, "bold"), f"{now - since:.1f}s", line)
        started = {stage for stage, _ in running}
        waiting = [s for s in self._order if s not in done and s not in started]
        full = bool(self._jobs) and len(running) >= self._jobs
        for stage in waiting[:WAITING_SHOWN]:
            blocked = [n for n in self.needs.get(stage, []) if n not in done]
            why = (
                f"waits for {', '.join(blocked)}" if blocked else "ready, waits for a free slot" if full else "starting"
            )
            table.add_row(Text("·", "dim"), Text(stage, "dim"), "", Text(why, "dim"))
        if len(waiting) > WAITING_SHOWN:
            table.add_row("", Text(f"… {len(waiting) - WAITING_SHOWN} more waiting", "dim"), "", "")
        return table

    def _summary(self, ed: EventDict) -> None:
        """The run's end: stages not shown yet (one line each, as above), then one line of counts
        (the finished stages are on screen already: no table repeats them)."""
        stages = list(ed.get("stages", []))
        for s in stages:
            if s.get("stage") not in self._done:
                self._finished_line(str(s.get("stage")), {"status": s.get("status"), "duration_s": s.get("duration_s")})
        counts = collections.Counter(str(s.get("status")) for s in stages)
        status, total = str(ed.get("status")), ed.get("duration_s")
        took = f" in {total:.2f}s" if isinstance(total, (int, float)) else ""
        lines = [f"warning: {w}" for w in ed.get("warnings", [])]
        tally = ", ".join(f"{n} {what}" for what, n in counts.items())
        lines.append(f"run {ed.get('run_id')} {status}{took}" + (f": {tally}" if tally else ""))
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
