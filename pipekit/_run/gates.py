"""Approval gates and environments in a run: whether a gated stage may start, and one run at a
time per environment.

:class:`Gates` answers for each gated stage the scheduler reaches: approved (``--approve``, a
decision recorded on the run this one resumes, the pytest plugin's), rejected, timed out, or not
decided. An undecided gate is asked at the terminal when the run has a prompt (the rest of the run
goes on meanwhile), else it is recorded as awaiting approval and the run ends without the stage.
Decisions made in the run (the prompt, ``--approve``) are recorded in the history like those of
``pipekit approve``.
"""

from __future__ import annotations

import os
import pwd
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from pipekit._core.results import StageResult, StageStatus
from pipekit._dsl.approval import TIMED_OUT, Approval, Decision, Environment, approval_params
from pipekit._run.locks import ResourceLock
from pipekit.exceptions import UsageError

__all__ = [
    "TIMED_OUT",
    "EnvironmentLock",
    "GateAsk",
    "checked_decision",
    "Gates",
    "Prompter",
    "Verdict",
    "current_user",
    "pre_approvals",
]


def current_user() -> str:
    """The account this process runs as (its effective uid's name in the password database, ``uid N``
    without an entry): never ``USER``/``LOGNAME``, which anyone may set to another name."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@attrs.frozen
class GateAsk:
    """What the prompt shows: the stage, its gate, what the run did so far, when the gate times out."""

    run_id: str
    stage: str
    approval: Approval
    ran: Sequence[StageResult]
    deadline: float | None  # wall clock


class Prompter(Protocol):
    """Asks a person at a gate; blocks until answered. Returns the decision, None (decide later:
    the gate stays awaiting) or ``TIMED_OUT``; returns None soon after ``stop`` is set."""

    def __call__(self, ask: GateAsk, stop: threading.Event) -> Decision | str | None: ...


@attrs.frozen
class Verdict:
    """A gate's state: ``decision`` (approved or rejected), else ``error`` (timed out), else undecided."""

    decision: Decision | None = None
    error: str | None = None
    since: float = 0.0
    new: bool = False  # the decision was made in this run (and is not in the history yet)


def pre_approvals(
    stages: Mapping[str, Approval | None], names: Sequence[str], params: Mapping[str, str], user: str
) -> dict[str, Decision]:
    """``--approve STAGE`` (and ``--approval-param STAGE.NAME=VALUE``) as decisions, checked up
    front: each stage exists and has a gate, the user is one of its approvers, the params fit."""
    from pipekit._history.approvals import may_decide

    by_stage: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        stage, dot, name = key.rpartition(".")
        if not dot or not stage:
            raise UsageError(f"--approval-param takes STAGE.NAME=VALUE, got {key}={value}")
        by_stage.setdefault(stage, {})[name] = value
    decided: dict[str, Decision] = {}
    for name in [*names, *(s for s in by_stage if s not in names)]:
        gate = stages.get(name)
        if name not in stages or gate is None:
            gated = ", ".join(s for s, a in stages.items() if a is not None) or "none"
            raise UsageError(f"--approve {name}: no stage of that name has an approval gate (gated: {gated})")
        if name not in names:
            raise UsageError(f"--approval-param {name}.…: give --approve {name} too")
        if not may_decide(user, gate.approvers):
            raise UsageError(f"--approve {name}: {user} is not among its approvers ({', '.join(gate.approvers)})")
        values = approval_params(gate.params, by_stage.get(name, {}), name)
        decided[name] = Decision(approved=True, by=user, host=socket.gethostname(), via="--approve", params=values)
    return decided


def checked_decision(stages: Mapping[str, Approval | None], name: str, decision: Decision) -> Decision:
    """A decision made in code (the pytest plugin's) for the gate of ``name``: the stage has a gate,
    and an approval's params are converted to the declared types (missing ones refused)."""
    gate = stages.get(name)
    if gate is None:
        gated = ", ".join(s for s, a in stages.items() if a is not None) or "none"
        raise UsageError(f"approve/reject {name!r}: no stage of that name has an approval gate (gated: {gated})")
    if not decision.approved:
        return decision
    given = {k: v if isinstance(v, str) else str(v) for k, v in decision.params.items()}
    return attrs.evolve(decision, params=approval_params(gate.params, given, name))


class Gates:
    """The gates of one run: what is decided, the prompt, and the records in the history."""

    def __init__(
        self,
        run_id: str,
        *,
        history: Any = None,
        resumed_from: str | None = None,
        decided: Mapping[str, Decision] | None = None,
        prompter: Prompter | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.run_id = run_id
        self.history = history
        self.resumed_from = resumed_from
        self.decided = dict(decided or {})
        self.prompter = prompter
        self.now = now
        self.stop = threading.Event()  # ends every prompt (the run stops)

    def verdict(self, stage: str, approval: Approval) -> Verdict:
        now = self.now()
        recorded, since = None, None
        if self.history is not None and self.resumed_from is not None:
            recorded, since = self._recorded(stage)
        since = now if since is None else since
        deadline = since + approval.timeout if approval.timeout else None
        late = deadline is not None and now >= deadline  # (counted from the first run of a --resume chain)
        if stage in self.decided and not late:  # --approve, the plugin's: made for this run
            return Verdict(self.decided[stage], since=since, new=True)
        if recorded is not None and (deadline is None or recorded.when < deadline):
            return Verdict(recorded, since=since)
        if late:
            from pipekit._dsl.control import format_duration
            from pipekit._history.approvals import timed_out_refusal

            error = f"approval timed out after {format_duration(approval.timeout or 0)}"
            if stage in self.decided:  # refused as `pipekit approve` refuses it
                error = timed_out_refusal(self.resumed_from or self.run_id, stage, error)
            return Verdict(error=error, since=since)
        return Verdict(since=since)

    def _recorded(self, stage: str) -> tuple[Decision | None, float | None]:
        from pipekit._history.approvals import decision_for

        assert self.resumed_from is not None
        return decision_for(self.history, self.resumed_from, stage)

    def record(self, stage: str, approval: Approval, verdict: Verdict) -> None:
        """Keep the gate in the history: reached since ``verdict.since``, and the decision when it
        was made in this run (the prompt, ``--approve``; one recorded on a resumed run stays there)."""
        if self.history is None:
            return
        from pipekit._history.approvals import record_gate, store_decision

        record_gate(self.history, self.run_id, stage, verdict.since, approval.as_dict())
        if verdict.decision is not None and verdict.new:
            store_decision(self.history, self.run_id, stage, verdict.decision)

    def ask(self, ask: GateAsk) -> Decision | str | None:
        assert self.prompter is not None
        return self.prompter(ask, self.stop)

    # -- environments ------------------------------------------------------------------------
    def deploying(self, stage: str, environment: str, approval: Decision | None) -> None:
        if self.history is not None:
            from pipekit._history.approvals import deployment_started

            deployment_started(self.history, self.run_id, stage, environment, approval)

    def deployed(self, stage: str, status: StageStatus) -> None:
        if self.history is not None:
            from pipekit._history.approvals import deployment_finished

            deployment_finished(self.history, self.run_id, stage, str(status))


class EnvironmentLock:
    """One run at a time in an environment on this machine: an exclusive lock (``resource=``'s),
    and, for ``queue="newest"``, a line of waiting runs (a file each beside the lock) in which an
    older waiter gives up (``superseded``) as soon as a newer one waits."""

    def __init__(self, environment: Environment, run_id: str) -> None:
        self.environment = environment
        self.lock = ResourceLock(f"environment:{environment.name}")
        self.line = self.lock.path.with_suffix(".waiting")
        self.me = f"{time.time_ns():020d}-{os.getpid()}-{run_id}"
        self.superseded = False

    def acquire(self, cancelled: threading.Event, on_wait: Callable[[], None]) -> bool:
        if self.environment.queue != "newest":
            return self.lock.acquire(cancelled, on_wait)
        self.line.mkdir(exist_ok=True)
        mine = self.line / self.me
        mine.touch()
        try:
            return self.lock.acquire(cancelled, on_wait, give_up=self._newer_waits)
        finally:
            mine.unlink(missing_ok=True)

    def _newer_waits(self) -> bool:
        from pipekit._core.util import process_alive

        for entry in os.listdir(self.line):
            _, _, rest = entry.partition("-")
            pid = rest.partition("-")[0]
            if not pid.isdigit() or not process_alive(int(pid)):
                (self.line / entry).unlink(missing_ok=True)  # a waiter whose process died
            elif entry > self.me:
                self.superseded = True
                return True
        return False

    def release(self) -> None:
        self.lock.release()
