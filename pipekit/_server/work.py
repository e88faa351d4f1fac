"""The server's queue and its runs: at most ``max_parallel_runs`` at once, each a ``pipekit run`` of
its own in a workspace checked out at the run's commit.

Each run is a child process (the same run setup as the command line, with the history, the cache,
the secrets and the backend), so a cancel is a Ctrl-C to it (SIGINT: its stages stop, its
containers go, the run is recorded as interrupted) and a server that stops sends SIGTERM to each.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipekit._core.results import EXIT_AWAITING
from pipekit._server.config import Project, ServerConfig
from pipekit._server.env import child_env
from pipekit._server.git import Git
from pipekit._server.status import report_status
from pipekit._server.store import AWAITING, ServerRun, Store

__all__ = ["Work"]

EXPIRY_CHECK = 5.0  # seconds between looks for gates past their timeout


class _Running:
    def __init__(self, run: ServerRun, slot: int) -> None:
        self.run = run
        self.slot = slot
        self.proc: subprocess.Popen[str] | None = None
        self.cancelled: str | None = None  # why, when a user or a newer push cancelled it
        self.stopping = False


class Work:
    """The queue: ``submit`` adds a run, a dispatcher thread starts queued runs as slots free up."""

    def __init__(self, config: ServerConfig, store: Store, git: Git, log: Callable[[str], None], base_url: str) -> None:
        self.config, self.store, self.git, self.log, self.base_url = config, store, git, log, base_url
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._statuses: queue.Queue[tuple[Project, str, str, str, str]] = queue.Queue()
        self._sender: threading.Thread | None = None

    # -- the queue -------------------------------------------------------------------------
    def start(self) -> None:
        lost = self.store.recover()
        if lost:
            self.log(f"runs {', '.join(map(str, lost))} were running when the server stopped: recorded as interrupted")
        self._thread = threading.Thread(target=self._dispatch, name="pipekit-serve-queue", daemon=True)
        self._thread.start()

    def submit(
        self,
        project: Project,
        branch: str,
        commit: str,
        trigger: str,
        params: dict[str, str] | None = None,
        by: str | None = None,
    ) -> int:
        """Queue a run; ``by``: the user who asked for it, or what started it (``webhook:github``,
        ``server:poll``, ``server:cron``)."""
        if project.cancel_superseded:
            for older in self.store.runs(project=project.name, branch=branch, limit=1000):
                if older.status in ("queued", "running") and older.resume is None:
                    self.cancel(older.id, why=f"superseded by a newer commit of {branch}")
        run = self.store.add(project.name, branch, commit, trigger, params, by)
        self.log(f"run {run} queued: {project.name} {branch} {commit[:12]} ({trigger}{f' by {by}' if by else ''})")
        self._status(project, commit, "pending", run, "queued")
        self._wake.set()
        return run

    def refused(
        self, project: Project, branch: str, commit: str, trigger: str, error: str, by: str | None = None
    ) -> int:
        """Record a run that cannot start (its pipeline's triggers could not be read): an error, with why."""
        run = self.store.add(project.name, branch, commit, trigger, by=by)
        self.store.update(run, status="error", started=time.time(), finished=time.time(), error=error)
        self.log(f"run {run} error: {error}")
        self._status(project, commit, "error", run, error)
        return run

    def cancel(self, run: int, why: str = "cancelled") -> bool:
        """Cancel a queued run or one awaiting approval, or stop a running one (SIGINT, as Ctrl-C);
        False when it has ended."""
        found = self.store.get(run)
        if found is None or found.status not in ("queued", "running", AWAITING):
            return False
        if found.status in ("queued", AWAITING):
            self.store.update(run, status="cancelled", finished=time.time(), error=why)
        with self._lock:
            going = self._running.get(run)
        if going is not None:
            going.cancelled = why
            if going.proc is not None and going.proc.poll() is None:
                going.proc.send_signal(signal.SIGINT)
        self.log(f"run {run} cancelled: {why}")
        return True

    def _dispatch(self) -> None:
        checked = 0.0
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if time.monotonic() - checked >= EXPIRY_CHECK:
                checked = time.monotonic()
                self._expire()
            for queued in self.store.queued():
                with self._lock:
                    if len(self._running) >= self.config.max_parallel_runs or self._stop.is_set():
                        break
                    slots = {r.slot for r in self._running.values() if r.run.project == queued.project}
                    if queued.resume is not None:  # back in its own workspace, once that is free
                        slot = _slot(queued.workspace)
                        if slot in slots:
                            continue
                    else:  # the next workspace no run uses or keeps for a resume
                        slots |= {_slot(r.workspace) for r in self.store.holding(queued.project)}
                        slot = next(i for i in range(len(slots) + 1) if i not in slots)
                    going = _Running(queued, slot)
                    self._running[queued.id] = going
                threading.Thread(
                    target=self._execute, args=(going,), name=f"pipekit-serve-run-{queued.id}", daemon=True
                ).start()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to every running run, and wait for them to be recorded; queued runs stay queued."""
        self._stop.set()
        with self._lock:
            going = list(self._running.values())
        for g in going:
            g.stopping = True
            if g.proc is not None and g.proc.poll() is None:
                g.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return
            time.sleep(0.1)

    # -- one run ---------------------------------------------------------------------------
    def _execute(self, going: _Running) -> None:
        run = going.run
        project = self.config.project(run.project)
        try:
            if project is None:
                self.store.update(run.id, status="error", finished=time.time(), error="the project is not configured")
                return
            ws = self.git.folder(project) / f"ws-{going.slot}"
            if not self.store.claim(run.id, str(ws)):
                return  # cancelled while queued
            self._status(project, run.commit, "running", run.id, "running")
            status, error = self._run(project, going)
            self.store.update(run.id, status=status, finished=time.time(), error=error)
            self.log(f"run {run.id} {status}" + (f": {error}" if error else ""))
            self._status(project, run.commit, status, run.id, error or status.replace("_", " "))
        except Exception as e:  # the server stays up whatever a run does
            self.store.update(run.id, status="error", finished=time.time(), error=str(e))
            self.log(f"run {run.id} could not run: {e}")
            if project is not None:
                self._status(project, run.commit, "error", run.id, str(e))
        finally:
            with self._lock:
                self._running.pop(run.id, None)
            self._wake.set()

    def _run(self, project: Project, going: _Running) -> tuple[str, str | None]:
        run = going.run
        # a resume continues in the workspace its run left (kept for it): no checkout, the stages' files stay
        ws = Path(str(run.workspace)) if run.resume else self.git.checkout(project, run.commit, going.slot)
        refuse = [] if project.host_stages else ["--no-host-stages"]
        refuse += ["--stage-environments", str(self.environments_file(run.id, project))]
        if self.config.environments:
            refuse += ["--environments", json.dumps({e.name: e.as_json() for e in self.config.environments})]
        command = [
            sys.executable, "-m", "pipekit._cli.server_run", *refuse, "--", "-f", str(ws / project.pipeline),
            f"--branch={run.branch}", "--log-format", "json", "--progress", "plain", "--ci", "none", *project.args,
        ]  # fmt: skip
        command += [f"--param={name}={value}" for name, value in run.params.items()]
        command += [f"--resume={run.resume}"] if run.resume else []
        if project.secrets_file:
            command += [f"--secrets-file={project.secrets_file}"]
        env = child_env(self.config.hidden_env(), project.passed())
        env.update(PIPEKIT_COMMIT=run.commit, PIPEKIT_TRIGGER=run.trigger, PIPEKIT_SERVER_RUN=str(run.id))
        if going.stopping or going.cancelled:
            return ("interrupted", "the server stopped") if going.stopping else ("cancelled", going.cancelled)
        going.proc = subprocess.Popen(
            command, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(going.proc.stderr or []), daemon=True)  # type: ignore[union-attr]
        reader.start()
        self._follow(run.id, going.proc)
        code = going.proc.wait()
        reader.join(timeout=10)
        return _outcome(code, going, "".join(errors).strip())

    def _follow(self, run: int, proc: subprocess.Popen[str]) -> None:
        """Read the run's JSON log; note its pipekit run id as soon as it is known."""
        import json

        known = False
        for line in proc.stdout or []:
            if known:
                continue
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if event.get("run_id"):
                self.store.update(run, run_id=str(event["run_id"]))
                known = True

    def _status(self, project: Project, commit: str, state: str, run: int, description: str) -> None:
        """Queue a commit status; one thread sends them in order (a forge shows the last one it got)."""
        self._statuses.put((project, commit, state, f"{self.base_url}/runs/{run}", description))
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send, name="pipekit-serve-statuses", daemon=True)
                self._sender.start()

    def _send(self) -> None:
        while True:
            project, commit, state, url, description = self._statuses.get()
            report_status(project, commit, state, url, description, self.log)

    def _expire(self) -> None:
        """Resume the runs a gate of which timed out while they waited: the resumed run fails that
        stage ("approval timed out after 24h")."""
        for run in self.store.runs(status=AWAITING, limit=1000):
            try:
                stage = _timed_out(run)
            except Exception as e:  # a history that cannot be read: the run waits, the server goes on
                self.log(f"run {run.id}: cannot read its gates: {e}")
                continue
            if stage is not None:
                self.log(f"run {run.id}: the gate of '{stage}' timed out")
                self.resume(run.id)

    def environments_file(self, run: int, project: Project) -> Path:
        """Where a run's child writes its stages' environments (for the approval rules)."""
        return self.git.folder(project) / f"run-{run}.environments.json"

    def resume(self, run: int) -> bool:
        """After a decision on a gate: queue the run again, to continue where it stopped."""
        if not self.store.requeue(run):
            return False
        self.log(f"run {run} queued to resume after a decision on its gate")
        self._wake.set()
        return True

    def running(self) -> list[int]:
        with self._lock:
            return list(self._running)


def _outcome(code: int, going: _Running, stderr: str) -> tuple[str, str | None]:
    if going.cancelled:
        return "cancelled", going.cancelled
    if going.stopping or code in (130, 143):
        return "interrupted", "the server stopped while it ran"
    if code == 0:
        return "succeeded", None
    if code == EXIT_AWAITING:
        return AWAITING, None
    if code == 1:
        return "failed", None
    return "error", stderr[-2000:] if stderr else f"pipekit run exited with {code}"


def _timed_out(run: ServerRun) -> str | None:
    """The first stage of ``run`` that awaits approval past its gate's timeout, or None."""
    from pipekit._history.approvals import gate_of

    history = history_of(run.workspace) if run.run_id else None
    if history is None or run.run_id is None:
        return None
    try:
        now = time.time()
        for s in history.stages(run.run_id):
            gate = gate_of(history, run.run_id, s.name) if str(s.status) == AWAITING else None
            if gate is not None and gate.timed_out(now):
                return str(s.name)
        return None
    finally:
        history.close()


def _slot(workspace: str | None) -> int:
    """``ws-3`` -> 3."""
    return int(Path(workspace or "ws-0").name.rpartition("-")[2])


def history_of(workspace: str | None) -> Any:
    """The history of a run's workspace, or None."""
    from pipekit._history.store import History
    from pipekit.exceptions import UsageError

    if not workspace:
        return None
    try:
        return History(Path(workspace), create=False)
    except UsageError:  # no run recorded there yet
        return None
