"""``pipekit run --watch``: run, then run again each time a file of the pipeline's folder changes.

Each cycle is a whole run (recorded like any other), so the stage cache decides what runs again: a
stage with ``cache=`` whose inputs did not change is taken from the cache, a stage without one
runs again (as ``npm run watch`` or ``cargo watch`` would). Changes are read with watchfiles
(inotify on Linux) in a thread of their own, grouped until the files are quiet for a moment.
What never starts a cycle: ``.pipekit/``, ``.git/`` (and watchfiles' usual caches and editor
files), and anything written while a cycle runs: a stage that writes ``build/out.txt`` into the
mounted workspace would otherwise start the next cycle, forever. Such changes are named after the
cycle instead (a file saved during a run is picked up when it is saved again).
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pipekit._cli.history import print_error
from pipekit._core.results import RunResult, StageStatus
from pipekit.exceptions import Interrupted, UsageError

__all__ = ["IGNORED_DIRS", "cycle_line", "watch"]

#: folders whose changes never start a cycle, besides watchfiles' own list (.git, caches, .venv)
IGNORED_DIRS = (".pipekit",)
#: how long the files must be quiet before a cycle starts (ms), and the longest a burst is grouped
QUIET_MS = 300
GROUPED_MS = 1600

#: how the cycle line names each outcome, in its order
_SAID = (
    ("run", (StageStatus.SUCCEEDED,)),
    ("cached", (StageStatus.CACHED, StageStatus.RESTORED)),
    ("failed", (StageStatus.FAILED, StageStatus.INTERRUPTED, StageStatus.CANCELLED)),
    ("failed (allowed)", (StageStatus.ALLOWED_FAILURE,)),
    ("skipped", (StageStatus.SKIPPED,)),
)


def _names(paths: list[str], folder: Path, most: int = 3) -> str:
    shown = []
    for p in sorted(paths)[:most]:
        try:
            shown.append(str(Path(p).relative_to(folder)))
        except ValueError:
            shown.append(p)
    more = f" (+{len(paths) - most} more)" if len(paths) > most else ""
    return ", ".join(shown) + more


def _own_output() -> set[tuple[int, int]]:
    """The files this process's standard output and error go to (when they are files)."""
    found = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.add((st.st_dev, st.st_ino))
    return found


def cycle_line(changed: list[str] | None, folder: Path, result: RunResult | None) -> str:
    """``changed: src/app.py → lint, unit run; build cached`` (``start`` for the first cycle)."""
    head = "start" if changed is None else f"changed: {_names(changed, folder)}"
    if result is None:
        return f"{head} → the pipeline has errors (above); nothing was run"
    parts = []
    for word, statuses in _SAID:
        names = [name for name, r in result.stages.items() if r.status in statuses]
        if names:
            parts.append(f"{', '.join(names)} {word}")
    return f"{head} → {'; '.join(parts) or 'no stage'} ({result.status} in {result.duration_s:.1f}s)"


class _Changes:
    """watchfiles in a thread: each group of changed paths goes into a queue."""

    def __init__(self, folder: Path) -> None:
        import watchfiles  # (imported only for --watch)

        self.folder = folder
        self.batches: queue.Queue[list[str]] = queue.Queue()
        self.stop = threading.Event()
        default = watchfiles.DefaultFilter(ignore_dirs=(*watchfiles.DefaultFilter.ignore_dirs, *IGNORED_DIRS))
        own = _own_output()

        def wanted(change: object, path: str) -> bool:
            if not default(change, path):  # type: ignore[arg-type]
                return False
            if own:  # `pipekit run --watch > log.txt` in the folder: its own output is no change
                try:
                    st = os.stat(path)
                except OSError:
                    return True
                return (st.st_dev, st.st_ino) not in own
            return True

        self._filter = wanted
        self._watch = watchfiles.watch
        self._thread = threading.Thread(target=self._run, name="pipekit-watch", daemon=True)
        self._ready = threading.Event()
        self.failure: str | None = None
        self._thread.start()

    def _run(self) -> None:
        changes = self._watch(
            self.folder,
            watch_filter=self._filter,
            debounce=GROUPED_MS,
            step=QUIET_MS,
            stop_event=self.stop,
            rust_timeout=200,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        try:
            for batch in changes:
                self._ready.set()
                if batch:
                    self.batches.put(sorted({path for _, path in batch}))
        except Exception as e:  # (the system's limit of watched folders, a folder gone): said, the loop ends
            self.failure = f"cannot watch {self.folder} for changes: {e}"
            self._ready.set()

    def wait_ready(self) -> None:
        self._ready.wait(5)  # the watcher is set up (a first timeout came): nothing is missed after

    def drain(self) -> list[str]:
        """The paths of every group of changes queued so far (set aside: the run's own writes)."""
        paths: set[str] = set()
        while True:
            try:
                paths.update(self.batches.get_nowait())
            except queue.Empty:
                return sorted(paths)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)


def watch(one_run: Callable[[], RunResult | None], folder: Path, err: IO[str]) -> int:
    """Run, then again on every change, until Ctrl-C (exit 130) or SIGTERM (143). ``one_run`` makes and runs one
    run (None when the pipeline has errors: said, and the loop waits for the fix). Ctrl-C during a
    run stops it as any run stops (the caller says so); while waiting, it ends the loop."""
    changes = _Changes(folder)
    changes.wait_ready()
    changed: list[str] | None = None
    try:
        while True:
            result = one_run()
            ended = time.time()
            print_error(err, cycle_line(changed, folder, result))
            try:
                time.sleep(QUIET_MS / 1000 * 2)  # a write at the very end of the run is grouped by now
                ignored = changes.drain()
                if ignored:
                    print_error(err, f"not a change: {_names(ignored, folder)} (written while the run ran)")
                print_error(err, f"watching {folder} for changes (Ctrl-C to stop)")
                changed = _next_change(changes, ended)
            except (Interrupted, KeyboardInterrupt) as stop:  # Ctrl-C: 130, SIGTERM: 143
                print_error(err, "stopped watching")
                return stop.exit_code if isinstance(stop, Interrupted) else 130
    finally:
        changes.close()


def _next_change(changes: _Changes, ended: float) -> list[str]:
    """The next group of changed paths; waits in short steps so that a signal's handler runs. A
    file last modified before the cycle ended is the run's own write whose event came late (a busy
    machine): not a change."""
    while True:
        try:
            paths = changes.batches.get(timeout=0.2)
        except queue.Empty:
            if changes.failure:
                raise UsageError(changes.failure) from None
            continue
        fresh = [p for p in paths if not _modified_before(p, ended)]
        if fresh:
            return fresh


def _modified_before(path: str, moment: float) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime <= moment
    except OSError:
        return False  # (removed: a change)
