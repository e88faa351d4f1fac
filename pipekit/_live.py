"""The live view of a run on a terminal (rich): what runs, what waits for what, what ended.

It is a console renderer like the others: it reads the run's events. It never prints a stage's
output line by line: it keeps each running stage's last line (a batch of output costs it one
assignment) and redraws a few times a second from its own thread, so a stage printing 50 MB does not
slow the run. Finished stages are printed once above the live area, one line each; a failed stage
keeps its last lines on screen. The full log still goes to the history.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from pipekit._logging import ConsoleRenderer, EventDict, _summary_table

__all__ = ["LiveRenderer"]

TAIL = 8  # a failed stage's last lines kept on screen
WAITING_SHOWN = 12  # waiting stages listed; the rest are counted
SYMBOLS = {
    "succeeded": ("✔", "green"),
    "cached": ("✔", "green"),
    "restored": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "interrupted": ("✘", "bold red"),
    "allowed_failure": ("!", "yellow"),
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

    # -- events -----------------------------------------------------------------------------
    def __call__(self, logger: Any, name: str, ed: EventDict) -> str:
        event, stage = ed.get("event"), ed.get("stage")
        if event == "run started":
            self._header = super().__call__(logger, name, dict(ed))
            self._order = list(ed.get("stages", self._order))
            self._start()
        elif event == "run finished":
            self.close()
            self.console.print(_summary_table(dict(ed)), markup=False, highlight=False, soft_wrap=True)
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
        if lines:
            with self._lock:
                self._last[stage] = lines[-1]
                self._tails.setdefault(stage, collections.deque(maxlen=TAIL)).extend(lines[-TAIL:])
        return ""

    def _line(self, stage: str, line: str) -> None:
        with self._lock:
            self._last[stage] = line
            self._tails.setdefault(stage, collections.deque(maxlen=TAIL)).append(line)

    def _finished_line(self, stage: str, ed: EventDict) -> None:
        from rich.text import Text

        status = str(ed.get("status", ""))
        symbol, style = SYMBOLS.get(status, ("·", ""))
        took = ed.get("duration_s")
        text = Text.assemble((f"{symbol} ", style), (stage, "bold"), f"  {status}")
        if isinstance(took, (int, float)):
            text.append(f"  {took:.2f}s", "dim")
        if ed.get("reason"):
            text.append(f"  ({ed['reason']})", "dim")
        with self._lock:
            self._running.pop(stage, None)
            self._done[stage] = status
            tail = list(self._tails.pop(stage, ()))
            self._last.pop(stage, None)
        lines: list[Any] = [text]
        if status in ("failed", "interrupted"):
            error = str(ed.get("error") or "").splitlines()
            lines += [Text(f"    {line}", "red") for line in error[:1]]
            lines += [Text(f"    │ {line}", "dim") for line in tail]
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

        table = Table.grid(padding=(0, 1))
        table.add_column(width=2)
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        now = self.clock()
        with self._lock:
            running = sorted(self._running.items(), key=lambda item: item[1])
            last = dict(self._last)
            done = set(self._done)
        for stage, since in running:
            line = Text(last.get(stage, ""), "dim")
            table.add_row(Spinner("dots", style="cyan"), Text(stage, "bold"), f"{now - since:.1f}s", line)
        started = {stage for stage, _ in running}
        waiting = [s for s in self._order if s not in done and s not in started]
        for stage in waiting[:WAITING_SHOWN]:
            blocked = [n for n in self.needs.get(stage, []) if n not in done]
            why = f"waits for {', '.join(blocked)}" if blocked else "ready, waits for a free slot"
            table.add_row(Text("·", "dim"), Text(stage, "dim"), "", Text(why, "dim"))
        if len(waiting) > WAITING_SHOWN:
            table.add_row("", Text(f"… {len(waiting) - WAITING_SHOWN} more waiting", "dim"), "", "")
        return table
