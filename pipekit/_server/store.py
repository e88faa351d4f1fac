"""The server's own records: every run it queued, ran or refused, in SQLite in its state folder.

The queue is the ``queued`` rows: a server that stops keeps them and its next start runs them. A
run is ``queued``, ``running``, then ``succeeded``, ``failed``, ``cancelled``, ``interrupted`` (the
server stopped while it ran) or ``error`` (it could not start: a checkout failed, a bad pipeline);
or ``awaiting_approval`` (it ran what it could and a gate waits): a decision queues it again, with
``resume`` set, to continue in the same workspace.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = ["AWAITING", "ENDED", "ServerRun", "Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    run_id TEXT,
    workspace TEXT,
    error TEXT,
    triggered_by TEXT,
    resume TEXT
);
CREATE TABLE IF NOT EXISTS heads (project TEXT, branch TEXT, sha TEXT, PRIMARY KEY (project, branch));
CREATE TABLE IF NOT EXISTS sessions (digest TEXT PRIMARY KEY, expires REAL NOT NULL, user TEXT, credential TEXT);
CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, received REAL NOT NULL);
"""
ADDED = {"runs": ("triggered_by", "resume"), "sessions": ("user", "credential")}  # columns newer than the first schema
DELIVERIES_KEPT = 90 * 86400  # seconds a webhook delivery is remembered (a replay within them is refused)

ENDED = ("succeeded", "failed", "cancelled", "interrupted", "error")
AWAITING = "awaiting_approval"


@attrs.frozen
class ServerRun:
    id: int
    project: str
    branch: str
    commit: str
    trigger: str
    status: str
    params: Mapping[str, str]
    created: float
    started: float | None
    finished: float | None
    run_id: str | None  # pipekit's run id, in the workspace's history
    workspace: str | None
    error: str | None
    triggered_by: str | None = None  # a user's name (manual runs, re-runs), or webhook:github, server:cron, ...
    resume: str | None = None  # queued again after a decision on a gate: the pipekit run it continues

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return round((self.finished or time.time()) - self.started, 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "branch": self.branch,
            "commit": self.commit,
            "trigger": self.trigger,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "run_id": self.run_id,
            "params": dict(self.params),
            "error": self.error,
            "triggered_by": self.triggered_by,
        }


class Store:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(state_dir / "server.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(SCHEMA)
        for table, columns in ADDED.items():  # a server.db from an older pipekit
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        self._lock = threading.Lock()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[ServerRun]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM runs {sql}", args).fetchall()
        return [ServerRun(*r[:6], json.loads(r[6]), *r[7:]) for r in rows]  # type: ignore[call-arg]

    def add(
        self,
        project: str,
        branch: str,
        commit: str,
        trigger: str,
        params: Mapping[str, str] | None = None,
        by: str | None = None,
    ) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO runs (project, branch, commit_sha, trigger, status, params, created, triggered_by)"
                " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (project, branch, commit, trigger, json.dumps(dict(params or {})), time.time(), by),
            )
            return int(cur.lastrowid or 0)

    def get(self, run: int) -> ServerRun | None:
        found = self._rows("WHERE id = ?", (run,))
        return found[0] if found else None

    def runs(
        self, project: str | None = None, branch: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[ServerRun]:
        where, args = [], []
        for column, value in (("project", project), ("branch", branch), ("status", status)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._rows(f"{clause}ORDER BY id DESC LIMIT ?", (*args, limit))

    def queued(self) -> list[ServerRun]:
        return self._rows("WHERE status = 'queued' ORDER BY id")

    def holding(self, project: str) -> list[ServerRun]:
        """The runs that keep their workspace for a resume: awaiting approval, or queued to resume."""
        return self._rows(
            "WHERE project = ? AND (status = ? OR (status = 'queued' AND resume IS NOT NULL))", (project, AWAITING)
        )

    def requeue(self, run: int) -> bool:
        """A run awaiting approval queued again, to resume its pipekit run (False: it was not awaiting)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE runs SET status = 'queued', resume = run_id, finished = NULL, error = NULL"
                " WHERE id = ? AND status = ?",
                (run, AWAITING),
            )
            return cur.rowcount == 1

    def by_run_id(self, run_id: str) -> ServerRun | None:
        """The server run whose pipekit run (now, or before it resumed) is ``run_id``."""
        found = self._rows("WHERE run_id = ? OR resume = ? ORDER BY id DESC LIMIT 1", (run_id, run_id))
        return found[0] if found else None

    def workspaces(self) -> list[tuple[str, str]]:
        """Every (project, workspace) a run used."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT project, workspace FROM runs WHERE workspace IS NOT NULL")
            return [(str(p), str(w)) for p, w in rows.fetchall()]

    def update(self, run: int, **fields: Any) -> None:
        columns = {"commit": "commit_sha"}
        sets = ", ".join(f"{columns.get(k, k)} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run))

    def claim(self, run: int, workspace: str) -> bool:
        """Mark a queued run running (False: it was cancelled meanwhile)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE runs SET status = 'running', started = COALESCE(started, ?), workspace = ?"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), workspace, run),
            )
            return cur.rowcount == 1

    def recover(self) -> list[int]:
        """At start: runs the last server left running (it was killed) are interrupted."""
        lost = [r.id for r in self._rows("WHERE status = 'running'")]
        for run in lost:
            self.update(run, status="interrupted", finished=time.time(), error="the server stopped while it ran")
        return lost

    def head(self, project: str, branch: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha FROM heads WHERE project = ? AND branch = ?", (project, branch)
            ).fetchone()
        return str(row[0]) if row else None

    def heads(self, project: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT branch, sha FROM heads WHERE project = ?", (project,)).fetchall()
        return {b: s for b, s in rows}

    def set_head(self, project: str, branch: str, sha: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO heads VALUES (?, ?, ?)", (project, branch, sha))

    # -- logins: a session is valid while its row is there and not expired; logout deletes it ----
    def add_session(self, digest: str, expires: float, user: str, credential: str) -> None:
        """A login of ``user``; ``credential`` stands for the token it logged in with (a MAC of its
        digest), so that a changed token ends the user's sessions."""
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            self._db.execute(
                "INSERT OR REPLACE INTO sessions (digest, expires, user, credential) VALUES (?, ?, ?, ?)",
                (digest, expires, user, credential),
            )

    def session(self, digest: str) -> tuple[str, str] | None:
        """The user and credential of a live session, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT expires, user, credential FROM sessions WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None or float(row[0]) <= time.time() or not row[1] or not row[2]:
            return None
        return str(row[1]), str(row[2])

    def key(self, name: str) -> bytes:
        """A random key of the server's, made the first time it is asked for and kept."""
        import secrets

        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?)", (name, secrets.token_bytes(32)))
            return bytes(self._db.execute("SELECT value FROM keys WHERE name = ?", (name,)).fetchone()[0])

    def drop_session(self, digest: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE digest = ?", (digest,))

    # -- webhook deliveries: each is taken once ---------------------------------------------
    def first_delivery(self, keys: list[str]) -> bool:
        """Remember ``keys`` (a delivery id, the digest of the signed body); False when one of them
        was seen before (a replay)."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE received < ?", (now - DELIVERIES_KEPT,))
            marks = ",".join("?" * len(keys))
            if self._db.execute(f"SELECT 1 FROM deliveries WHERE key IN ({marks})", keys).fetchone():
                return False
            self._db.executemany("INSERT INTO deliveries VALUES (?, ?)", [(k, now) for k in keys])
        return True

    def close(self) -> None:
        self._db.close()
