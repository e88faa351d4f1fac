"""The run history read without opening it (for shell completion): the recent runs and the stages
of a pipeline's last run, straight from ``.pipekit/pipekit.db`` read-only. Nothing is created,
locked, migrated or reaped, no engine is asked, and only the standard library is imported: a TAB
must answer in milliseconds, and when the history is missing or busy it answers with nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["last_stages", "recent_runs"]

DIRNAME = ".pipekit"  # (pipekit._history.fs.DIRNAME, without that module's imports)


def _query(workspace: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db_path = workspace / DIRNAME / "pipekit.db"
    if not db_path.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{quote(str(db_path))}?mode=ro", uri=True, timeout=0.2)
        try:
            return list(db.execute(sql, args).fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return []


def recent_runs(workspace: Path, limit: int = 30) -> list[tuple[str, str]]:
    """The newest runs first: each id and a description (its status, when it started)."""
    rows = _query(workspace, "SELECT id, status, started FROM runs ORDER BY started DESC LIMIT ?", (limit,))
    described = []
    for run_id, status, started in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(started))) if started else "-"  # type: ignore[arg-type]
        described.append((str(run_id), f"{status} {when}"))
    return described


def last_stages(workspace: Path, pipeline_path: Path) -> list[str]:
    """The stages of the last recorded run of ``pipeline_path`` (its plan), when that file was not
    changed since: a pipeline that makes stages in a loop shows them here."""
    try:
        changed = pipeline_path.stat().st_mtime
    except OSError:
        return []
    rows = _query(
        workspace, "SELECT id, started FROM runs WHERE path = ? ORDER BY started DESC LIMIT 1", (str(pipeline_path),)
    )
    if not rows or float(rows[0][1] or 0) < changed:  # type: ignore[arg-type]
        return []
    plan = workspace / DIRNAME / "logs" / str(rows[0][0]) / "_plan.json"
    try:
        stages = json.loads(plan.read_text(encoding="utf-8"))["stages"]
        return [str(s["name"]) for s in stages]
    except (OSError, ValueError, KeyError, TypeError):
        return []
