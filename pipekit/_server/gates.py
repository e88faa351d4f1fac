"""Approval gates in server mode: a run's gates (for its page and the API), a decision by the user
logged in, checked against the server's rules and recorded in the run's history (the core's
``record_approval``, the one way a decision gets in), and the deployments of every project.

Who may decide: the gate's ``approvers`` (a user's name, or one of their ``groups`` in the server's
``[users.NAME]``; the rules of ``[environments.NAME]`` replace the pipeline's for the stages
deploying there); with ``separate_approver`` (the project's, or the environment's) not the user who
triggered the run. After a decision the server resumes the run by itself (``Work.resume``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from pipekit._server.config import EnvironmentRules, ServerConfig, User
from pipekit._server.store import AWAITING, ServerRun, Store
from pipekit._server.work import Work, history_of
from pipekit.exceptions import PipekitError

__all__ = ["Asked", "decide", "deployments_json", "gates_json", "may_approve"]


@attrs.frozen
class Asked:
    """A decision as a request asks for it (a form or the API's JSON)."""

    stage: str
    approve: bool
    params: dict[str, str] = attrs.field(factory=dict)
    reason: str | None = None
    origin: str = ""  # the client's address: where the decision came from


def may_approve(user: User, approvers: tuple[str, ...]) -> bool:
    """Whether ``user`` is one of ``approvers`` (none: anyone), by name or by a group of theirs."""
    return not approvers or user.name in approvers or bool(set(user.groups) & set(approvers))


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def gates_json(run: ServerRun) -> list[dict[str, Any]]:
    """The gates the run reached: the question, who may decide, the deadline, the params to fill,
    and the decision when there is one (on this run or a run it resumed)."""
    from pipekit._history.approvals import decision_for, gate_of

    history = history_of(run.workspace) if run.run_id else None
    if history is None or run.run_id is None:
        return []
    found = []
    try:
        for s in history.stages(run.run_id):
            gate = gate_of(history, run.run_id, s.name)
            if gate is None:
                continue
            decision, _ = decision_for(history, run.run_id, s.name)
            found.append(
                {
                    "stage": s.name,
                    "status": str(s.status),
                    "message": gate.message,
                    "approvers": list(gate.approvers),
                    "deadline": gate.deadline,
                    "params": [{"name": p.name, "default": _jsonable(p.default), "help": p.help} for p in gate.params],
                    "decision": None
                    if decision is None
                    else {
                        "verdict": decision.verdict,
                        "by": decision.by,
                        "when": decision.when,
                        "via": decision.via,
                        "from": decision.host,
                        "params": {k: _jsonable(v) for k, v in dict(decision.params).items()},
                        "reason": decision.reason,
                    },
                }
            )
    finally:
        history.close()
    return found


class _Unknown(Exception):
    """The environments a run's stages deploy to cannot be read (its child wrote no file, or it is gone)."""


def _environment_of(work: Work, run: ServerRun, stage: str) -> str | None:
    """The environment ``stage`` of ``run`` deploys to (None: none); :class:`_Unknown` when the
    run's record of its stages' environments cannot be read."""
    project = work.config.project(run.project)
    if project is None:
        return None
    try:
        known = json.loads(work.environments_file(run.id, project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _Unknown() from None
    if not isinstance(known, dict):
        raise _Unknown()
    # the child writes the pipeline's stages; a matrix instance (``deploy[region=eu]``) is its stage's
    value = known.get(stage) or known.get(stage.partition("[")[0])
    return value if isinstance(value, str) else None


def _rules(work: Work, run: ServerRun, stage: str) -> EnvironmentRules | None:
    """The server's rules for the environment ``stage`` deploys to; :class:`_Unknown` when they
    might apply (the server has some) but the run's record of its environments cannot be read."""
    try:
        return work.config.environment(_environment_of(work, run, stage))
    except _Unknown:
        if work.config.environments:
            raise
        return None


def decide(work: Work, user: User, run: ServerRun, asked: Asked) -> tuple[int, dict[str, Any]]:
    """Record ``user``'s decision on a gate of ``run`` and resume the run: the HTTP status and the
    answer (an error says what is wrong: 403 not theirs to decide, 404 no such gate, 409 the run
    does not await approval, 400 a param or a reason missing or wrong)."""
    from pipekit._dsl.approval import Decision
    from pipekit._history.approvals import gate_of, record_approval

    if run.status != AWAITING or not run.run_id:
        return 409, {"error": f"run {run.id} does not await approval (it is {run.status})"}
    project = work.config.project(run.project)
    history = history_of(run.workspace)
    if history is None or project is None:
        return 409, {"error": f"run {run.id} has no history to record a decision in"}
    try:
        gate = gate_of(history, run.run_id, asked.stage)
        if gate is None:
            return 404, {"error": f"run {run.id} has no approval gate '{asked.stage}'"}
        try:
            rules = _rules(work, run, asked.stage)
        except _Unknown:
            return 409, {
                "error": f"run {run.id} has no record of the environments its stages deploy to, so the"
                " server's [environments] rules cannot be checked: re-run it"
            }
        approvers = rules.approvers if rules and rules.approvers else gate.approvers  # the server's rules win
        if not may_approve(user, approvers):
            return 403, {"error": f"{user.name} may not decide on '{asked.stage}': its approvers are "
                         + ", ".join(approvers)}  # fmt: skip
        where = "the project" if project.separate_approver else f"[environments.{rules.name if rules else ''}]"
        if (
            asked.approve
            and run.triggered_by == user.name
            and (project.separate_approver or rules and rules.separate_approver)
        ):
            return 403, {
                "error": f"{user.name} triggered run {run.id}, and separate_approver = true ({where}): another user"
                f" must approve '{asked.stage}'"
            }
        decision = Decision(
            approved=asked.approve, by=user.name, host=asked.origin, via="server", params=asked.params,
            reason=asked.reason or None,
        )  # fmt: skip
        made = record_approval(history, run.run_id, asked.stage, decision, may=lambda *_: True)  # checked above
    except PipekitError as e:
        return 400, {"error": str(e)}
    finally:
        history.close()
    work.log(f"run {run.id}: '{asked.stage}' {made.verdict} by {user.name} from {asked.origin or '?'}")
    work.resume(run.id)
    return 200, {"run": run.id, "stage": asked.stage, "decision": made.verdict, "by": user.name}


def deployments_json(store: Store, config: ServerConfig, environment: str | None, limit: int) -> list[dict[str, Any]]:
    """What was deployed where, newest first, from every project's workspaces: the environment, the
    project and its run, the commit, who approved and when, the outcome."""
    from pipekit._history.approvals import deployments

    rows: list[dict[str, Any]] = []
    for project, workspace in store.workspaces():
        if config.project(project) is None or not Path(workspace).is_dir():
            continue
        history = history_of(workspace)
        if history is None:
            continue
        try:
            for d in deployments(history, environment, limit):
                server_run = store.by_run_id(d.run_id)
                rows.append(
                    {
                        "environment": d.environment,
                        "project": project,
                        "run": server_run.id if server_run else None,
                        "run_id": d.run_id,
                        "stage": d.stage,
                        "commit": d.git_commit or (server_run.commit if server_run else None),
                        "started": d.started,
                        "ended": d.ended,
                        "outcome": d.outcome,
                        "approved_by": d.approved_by,
                        "approved_at": d.approved_at,
                    }
                )
        finally:
            history.close()
    rows.sort(key=lambda r: -float(r["started"] or 0))
    return rows[:limit]
