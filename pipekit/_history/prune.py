"""History retention: ``pipekit prune`` and ``keep-runs``/``keep-days`` after each run.

A run is pruned when it is beyond the ``keep`` most recent runs or older than ``older_than``
seconds (either rule suffices, as Jenkins' ``logRotator``), and never while it runs or awaits an
approval. With it go its rows (stages, artifacts, test reports), its logs folder, the archived
files no kept run refers to, and the stage-cache entries that no kept run made or took a hit on.
Files are removed without following a link (:func:`pipekit._core.safefile.remove_beneath`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

import attrs

from pipekit._core.safefile import UnsafePath, remove_beneath
from pipekit._history.store import History
from pipekit.exceptions import UsageError

__all__ = ["Pruned", "format_size", "parse_age", "prune", "size_of"]


@attrs.frozen
class Pruned:
    """What a prune removed (or, dry, would remove)."""

    runs: tuple[str, ...]
    artifacts: int  # archived files no kept run refers to
    cache_entries: int
    freed: int  # bytes: files removed, and the database's shrink (files only when dry)
    dry_run: bool = False


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` (or a number of days) in seconds."""
    units = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
    value = str(text).strip().lower()
    unit = value[-1:] if value[-1:] in units else "d"
    number = value[:-1] if value[-1:] in units else value
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise UsageError(f"--older-than takes an age like 30d, 12h or 2w, got {text!r}") from None
    if seconds <= 0:
        raise UsageError(f"--older-than takes an age above zero, got {text!r}")
    return seconds


def format_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def size_of(folder: Path) -> int:
    """The bytes of the regular files under ``folder`` (links not followed)."""
    total = 0
    for top, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _doomed(history: History, keep: int | None, older_than: float | None) -> list[str]:
    cutoff = time.time() - older_than if older_than is not None else None
    return [
        run_id
        for i, (run_id, started) in enumerate(history.finished_runs())
        if (keep is not None and i >= keep) or (cutoff is not None and started < cutoff)
    ]


def prune(
    history: History, *, keep: int | None = None, older_than: float | None = None, dry_run: bool = False
) -> Pruned:
    """Remove the runs beyond ``keep`` or older than ``older_than`` seconds, with what only they use."""
    if keep is None and older_than is None:
        raise UsageError("say what to keep: --keep N (runs) or --older-than AGE (30d), or set keep-runs/keep-days")
    if keep is not None and keep < 0:
        raise UsageError(f"--keep takes a number of runs (0 or more), got {keep}")
    runs = _doomed(history, keep, older_than)
    if not runs:
        return Pruned((), 0, 0, 0, dry_run)
    digests, keys = history.used_only_by(runs)
    files = [f"logs/{run_id}" for run_id in runs] + [f"artifacts/{d}" for d in digests]
    if dry_run:
        freed = sum(
            size_of(history.dir / f) if (history.dir / f).is_dir() else _file_size(history.dir / f) for f in files
        )
        return Pruned(tuple(runs), len(digests), len(keys), freed, True)
    db_before = _db_size(history)
    history.forget(runs, keys)
    try:
        freed = sum(remove_beneath(history.dir, f) for f in files)
    except UnsafePath as e:
        raise UsageError(f"{e} (in {history.dir}); the pruned runs' records are gone, their other files stay") from e
    history.compact()
    return Pruned(tuple(runs), len(digests), len(keys), freed + max(0, db_before - _db_size(history)))


def _db_size(history: History) -> int:
    return sum(_file_size(Path(str(history.db_path) + suffix)) for suffix in ("", "-wal"))


def _file_size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
