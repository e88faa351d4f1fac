"""Run history: every run recorded in SQLite under the workspace (``.pipekit/``), WAL mode.

Layout::

    .pipekit/pipekit.db                 runs, stages, artifacts, test reports, the stage cache
    .pipekit/logs/RUN/STAGE.log         each stage's log, masked like the console
    .pipekit/artifacts/SHA256           archived files, content-addressed

Secrets never reach it: logs pass the masker first, the command line is masked, and stage
environments are not stored.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipekit._core.testreport import TestReport
from pipekit._core.util import process_alive, slug
from pipekit._history.fs import DIRNAME, HistoryUnwritable, database_damaged, explain_write_error, make_private_dir
from pipekit._history.logs import LogFiles
from pipekit._history.rows import ArtifactRow, CacheRow, RunRow, StageRow, TestRow
from pipekit.exceptions import UsageError

__all__ = ["History", "HistoryUnwritable"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, pipeline TEXT, path TEXT, branch TEXT, git_commit TEXT, argv TEXT,
    user TEXT, host TEXT, pid INTEGER, started REAL, ended REAL, status TEXT, resumed_from TEXT, dirty INTEGER
);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT, name TEXT, position INTEGER, status TEXT, attempts INTEGER, started REAL,
    duration_s REAL, exit_code INTEGER, error TEXT, reason TEXT, cache_hit INTEGER, cache_key TEXT,
    output TEXT, output_stored INTEGER, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT, stage TEXT, path TEXT, sha256 TEXT, size INTEGER, PRIMARY KEY (run_id, stage, path)
);
CREATE TABLE IF NOT EXISTS tests (
    run_id TEXT, stage TEXT, tests INTEGER, failures INTEGER, errors INTEGER, skipped INTEGER,
    failed TEXT, files TEXT, PRIMARY KEY (run_id, stage)
);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, run_id TEXT, stage TEXT, output TEXT, created REAL);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
"""
#: columns added to a table after its first release: a database made before gets them
ADDED_COLUMNS = (("runs", "dirty", "INTEGER"),)

#: the runs that are never pruned: still going, or waiting for a decision (an approval)
_LIVE = "status = 'running' OR status LIKE 'awaiting%'"


class History:
    """The record of one workspace's runs. Thread-safe; several processes may share it."""

    def __init__(self, workspace: Path, *, warn: Callable[[str], None] | None = None, create: bool = True) -> None:
        self.dir = workspace / DIRNAME
        self.db_path = self.dir / "pipekit.db"
        if not create and not self.db_path.is_file():
            raise UsageError(
                f"There is no run history in {workspace}: pipekit looked for {self.db_path}, which a"
                " `pipekit run` there creates. Point -f at the pipeline's folder"
            )
        make_private_dir(self.dir)
        self._warn = warn or (lambda message: None)
        self._lock = threading.RLock()
        self._logs: dict[tuple[str, str], Any] = {}
        self._db = self._open()

    # -- the database ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 30000")
        # Switching to WAL and creating the tables can fail with "locked" without waiting, while
        # another process does the same on a new database: retry for a while.
        deadline = time.monotonic() + 30
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(SCHEMA)
                _add_columns(db)
                break
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.02)
        db.execute("PRAGMA synchronous = NORMAL")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(str(self.db_path) + suffix, 0o600)
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            db.execute("SELECT count(*) FROM runs").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            if _busy(e):
                raise
            if not database_damaged(e):  # a full disk, a read-only folder: the database is fine, keep it
                raise HistoryUnwritable(
                    f"Cannot use the run history {self.db_path}: {explain_write_error(e, self.dir)}"
                ) from e
            aside = self.db_path.with_name(f"pipekit.db.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.db_path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self._warn(
                f"the run history {self.db_path} could not be read ({e}); it was moved to {aside.name}"
                " and a new one was started"
            )
            return self._connect()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return list(self._db.execute(sql, args).fetchall())
            finally:
                self._db.row_factory = None

    def close(self) -> None:
        with self._lock:
            for f in self._logs.values():
                f.close()
            self._logs.clear()
            self._db.close()

    # -- recording a run ------------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        *,
        pipeline: str,
        path: str,
        branch: str | None,
        git_commit: str | None,
        argv: str,
        resumed_from: str | None = None,
        dirty: bool | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, path, branch, git_commit, argv, user, host, pid, started, ended,"
                " status, resumed_from, dirty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'running', ?, ?)",
                (
                    run_id,
                    pipeline,
                    path,
                    branch,
                    git_commit,
                    argv,
                    _user(),
                    socket.gethostname(),
                    os.getpid(),
                    time.time(),
                    resumed_from,
                    None if dirty is None else int(dirty),
                ),
            )

    def stage_started(self, run_id: str, name: str, position: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO stages (run_id, name, position, status, attempts, started, cache_hit,"
                " output_stored) VALUES (?, ?, ?, 'running', 0, ?, 0, 0)",
                (run_id, name, position, time.time()),
            )

    def stage_finished(
        self,
        run_id: str,
        name: str,
        position: int,
        *,
        status: str,
        attempts: int,
        duration_s: float | None,
        exit_code: int | None,
        error: str | None,
        reason: str | None,
        cache_hit: bool,
        cache_key: str | None,
        output: str | None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, name) DO UPDATE SET status=excluded.status, attempts=excluded.attempts,"
                " duration_s=excluded.duration_s, exit_code=excluded.exit_code, error=excluded.error,"
                " reason=excluded.reason, cache_hit=excluded.cache_hit, cache_key=excluded.cache_key,"
                " output=excluded.output, output_stored=excluded.output_stored",
                (
                    run_id,
                    name,
                    position,
                    status,
                    attempts,
                    None,
                    duration_s,
                    exit_code,
                    error,
                    reason,
                    int(cache_hit),
                    cache_key,
                    output,
                    int(output is not None),
                ),
            )
            if cache_key and output is not None and status == "succeeded":
                db.execute(
                    "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?)",
                    (cache_key, run_id, name, output, time.time()),
                )

    def finish_run(self, run_id: str, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status = ?, ended = ? WHERE id = ?", (status, time.time(), run_id))
            db.execute("UPDATE stages SET status = 'interrupted' WHERE run_id = ? AND status = 'running'", (run_id,))
        with self._lock:
            for key in [k for k in self._logs if k[0] == run_id]:
                self._logs.pop(key).close()

    # -- logs -----------------------------------------------------------------------------
    def run_file(self, run_id: str, name: str) -> Path:
        """A file of the run's own beside its logs (``plan.json``, ``commands.jsonl``)."""
        return self.dir / "logs" / run_id / f"_{name}"

    def write_plan(self, run_id: str, plan: Any, params: Mapping[str, Any]) -> None:
        """The run's stages (what each needs, its image, where it is defined) and parameters, for
        ``pipekit report``."""
        stages = [
            {
                "name": n,
                "needs": list(plan.upstream(n)),
                "image": plan.pipeline.describe_image(plan.stage(n)),
                "location": plan.stage(n).location,
            }
            for n in plan.order
        ]
        text = json.dumps({"stages": stages, "params": {k: str(v) for k, v in params.items()}})
        with self._lock:
            with self._private_file(self.run_file(run_id, "plan.json"), "w") as f:
                f.write(text)

    def append_run_file(self, run_id: str, name: str, line: str) -> None:
        with self._lock:
            with self._private_file(self.run_file(run_id, name), "a") as f:
                f.write(line + "\n")

    def log_path(self, run_id: str, stage: str) -> Path:
        return self.dir / "logs" / run_id / f"{slug(stage, keep='_.=,-')}.log"

    def log_processor(self, run_id: str) -> LogFiles:
        """A structlog processor (after the masker) that appends each stage's events to its file;
        its ``batch_lines`` form appends a batch of output lines in one write."""
        return LogFiles(self, run_id)

    def append_stage_log(self, run_id: str, stage: str, text: str) -> None:
        """Append ``text`` (one or more lines) to the stage's log file, kept open until the run ends."""
        with self._lock:
            f = self._logs.get((run_id, stage))
            if f is None:
                f = self._logs[(run_id, stage)] = self._private_file(self.log_path(run_id, stage), "a")
            f.write(text + "\n")
            f.flush()

    def _private_file(self, path: Path, mode: str) -> Any:
        """Open one of pipekit's own files: owner-only, inside ``.pipekit/`` for real, and never
        through a symbolic link (one a stage planted would make pipekit, as root, write elsewhere)."""
        make_private_dir(path.parent)
        real_dir = os.path.realpath(self.dir)
        if (
            not os.path.realpath(path.parent).startswith(real_dir + os.sep)
            and os.path.realpath(path.parent) != real_dir
        ):
            raise UsageError(f"{path.parent} leads out of {self.dir} (a symbolic link?); pipekit does not write there")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if "a" in mode else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise UsageError(f"Cannot write {path}: {e.strerror} (pipekit never writes through a link)") from e
        return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")

    # -- artifacts and test reports -------------------------------------------------------
    def add_artifact(self, run_id: str, stage: str, path: str, data: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        target = self.dir / "artifacts" / digest
        if not target.exists():
            tmp = target.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}")
            with self._private_file(tmp, "wb") as f:
                f.write(data)
            tmp.replace(target)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)", (run_id, stage, path, digest, len(data))
            )
        return digest

    def add_tests(self, run_id: str, stage: str, report: TestReport) -> None:
        failed = [{"name": f.name, "message": f.message, "kind": f.kind} for f in report.failed]
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    stage,
                    report.tests,
                    report.failures,
                    report.errors,
                    report.skipped,
                    json.dumps(failed),
                    json.dumps(list(report.files)),
                ),
            )

    # -- the stage cache ------------------------------------------------------------------
    def cache_get(self, key: str) -> tuple[str, str] | None:
        rows = self._query("SELECT run_id, output FROM cache WHERE key = ?", (key,))
        return (rows[0]["run_id"], rows[0]["output"]) if rows else None

    def cache_put(self, key: str, run_id: str, stage: str, output: str) -> None:
        """Keep a result this run took from elsewhere (the shared cache) as a local one."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?)", (key, run_id, stage, output, time.time()))

    def cache_entries(self) -> list[CacheRow]:
        rows = self._query("SELECT key, run_id, stage, created FROM cache ORDER BY created DESC")
        return [CacheRow(**dict(r)) for r in rows]

    def prune_cache(self) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM cache").rowcount

    # -- reading --------------------------------------------------------------------------
    def runs(self, limit: int = 20) -> list[RunRow]:
        rows = self._query("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))
        return [RunRow(**dict(r)) for r in rows]

    def run(self, run_id: str) -> RunRow:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise UsageError(f"No run '{run_id}' in {self.db_path}")
        return RunRow(**dict(rows[0]))

    def resolve(self, ref: str) -> str:
        """A run id from an id, a unique prefix of one, or ``last``."""
        if ref == "last":
            rows = self._query("SELECT id FROM runs ORDER BY started DESC LIMIT 1")
            if not rows:
                raise UsageError(f"No runs are recorded in {self.dir} yet")
            return str(rows[0]["id"])
        rows = self._query("SELECT id FROM runs WHERE id LIKE ? ORDER BY started DESC", (ref.replace("%", "") + "%",))
        if not rows:
            raise UsageError(f"No run matches '{ref}' in {self.dir}; `pipekit runs` lists them")
        if len(rows) > 1 and rows[0]["id"] != ref:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise UsageError(f"'{ref}' matches several runs ({ids}); give more of the id")
        return str(rows[0]["id"])

    def stages(self, run_id: str) -> list[StageRow]:
        rows = self._query("SELECT * FROM stages WHERE run_id = ? ORDER BY position", (run_id,))
        return [
            StageRow(**{**dict(r), "cache_hit": bool(r["cache_hit"]), "output_stored": bool(r["output_stored"])})
            for r in rows
        ]

    def artifacts(self, run_id: str) -> list[ArtifactRow]:
        rows = self._query("SELECT * FROM artifacts WHERE run_id = ? ORDER BY stage, path", (run_id,))
        return [ArtifactRow(**dict(r)) for r in rows]

    def tests(self, run_id: str) -> list[TestRow]:
        rows = self._query("SELECT * FROM tests WHERE run_id = ? ORDER BY stage", (run_id,))
        return [TestRow.from_db(dict(r)) for r in rows]

    def artifact_file(self, digest: str) -> Path:
        return self.dir / "artifacts" / digest

    def last_run_of(self, pipeline_path: str) -> str | None:
        rows = self._query(
            "SELECT id FROM runs WHERE path = ? AND status != 'running' ORDER BY started DESC LIMIT 1", (pipeline_path,)
        )
        return str(rows[0]["id"]) if rows else None

    # -- retention (pipekit prune) --------------------------------------------------------
    def finished_runs(self) -> list[tuple[str, float]]:
        """(id, started) of every run that neither runs nor awaits anything, newest first."""
        rows = self._query(f"SELECT id, started FROM runs WHERE NOT ({_LIVE}) ORDER BY started DESC")
        return [(str(r["id"]), float(r["started"] or 0)) for r in rows]

    def used_only_by(self, runs: Sequence[str]) -> tuple[list[str], list[str]]:
        """The artifact digests and cache keys that no run outside ``runs`` refers to (a cache
        entry is referred to by the run that made it and by every run that took a hit on it)."""
        marks = ",".join("?" * len(runs))
        digests = self._query(
            f"SELECT DISTINCT sha256 FROM artifacts WHERE run_id IN ({marks})"
            f" AND sha256 NOT IN (SELECT sha256 FROM artifacts WHERE run_id NOT IN ({marks}))",
            (*runs, *runs),
        )
        keys = self._query(
            f"SELECT key FROM cache WHERE run_id IN ({marks}) AND key NOT IN"
            f" (SELECT cache_key FROM stages WHERE run_id NOT IN ({marks}) AND cache_key IS NOT NULL)",
            (*runs, *runs),
        )
        return [str(r["sha256"]) for r in digests], [str(r["key"]) for r in keys]

    def forget(self, runs: Sequence[str], cache_keys: Sequence[str]) -> None:
        """Delete the records of ``runs`` (not one that has started running again) and those cache entries."""
        marks = ",".join("?" * len(runs))
        with self._tx() as db:
            db.execute(f"DELETE FROM runs WHERE id IN ({marks}) AND NOT ({_LIVE})", tuple(runs))
            for table in ("stages", "artifacts", "tests"):
                db.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", tuple(runs))
            db.executemany("DELETE FROM cache WHERE key = ?", [(k,) for k in cache_keys])

    def compact(self) -> None:
        """Give freed pages back to the file system (best effort: another process may be reading)."""
        with self._lock, contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- runs that died -------------------------------------------------------------------
    def reap(self, cleanup: Callable[[str], None] | None = None) -> list[str]:
        """Mark runs of this machine whose process is gone as interrupted; clean up after them."""
        host = socket.gethostname()
        dead = [
            r["id"]
            for r in self._query("SELECT id, pid, host FROM runs WHERE status = 'running'")
            if r["host"] == host and not process_alive(r["pid"])
        ]
        for run_id in dead:
            with self._tx() as db:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', ended = coalesce(ended, ?)"
                    " WHERE id = ? AND status = 'running'",
                    (time.time(), run_id),
                )
                db.execute(
                    "UPDATE stages SET status = 'interrupted' WHERE run_id = ? AND status = 'running'", (run_id,)
                )
            if cleanup is not None:
                try:
                    cleanup(run_id)
                except Exception as e:  # the engine may be down; the record is still right
                    self._warn(f"could not remove what run {run_id} left behind: {e}")
        return dead


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _busy(e: Exception) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
