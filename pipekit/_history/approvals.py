"""Approval gates and deployments in the run history: the gates a run reached, the decisions made
on them (by whom, when, from where), and what each environment got.

Three tables beside the runs: ``gates`` (a run reached a gated stage: since when, and the gate as
the pipeline declared it, so that ``pipekit approve`` needs no pipeline), ``approvals`` (one
decision per run and stage) and ``deployments`` (a stage with ``environment=``: its run, its
outcome, who approved it). :func:`record_approval` is the one way a decision gets in: the command
line's ``pipekit approve`` and a server call it alike, then continue the run with ``pipekit run
--resume RUN``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from pipekit._core.results import StageStatus
from pipekit._dsl.approval import Decision, approval_params
from pipekit._dsl.control import format_duration
from pipekit._dsl.params import Param
from pipekit._history.store import History
from pipekit.exceptions import UsageError

__all__ = [
    "DeploymentRow",
    "Gate",
    "decision_for",
    "deployment_finished",
    "deployment_started",
    "decisions_of",
    "deployments",
    "gate_lines",
    "gate_of",
    "may_decide",
    "record_approval",
    "record_gate",
    "store_decision",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS gates (run_id TEXT, stage TEXT, since REAL, gate TEXT, PRIMARY KEY (run_id, stage));
CREATE TABLE IF NOT EXISTS approvals (
    run_id TEXT, stage TEXT, verdict TEXT, by TEXT, at REAL, host TEXT, via TEXT, params TEXT, reason TEXT,
    PRIMARY KEY (run_id, stage)
);
CREATE TABLE IF NOT EXISTS deployments (
    run_id TEXT, stage TEXT, environment TEXT, started REAL, ended REAL, outcome TEXT, approved_by TEXT,
    approved_at REAL, PRIMARY KEY (run_id, stage)
);
"""

#: how far back ``--resume`` chains are followed for a gate's decision and its first wait
CHAIN_LIMIT = 50


def _tables(history: History) -> None:
    with history._lock:
        if not getattr(history, "_approval_tables", False):
            history._db.executescript(SCHEMA)
            history._approval_tables = True  # type: ignore[attr-defined]


@attrs.frozen
class Gate:
    """A gate a run reached: ``since`` is when the first run of its ``--resume`` chain reached it."""

    run_id: str
    stage: str
    since: float
    message: str
    approvers: tuple[str, ...]
    timeout: float | None
    params: tuple[Param, ...]

    @property
    def deadline(self) -> float | None:
        return self.since + self.timeout if self.timeout else None

    def timed_out(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def timeout_error(self) -> str:
        return f"approval timed out after {format_duration(self.timeout or 0)}"


def record_gate(history: History, run_id: str, stage: str, since: float, gate: Mapping[str, Any]) -> None:
    """A run reached ``stage``'s gate (``gate``: :meth:`pipekit._dsl.approval.Approval.as_dict`)."""
    _tables(history)
    with history._tx() as db:
        db.execute("INSERT OR REPLACE INTO gates VALUES (?, ?, ?, ?)", (run_id, stage, since, json.dumps(dict(gate))))


def gate_of(history: History, run_id: str, stage: str) -> Gate | None:
    _tables(history)
    rows = history._query("SELECT * FROM gates WHERE run_id = ? AND stage = ?", (run_id, stage))
    if not rows:
        return None
    g = json.loads(rows[0]["gate"])
    params = tuple(Param(p["name"], p["default"], p["help"]) for p in g.get("params", ()))
    return Gate(run_id, stage, rows[0]["since"], g["message"], tuple(g["approvers"]), g["timeout"], params)


def _chain(history: History, run_id: str) -> list[str]:
    """The run and the runs it resumed, newest first."""
    chain = [run_id]
    while len(chain) < CHAIN_LIMIT:
        rows = history._query("SELECT resumed_from FROM runs WHERE id = ?", (chain[-1],))
        if not rows or not rows[0]["resumed_from"] or rows[0]["resumed_from"] in chain:
            break
        chain.append(rows[0]["resumed_from"])
    return chain


def decision_for(history: History, run_id: str, stage: str) -> tuple[Decision | None, float | None]:
    """For a run that resumes ``run_id``: the decision recorded on ``stage``'s gate in it or the runs
    it resumed (the newest), and when the chain first reached the gate (None: never)."""
    _tables(history)
    decision, since = None, None
    for rid in _chain(history, run_id):
        if decision is None:
            rows = history._query("SELECT * FROM approvals WHERE run_id = ? AND stage = ?", (rid, stage))
            if rows:
                decision = _decision(rows[0])
        gate = gate_of(history, rid, stage)
        if gate is not None:
            since = gate.since if since is None else min(since, gate.since)
    return decision, since


def _decision(row: Any) -> Decision:
    return Decision(
        approved=row["verdict"] == "approved",
        by=row["by"],
        when=row["at"],
        host=row["host"],
        via=row["via"],
        params=json.loads(row["params"] or "{}"),
        reason=row["reason"],
    )


def may_decide(user: str, approvers: tuple[str, ...]) -> bool:
    """Whether ``user`` is one of ``approvers``: by name, or by a Unix group of theirs."""
    if not approvers or user in approvers:
        return True
    with contextlib.suppress(Exception):  # no such user or group on this machine: not a member
        import grp
        import pwd

        primary = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        groups = {primary} | {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
        return bool(groups & set(approvers))
    return False


def record_approval(
    history: History,
    run_id: str,
    stage: str,
    decision: Decision,
    *,
    now: float | None = None,
    may: Callable[[str, tuple[str, ...]], bool] | None = None,
) -> Decision:
    """Record a decision on the gate of ``stage`` in ``run_id``, which must await approval there.

    Refused (UsageError) when the run has no such gate, when it is decided already or past its
    timeout, when ``decision.by`` is not an approver, or when its params do not fit the gate's
    (text values are converted to the declared types). ``may(user, approvers)`` says who may decide
    (default :func:`may_decide`, Unix users and groups; the server passes its own users'). Returns the
    decision as recorded."""
    gate = _awaiting_gate(history, run_id, stage)
    now = time.time() if now is None else now
    if not (may or may_decide)(decision.by, gate.approvers):  # may: the server's users and groups
        raise UsageError(f"{decision.by} may not decide on '{stage}': its approvers are {', '.join(gate.approvers)}")
    if gate.timed_out(now):
        raise UsageError(timed_out_refusal(run_id, stage, gate.timeout_error()))
    if decision.approved:
        given = {k: v if isinstance(v, str) else str(v) for k, v in decision.params.items()}
        decision = attrs.evolve(decision, params=approval_params(gate.params, given, stage))
    elif not decision.reason:
        raise UsageError(f"a rejection needs a reason (--reason '...') for '{stage}'")
    store_decision(history, run_id, stage, decision)
    return decision


def timed_out_refusal(run_id: str, stage: str, why: str) -> str:
    """Why a decision on a gate past its timeout is refused (``pipekit approve``, ``--resume --approve``)."""
    return (
        f"the gate of '{stage}' in run {run_id} timed out ({why}); resuming the run fails the stage."
        " Start a new run to deploy"
    )


def store_decision(history: History, run_id: str, stage: str, decision: Decision) -> None:
    """Write a decision on a run's gate, unchecked (:func:`record_approval` checks first; a run
    stores the decisions made in it: at its prompt, by ``--approve``). One per run and stage."""
    _tables(history)
    with history._tx() as db:
        if db.execute("SELECT 1 FROM approvals WHERE run_id = ? AND stage = ?", (run_id, stage)).fetchone():
            raise UsageError(f"'{stage}' in run {run_id} is decided already; `pipekit show {run_id}` says how")
        db.execute(
            "INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                stage,
                decision.verdict,
                decision.by,
                decision.when,
                decision.host,
                decision.via,
                json.dumps(dict(decision.params), default=str),
                decision.reason,
            ),
        )


def _awaiting_gate(history: History, run_id: str, stage: str) -> Gate:
    _tables(history)
    rows = history._query("SELECT status FROM stages WHERE run_id = ? AND name = ?", (run_id, stage))
    gate = gate_of(history, run_id, stage)
    if not rows or gate is None:
        raise UsageError(f"run {run_id} has no approval gate '{stage}'; `pipekit show {run_id}` lists its stages")
    if rows[0]["status"] != StageStatus.AWAITING:
        raise UsageError(f"'{stage}' in run {run_id} does not await approval (it is {rows[0]['status']})")
    return gate


def decisions_of(history: History, run_id: str) -> dict[str, Decision]:
    """The decisions recorded on a run's gates (for ``pipekit show``)."""
    _tables(history)
    return {r["stage"]: _decision(r) for r in history._query("SELECT * FROM approvals WHERE run_id = ?", (run_id,))}


def gate_lines(history: History, run_id: str) -> list[str]:
    """What ``pipekit show`` says of a run's gates: each decision, or how to decide."""
    _tables(history)
    decided = decisions_of(history, run_id)
    statuses = {st.name: st.status for st in history.stages(run_id)}
    lines = []
    for row in history._query("SELECT stage FROM gates WHERE run_id = ? ORDER BY since", (run_id,)):
        stage = row["stage"]
        gate = gate_of(history, run_id, stage)
        d, earlier = decided.get(stage), ""
        if d is None and statuses.get(stage) != StageStatus.AWAITING:  # passed on a resumed run's decision
            d, earlier = decision_for(history, run_id, stage)[0], ", on a run this one resumed"
        assert gate is not None
        if d is not None:
            what = f"{d.verdict} by {d.by}@{d.host or '-'} at {_when(d.when)} ({d.via}{earlier})"
            extra = f": {d.reason}" if d.reason else "".join(f"\n      {k} = {v}" for k, v in d.params.items())
            lines.append(f"  {stage}: {what}{extra}")
            continue
        lines.append(f"  {stage}: awaiting approval since {_when(gate.since)}: {gate.message}")
        if gate.approvers:
            lines.append(f"      approvers: {', '.join(gate.approvers)}")
        if gate.deadline is not None:
            lines.append(f"      times out at {_when(gate.deadline)} ({gate.timeout_error()} from then)")
        for p in gate.params:
            need = "required" if p.default is None else f"default {p.default!r}"
            lines.append(f"      --param {p.name}=... ({need}{': ' + p.help if p.help else ''})")
        lines.append(f"      pipekit approve {run_id} {stage}, then pipekit run --resume {run_id}")
    return lines


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- deployments -------------------------------------------------------------------------------
@attrs.frozen
class DeploymentRow:
    environment: str
    run_id: str
    stage: str
    git_commit: str | None
    started: float
    ended: float | None
    outcome: str
    approved_by: str | None
    approved_at: float | None


def deployment_started(history: History, run_id: str, stage: str, environment: str, approval: Decision | None) -> None:
    _tables(history)
    with history._tx() as db:
        db.execute(
            "INSERT OR REPLACE INTO deployments VALUES (?, ?, ?, ?, NULL, 'running', ?, ?)",
            (
                run_id,
                stage,
                environment,
                time.time(),
                approval.by if approval else None,
                approval.when if approval else None,
            ),
        )


def deployment_finished(history: History, run_id: str, stage: str, outcome: str) -> None:
    _tables(history)
    with history._tx() as db:
        db.execute(
            "UPDATE deployments SET ended = ?, outcome = ? WHERE run_id = ? AND stage = ?",
            (time.time(), outcome, run_id, stage),
        )


def deployments(history: History, environment: str | None = None, limit: int = 20) -> list[DeploymentRow]:
    """What was deployed where, newest first (a run whose process died shows ``interrupted``)."""
    _tables(history)
    where, args = ("WHERE d.environment = ?", (environment,)) if environment else ("", ())
    rows = history._query(
        "SELECT d.environment, d.run_id, d.stage, r.git_commit, d.started, d.ended,"
        " CASE WHEN d.outcome = 'running' AND r.status != 'running' THEN 'interrupted' ELSE d.outcome END"
        " AS outcome, d.approved_by, d.approved_at"
        f" FROM deployments d LEFT JOIN runs r ON r.id = d.run_id {where} ORDER BY d.started DESC LIMIT ?",
        (*args, limit),
    )
    return [DeploymentRow(**dict(r)) for r in rows]
